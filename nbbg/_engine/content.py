"""Content digests of the values a callback reads, cheap when nothing changed.

A value is pickled with protocol 5 and a ``buffer_callback``, so numpy arrays
and pandas blocks hand over their memory without a copy. The digest is xxh3
(128 bit) of the small in-band stream plus the digest of each buffer. The
in-band stream and the buffer views are kept for the rest of the submit, so a
value that must be shipped is not pickled twice.

Large buffers (>= ``WATCH_MIN_BYTES``) of numpy-owned memory are not hashed
again while unchanged: their pages are watched (``_write_watch``), and a cached
digest is reused only while no page of the array that owns the memory was
written since the digest was taken. Any doubt (memory the watch cannot cover,
an array that moved, a scan that fails) means a full hash.
"""

from __future__ import annotations

import ctypes
import io
import pickle
import sys
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import xxhash
from cachetools import LRUCache

from .write_watch import PAGE_SIZE, WRITE_WATCH, WriteWatch

WATCH_MIN_BYTES = 1 << 20
"""Buffers smaller than this are hashed every time (1 MiB takes ~35 us)."""

MAX_IMMUTABLE = 2
"""Large ``bytes`` objects whose digests are kept (each is kept alive until evicted)."""

MAX_WATCHED = 256
"""Arrays watched at most at once (each splits a memory mapping of the kernel)."""

_ATOMS = (int, float, complex, bool, str, bytes, type(None))
_CONTAINERS = (list, tuple, dict, set, frozenset)
_PLAIN_LIMIT = 256


@dataclass
class Pickled:
    """One value as a worker receives it: an in-band stream plus raw buffers."""

    digest: bytes
    inband: bytes
    buffers: list[memoryview] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.inband) + sum(buffer.nbytes for buffer in self.buffers)


def _is_plain(value: Any, budget: list[int]) -> bool:
    """Whether ``value`` is only builtin containers of atoms (the C pickler's case).

    Anything else may hold a class or function defined in the notebook, which
    only cloudpickle sends by value (so only its stream changes when it is
    redefined).
    """
    budget[0] -= 1
    if budget[0] < 0:
        return False
    kind = type(value)
    if kind in _ATOMS:
        return True
    if kind is dict:
        return all(_is_plain(k, budget) and _is_plain(v, budget) for k, v in value.items())
    if kind in _CONTAINERS:
        return all(_is_plain(item, budget) for item in value)
    return False


def _rebuild_bytes(kind: type, buffer: Any) -> Any:
    return kind(buffer)


class _LargeBytes:
    """Pickles a large ``bytes``/``bytearray`` with its memory out of band."""

    def __init__(self, value: bytes | bytearray) -> None:
        self.value = value

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (_rebuild_bytes, (type(self.value), pickle.PickleBuffer(self.value)))


