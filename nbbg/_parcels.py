"""Objects on their way to a worker, in shared memory.

A parcel is one POSIX shared-memory segment holding a value's pickle stream
and its out-of-band buffers, written once at submit (the snapshot a queued job
must see). A worker maps it copy-on-write, so numpy arrays and pandas blocks
are rebuilt over the mapping without a copy, and a job writing to them changes
only its own worker's pages. The kernel unlinks the segment once no job needs
it; a worker's mapping outlives the unlink.

This moves 100 MB at memory speed, where loky's pipe took 0.5-1 s.
"""

from __future__ import annotations

import mmap
import os
import pickle
import threading
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

from ._content import Pickled

_ALIGN = 64  # numpy's preferred alignment for buffers


@dataclass(frozen=True)
class ParcelRef:
    """Where a worker finds one value: the segment's name and the pieces' lengths."""

    name: str
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
        offsets, total = _layout(len(value.inband), lengths)
        segment = shared_memory.SharedMemory(create=True, size=total)
        memory = segment.buf
        assert memory is not None
        try:
            memory[: len(value.inband)] = value.inband
            for offset, buffer in zip(offsets, value.buffers, strict=True):
                memory[offset : offset + buffer.nbytes] = buffer
        except BaseException:
            segment.close()
            segment.unlink()
            raise
        del memory
        segment.close()  # the kernel keeps no mapping: the pages are only the worker's to read
        self._segment = segment
        self.ref = ParcelRef(segment.name, len(value.inband), lengths)
        self.size = total
        self._users = 1
        self._lock = threading.Lock()

    def retain(self) -> Parcel:
        with self._lock:
            self._users += 1
        return self

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users != 0:
                return
        try:
            self._segment.unlink()
        except FileNotFoundError:
            pass


def load(ref: ParcelRef) -> Any:
    """Rebuild the value of a parcel in a worker (zero-copy for its buffers)."""
    offsets, total = _layout(ref.inband, ref.buffers)
    descriptor = os.open(f"/dev/shm/{ref.name.lstrip('/')}", os.O_RDONLY)
    try:
        mapping = mmap.mmap(
            descriptor, total, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE
        )
    finally:
        os.close(descriptor)
    view = memoryview(mapping)
    inband = bytes(view[: ref.inband])
    buffers = [
        view[offset : offset + length] for offset, length in zip(offsets, ref.buffers, strict=True)
    ]
    return pickle.loads(inband, buffers=buffers)
