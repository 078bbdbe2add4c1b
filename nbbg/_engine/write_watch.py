"""Tell whether a large memory range was written since it was last checked.

Hashing an unchanged 100 MB array at every submit costs ~3.5 ms (xxh3 runs at
memory speed), more than the 2 ms a call may cost. Linux can answer "was this
range written?" in ~10 us instead: register the range with a userfaultfd in
*asynchronous write-protect* mode (Linux 6.7+), and ask ``PAGEMAP_SCAN`` for the
pages written since the last scan. With ``PM_SCAN_WP_MATCHING`` the scan
write-protects the pages it reports in the same step, so no write can fall
between "read the written bits" and "clear them" (soft-dirty bits, the older
interface, need a process-wide clear and so have that race; they are also not
built into every kernel, e.g. not here).

A write to a protected page costs one minor fault (~1 us per 4 KiB page, the
kernel resolves it without waking anyone), once per page after each scan.

Everything here degrades to "unknown": when the kernel lacks the features, the
caller hashes the whole buffer, which is always correct.
"""

from __future__ import annotations

import ctypes
import os
import threading

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

_SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282}
_UFFD_API = 0xAA
_UFFD_USER_MODE_ONLY = 1
_UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
_UFFD_FEATURE_WP_ASYNC = 1 << 15
_UFFDIO_REGISTER_MODE_WP = 1 << 1
_PM_SCAN_WP_MATCHING = 1 << 0
_PM_SCAN_CHECK_WPASYNC = 1 << 1
_PAGE_IS_WRITTEN = 1 << 1


class _UffdioApi(ctypes.Structure):
    _fields_ = [
        ("api", ctypes.c_uint64),
        ("features", ctypes.c_uint64),
        ("ioctls", ctypes.c_uint64),
    ]


class _UffdioRange(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _UffdioRegister(ctypes.Structure):
    _fields_ = [("range", _UffdioRange), ("mode", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class _PmScanArg(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "size flags start end walk_end vec vec_len max_pages category_inverted "
            "category_mask category_anyof_mask return_mask"
        ).split()
    ]


class _PageRegion(ctypes.Structure):
    _fields_ = [
        ("start", ctypes.c_uint64),
        ("end", ctypes.c_uint64),
        ("categories", ctypes.c_uint64),
    ]


def _iowr(kind: int, number: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (kind << 8) | number


def _ior(kind: int, number: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (kind << 8) | number


_UFFDIO_API = _iowr(_UFFD_API, 0x3F, ctypes.sizeof(_UffdioApi))
_UFFDIO_REGISTER = _iowr(_UFFD_API, 0x00, ctypes.sizeof(_UffdioRegister))
_UFFDIO_UNREGISTER = _ior(_UFFD_API, 0x01, ctypes.sizeof(_UffdioRange))
_PAGEMAP_SCAN = _iowr(ord("f"), 16, ctypes.sizeof(_PmScanArg))


class WriteWatch:
    """Page-aligned ranges of this process, each answering "written since last asked?"."""

    def __init__(self) -> None:
        # Re-entrant: numpy may free a watched array (and so call ``unwatch``)
        # from a garbage collection that runs while this thread holds the lock.
        self._lock = threading.RLock()
        self._uffd = -1
        self._pagemap = -1
        self._regions = (_PageRegion * 16)()
        self._libc: ctypes.CDLL | None = None
        self._pid = -1

    def _open(self) -> bool:
        """Open the userfaultfd and pagemap once per process; False when unsupported."""
        if self._pid == os.getpid():
            return self._uffd >= 0
        self._pid = os.getpid()  # a forked child must not use its parent's descriptors
        self._uffd = self._pagemap = -1
        number = _SYS_USERFAULTFD.get(os.uname().machine)
        if number is None:
            return False
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
            uffd = int(libc.syscall(number, os.O_CLOEXEC | os.O_NONBLOCK | _UFFD_USER_MODE_ONLY))
            if uffd < 0:
                return False
            api = _UffdioApi(_UFFD_API, _UFFD_FEATURE_WP_ASYNC | _UFFD_FEATURE_WP_UNPOPULATED, 0)
            if libc.ioctl(uffd, _UFFDIO_API, ctypes.addressof(api)) != 0:
                os.close(uffd)
                return False
            self._pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except (OSError, AttributeError):
            return False
        self._libc, self._uffd = libc, uffd
        return True

    def watch(self, start: int, end: int) -> bool:
        """Start watching ``[start, end)`` (page-aligned); True if it is watched now.

        The range is write-protected before this returns: read its content
        *after* calling this, and any later write shows up in ``written``.
        """
        with self._lock:
            if not self._open():
                return False
            assert self._libc is not None
            register = _UffdioRegister(
                _UffdioRange(start, end - start), _UFFDIO_REGISTER_MODE_WP, 0
            )
            if self._libc.ioctl(self._uffd, _UFFDIO_REGISTER, ctypes.addressof(register)) != 0:
                return False
            if self._scan(start, end) is None:  # protects every page of the range
                self._unregister(start, end)
                return False
            return True

    def written(self, start: int, end: int) -> bool | None:
        """Whether ``[start, end)`` was written since the last call (None: unknown).

        The pages found written are protected again by the same scan, so the
        caller must read the range's content after this returns.
        """
        with self._lock:
            if self._pid != os.getpid():
                return None
            return self._scan(start, end)

    def unwatch(self, start: int, end: int) -> None:
        with self._lock:
            if self._pid == os.getpid() and self._uffd >= 0:
                self._unregister(start, end)

    def _unregister(self, start: int, end: int) -> None:
        assert self._libc is not None
        span = _UffdioRange(start, end - start)
        self._libc.ioctl(self._uffd, _UFFDIO_UNREGISTER, ctypes.addressof(span))

    def _scan(self, start: int, end: int) -> bool | None:
        assert self._libc is not None
        found = False
        position = start
        while position < end:  # a scan stops early when its region vector is full
            arg = _PmScanArg(
                ctypes.sizeof(_PmScanArg),
                _PM_SCAN_WP_MATCHING | _PM_SCAN_CHECK_WPASYNC,
                position,
                end,
                0,
                ctypes.addressof(self._regions),
                len(self._regions),
                0,
                0,
                _PAGE_IS_WRITTEN,
                0,
                _PAGE_IS_WRITTEN,
            )
            count = self._libc.ioctl(self._pagemap, _PAGEMAP_SCAN, ctypes.addressof(arg))
            if count < 0 or arg.walk_end <= position:
                return None  # not registered any more, or not supported: unknown
            found = found or count > 0
            position = arg.walk_end
        return found


WRITE_WATCH = WriteWatch()
"""The process's one watch: a userfaultfd is a per-process resource."""