def dumps(value: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``value`` for a worker: in-band bytes and out-of-band buffers."""
    buffers: list[pickle.PickleBuffer] = []
    if type(value) in (bytes, bytearray) and len(value) >= WATCH_MIN_BYTES:
        return pickle.dumps(_LargeBytes(value), protocol=5, buffer_callback=buffers.append), buffers
    if _is_plain(value, [_PLAIN_LIMIT]):
        return pickle.dumps(value, protocol=5), buffers
    stream = io.BytesIO()
    cloudpickle.Pickler(stream, protocol=5, buffer_callback=buffers.append).dump(value)
    return stream.getvalue(), buffers


@dataclass
class _Watched:
    """One numpy array whose memory pages are watched for writes."""

    array: weakref.ref[Any]
    address: int
    nbytes: int
    start: int  # first whole page
    end: int  # end of the last whole page
    head: bytes  # the bytes before ``start`` and after ``end``: not watched, compared
    tail: bytes
    version: int = 0


class BufferDigests:
    """Digest of a buffer, from a cache while the memory behind it is unchanged."""

    def __init__(self, watch: WriteWatch = WRITE_WATCH) -> None:
        self._watch = watch
        self._lock = threading.RLock()  # see WriteWatch: frees may re-enter
        self._watched: dict[int, _Watched] = {}
        # (id of owning array, offset, length) -> (version of the owner, digest)
        self._digests: dict[tuple[int, int, int], tuple[int, bytes]] = {}
        # ``bytes`` cannot change: its digest is kept by identity (and the object
        # with it, so that the identity stays its own; bytes take no weak reference).
        self._immutable: LRUCache[int, tuple[bytes, bytes]] = LRUCache(MAX_IMMUTABLE)

    def digest(self, buffer: memoryview) -> bytes:
        if buffer.nbytes >= WATCH_MIN_BYTES:
            if type(buffer.obj) is bytes:
                return self._immutable_digest(buffer.obj)
            cached = self._cached(buffer)
            if cached is not None:
                return cached
        return xxhash.xxh3_128_digest(buffer)

    def _immutable_digest(self, value: bytes) -> bytes:
        with self._lock:
            entry = self._immutable.get(id(value))
            if entry is not None and entry[0] is value:
                return entry[1]
        digest: bytes = xxhash.xxh3_128_digest(value)
        with self._lock:
            self._immutable[id(value)] = (value, digest)
        return digest

    def _cached(self, buffer: memoryview) -> bytes | None:
        owner = _owning_array(buffer.obj)
        if owner is None:
            return None
        address = _address(buffer)
        owner_address = owner.__array_interface__["data"][0]
        offset = address - owner_address
        if offset < 0 or offset + buffer.nbytes > owner.nbytes:
            return None
        with self._lock:
            watched = self._watched.get(id(owner))
            if watched is None or watched.array() is not owner:
                watched = self._start_watching(owner, owner_address)
                if watched is None:
                    return None
            elif not self._unchanged(watched, owner, owner_address):
                watched.version += 1
            key = (id(owner), offset, buffer.nbytes)
            entry = self._digests.get(key)
            if entry is not None and entry[0] == watched.version:
                return entry[1]
            # Hash after the scan above re-protected the pages: a write from now
            # on shows up at the next check.
            digest = xxhash.xxh3_128_digest(buffer)
            self._digests[key] = (watched.version, digest)
            return digest

    def _unchanged(self, watched: _Watched, owner: Any, owner_address: int) -> bool:
        if owner_address != watched.address or owner.nbytes != watched.nbytes:
            return False  # resized in place: its memory moved
        written = self._watch.written(watched.start, watched.end)
        head, tail = _edges(owner_address, owner.nbytes, watched.start, watched.end)
        unchanged = written is False and head == watched.head and tail == watched.tail
        watched.head, watched.tail = head, tail
        return unchanged

    def _start_watching(self, owner: Any, owner_address: int) -> _Watched | None:
        start = -(-owner_address // PAGE_SIZE) * PAGE_SIZE
        end = (owner_address + owner.nbytes) // PAGE_SIZE * PAGE_SIZE
        if len(self._watched) >= MAX_WATCHED:
            self._sweep()
        if end - start < PAGE_SIZE or len(self._watched) >= MAX_WATCHED:
            return None
        if not self._watch.watch(start, end):
            return None
        key = id(owner)
        stale = self._watched.pop(key, None)
        if stale is not None:
            self._forget(key)
        head, tail = _edges(owner_address, owner.nbytes, start, end)
        reference = weakref.ref(owner, lambda _ref: self._on_owner_gone(key, start, end))
        watched = _Watched(reference, owner_address, owner.nbytes, start, end, head, tail)
        self._watched[key] = watched
        return watched

    def _on_owner_gone(self, key: int, start: int, end: int) -> None:
        # numpy clears weak references before it frees the memory: unwatch it
        # while it is still mapped, so the pages behave normally again.
        try:
            self._watch.unwatch(start, end)
        except Exception:  # noqa: BLE001 - at interpreter exit the modules are torn down
            return
        # Never wait for the lock here: this may run from a garbage collection
        # inside another thread's WriteWatch call. A dead entry left behind is
        # recognised (its weak reference is dead) and swept later.
        if self._lock.acquire(blocking=False):
            try:
                self._sweep(key)
            finally:
                self._lock.release()

    def _sweep(self, key: int | None = None) -> None:
        keys = [key] if key is not None else list(self._watched)
        for dead in keys:
            watched = self._watched.get(dead)
            if watched is not None and watched.array() is None:
                del self._watched[dead]
                self._forget(dead)

    def _forget(self, key: int) -> None:
        for digest_key in [k for k in self._digests if k[0] == key]:
            del self._digests[digest_key]


def _owning_array(exporter: Any) -> Any | None:
    """The numpy array that allocated ``exporter``'s memory, if numpy did."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return None
    array = exporter
    while isinstance(array, numpy.ndarray) and not array.flags.owndata:
        array = array.base
    if isinstance(array, numpy.ndarray) and type(array) is numpy.ndarray:
        return array  # a subclass (np.memmap) may map a file others write
    return None


def _address(buffer: memoryview) -> int:
    numpy = sys.modules["numpy"]
    return int(numpy.frombuffer(buffer, dtype=numpy.uint8).__array_interface__["data"][0])


def _edges(address: int, nbytes: int, start: int, end: int) -> tuple[bytes, bytes]:
    """The bytes of the array outside its whole pages (the watch covers whole pages only)."""
    head = ctypes.string_at(address, start - address) if start > address else b""
    tail = ctypes.string_at(end, address + nbytes - end) if address + nbytes > end else b""
    return head, tail


BUFFER_DIGESTS = BufferDigests()


def pickled(value: Any) -> Pickled:
    """Pickle ``value`` and digest its content (raises what pickling raises)."""
    inband, buffers = dumps(value)
    views = [buffer.raw() for buffer in buffers]
    hasher = xxhash.xxh3_128(inband)
    for view in views:
        hasher.update(BUFFER_DIGESTS.digest(view))
        hasher.update(view.nbytes.to_bytes(8, "little"))
    return Pickled(hasher.digest(), inband, views)
