"""The bounded LRU of shipped objects, the same on both sides of the pipe.

A worker keeps the objects it received by content digest; the kernel keeps a
mirror of each worker's cache (digests and sizes only) to know what it must
send. Both run this one class with the same sequence of ``use`` calls, so the
mirror evicts exactly what the worker evicts. If they ever disagree, the
worker reports the digests it lacks and the kernel sends them.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

Value = TypeVar("Value")

PERSISTENT_TAG = "nbbg-object"
"""How a shipped callable's pickle refers to a large value: ``(PERSISTENT_TAG, digest)``."""

MAX_OBJECTS = 64
MAX_BYTES = 2 << 30
"""A worker keeps at most this many objects / bytes of them (the current job's always)."""


class ObjectCache(Generic[Value]):
    """Digest -> (size, value), least recently used evicted first."""

    def __init__(self, max_objects: int = MAX_OBJECTS, max_bytes: int = MAX_BYTES) -> None:
        self._entries: OrderedDict[bytes, tuple[int, Value | None]] = OrderedDict()
        self._bytes = 0
        self._max_objects = max_objects
        self._max_bytes = max_bytes

    def __contains__(self, digest: object) -> bool:
        return digest in self._entries

    def get(self, digest: bytes) -> Value | None:
        entry = self._entries.get(digest)
        return None if entry is None else entry[1]

    def use(self, job_objects: Iterable[tuple[bytes, int, Value | None]]) -> None:
        """Record that a job uses these objects (in this order), then evict.

        An entry already present keeps its value when ``value`` is None, so the
        kernel's mirror and a worker that already holds the object agree.
        """
        pinned: set[bytes] = set()
        for digest, size, value in job_objects:
            pinned.add(digest)
            old = self._entries.pop(digest, None)
            if old is not None:
                self._bytes -= old[0]
                if value is None:
                    value = old[1]
            self._entries[digest] = (size, value)
            self._bytes += size
        for digest in list(self._entries):
            if len(self._entries) <= self._max_objects and self._bytes <= self._max_bytes:
                break
            if digest not in pinned:
                self._bytes -= self._entries.pop(digest)[0]

    def discard(self, digest: bytes) -> None:
        entry = self._entries.pop(digest, None)
        if entry is not None:
            self._bytes -= entry[0]

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0


def persistent_load(objects: Callable[[bytes], Any]) -> Callable[[Any], Any]:
    """The worker's side of the shipping pickler: ``(tag, digest)`` -> the object."""

    def load(pid: Any) -> Any:
        tag, digest = pid
        if tag != PERSISTENT_TAG:
            raise pickle.UnpicklingError(f"unknown persistent id {tag!r}")
        return objects(digest)

    return load
