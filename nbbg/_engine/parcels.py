"""Objects on their way to a worker, in shared memory.

A parcel is one file in ``/dev/shm`` (memory) holding a value's pickle stream
and its out-of-band buffers, written once at submit (the snapshot a queued job
must see). A worker maps it copy-on-write, so numpy arrays and pandas blocks
are rebuilt over the mapping without a copy, and a job writing to them changes
only its own worker's pages. The kernel unlinks the file once no job needs it;
a worker's open descriptor keeps the pages for as long as it caches the value.

This moves 100 MB at memory speed, where loky's pipe took 0.5-1 s. Where
``/dev/shm`` is missing or full (containers often give it 64 MB), the file goes
to the temporary directory instead: the page cache, nearly as fast.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import pickle
import tempfile
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # workers import this module: keep it light
    from .content import Pickled

_ALIGN = 64  # numpy's preferred alignment for buffers
_IMMUTABLE = (bytes, str, frozenset)
_FULL = (errno.ENOSPC, errno.ENOMEM, errno.EFBIG, errno.EDQUOT)

PARCEL_DIRECTORIES = ("/dev/shm", tempfile.gettempdir())
"""Where parcels are written, first choice first."""


@dataclass(frozen=True)
class ParcelRef:
    """Where a worker finds one value: the file and the pieces' lengths."""

    path: str
    inband: int
    buffers: tuple[int, ...]


def _layout(inband: int, buffers: tuple[int, ...]) -> tuple[list[int], int]:
    offsets, position = [], _aligned(inband)
    for length in buffers:
        offsets.append(position)
        position = _aligned(position + length)
    return offsets, max(position, 1)


def _aligned(position: int) -> int:
    return -(-position // _ALIGN) * _ALIGN


class Parcel:
    """A written segment, shared by the queued jobs that need it (reference counted)."""

    def __init__(self, value: Pickled) -> None:
        lengths = tuple(buffer.nbytes for buffer in value.buffers)
        self.ref = ParcelRef(_write(value, lengths), len(value.inband), lengths)
        self.digest = value.digest
        self._users = 1

    def retain(self) -> Parcel:
        self._users += 1  # under _SHELF_LOCK
        return self

    def release(self, *, background: bool = True) -> None:
        with _SHELF_LOCK:
            self._users -= 1
            if self._users != 0:
                return
            if _SHELF.get(self.digest) is self:
                del _SHELF[self.digest]
        if not background:
            _unlink(self.ref.path)
            return
        # Freeing 100 MB of pages takes ~15-30 ms: not on the job's way to its result.
        threading.Thread(target=_unlink, args=(self.ref.path,), daemon=True).start()


_SHELF: dict[bytes, Parcel] = {}
_SHELF_LOCK = threading.Lock()


def parcel_for(value: Pickled) -> Parcel:
    """A parcel of ``value``: the one already written for this digest, or a new one.

    Queued jobs that read the same edited array share one copy.
    """
    with _SHELF_LOCK:
        parcel = _SHELF.get(value.digest)
        if parcel is not None:
            return parcel.retain()
    parcel = Parcel(value)
    with _SHELF_LOCK:
        _SHELF.setdefault(value.digest, parcel)
    return parcel


def shelved(digest: bytes) -> Parcel | None:
    """The live parcel of a digest, retained for the caller, if there is one."""
    with _SHELF_LOCK:
        parcel = _SHELF.get(digest)
        return parcel.retain() if parcel is not None else None


def _write(value: Pickled, lengths: tuple[int, ...]) -> str:
    """Write a parcel file in the first directory with room; return its path."""
    from loky.backend import resource_tracker  # the kernel's side only

    offsets, total = _layout(len(value.inband), lengths)
    error: OSError | None = None
    for directory in PARCEL_DIRECTORIES:
        path = os.path.join(directory, f"nbbg-parcel-{os.urandom(8).hex()}")
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except OSError as exc:  # no such directory, not writable
            error = exc
            continue
        # If the kernel dies, loky's resource tracker deletes the file.
        resource_tracker.register(path, "file")
        try:
            os.ftruncate(descriptor, total)  # workers map exactly this much
            # pwrite fills the file's pages in the kernel: ~2x faster than copying
            # through a fresh mapping, which takes a page fault per 4 KiB.
            _write_all(descriptor, memoryview(value.inband), 0)
            for offset, buffer in zip(offsets, value.buffers, strict=True):
                _write_all(descriptor, buffer, offset)
        except OSError as exc:
            _unlink(path)
            if exc.errno not in _FULL:
                raise
            error = exc
            continue
        except BaseException:
            _unlink(path)
            raise
        finally:
            os.close(descriptor)
        return path
    assert error is not None
    raise error


def _write_all(descriptor: int, data: memoryview, offset: int) -> None:
    data = data.cast("B") if data.format != "B" else data
    written = 0
    while written < data.nbytes:
        written += os.pwrite(descriptor, data[written:], offset + written)


def _unlink(path: str) -> None:
    from loky.backend import resource_tracker

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    resource_tracker.unregister(path, "file")


class Received:
    """A parcel as a worker keeps it: the open segment, rebuilt afresh for every job.

    Holding the descriptor keeps the pages after the kernel unlinks the name.
    Each ``value()`` maps the segment again, copy-on-write: a job that edits
    the object in place changes only its own pages, never the next job's
    copy (as with a fork). Mapping again costs ~10 us, and the pages that
    job reads fault in 16 at a time.
    """

    def __init__(self, ref: ParcelRef) -> None:
        self.ref = ref
        self._immutable: Any = None
        self._offsets, self._total = _layout(ref.inband, ref.buffers)
        self._descriptor = os.open(ref.path, os.O_RDONLY)
        try:
            self._inband = os.pread(self._descriptor, ref.inband, 0)
        except BaseException:
            os.close(self._descriptor)
            raise

    def _map(self) -> mmap.mmap:
        return mmap.mmap(
            self._descriptor,
            self._total,
            flags=mmap.MAP_PRIVATE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
        )

    def value(self) -> Any:
        if self._immutable is not None:
            return self._immutable
        if not self.ref.buffers:
            return pickle.loads(self._inband)
        view = memoryview(self._map())
        buffers = [
            view[offset : offset + length]
            for offset, length in zip(self._offsets, self.ref.buffers, strict=True)
        ]
        value = pickle.loads(self._inband, buffers=buffers)
        if type(value) in _IMMUTABLE:
            # Rebuilding it copied it (``bytes``): keep it, no job can change it.
            self._immutable = value
        return value

    def __del__(self) -> None:
        descriptor, self._descriptor = getattr(self, "_descriptor", -1), -1
        if descriptor >= 0:
            # Closing the last descriptor of an unlinked 100 MB file frees its pages:
            # ~15 ms, which must not land in the job that dropped the value.
            threading.Thread(target=os.close, args=(descriptor,), daemon=True).start()
