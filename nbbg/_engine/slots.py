"""Slots: one worker each (see ``backend``), killed and replaced on cancel.

Replacing a worker has two halves: :meth:`Slot.kill` (instant, done under the
engine's lock so no message of the old job is taken for the new one) and the
backend's ``start_worker`` (a process start for loky, done by the engine after
it releases its lock, so cancel requests and polls never wait for it), whose
worker the engine then gives the slot with :meth:`Slot.attach`.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass

from cachetools import LRUCache

from . import worker
from .backend import WorkerHandle
from .object_cache import ObjectCache


@dataclass(frozen=True)
class WorkerInfo:
    """One slot's worker as ``workers()`` reports it."""

    slot: int
    pid: int | None
    job_id: str | None
    node: str | None = None  # where it runs (None: this machine)


class Slot:
    """One worker process that runs one job at a time.

    It has no worker between :meth:`kill` and :meth:`attach`: it is then
    neither free nor busy, only waiting for its new worker.
    """

    def __init__(self, index: int) -> None:
        self.index = index
        self.generation = 0
        self.job_id: str | None = None
        self.retiring = False
        self.needs_restart = False
        self.shipped_tokens: LRUCache[int, None] = LRUCache(worker.FUNCTION_CACHE_SIZE)
        self.objects: ObjectCache[None] = ObjectCache()  # mirror of the worker's objects
        self.environ_token = 0  # the kernel environment the worker holds
        self._worker: WorkerHandle | None = None

    def attach(self, started: WorkerHandle) -> None:
        """Give the slot its new worker (under the engine's lock)."""
        self._worker = started

    @property
    def has_worker(self) -> bool:
        return self._worker is not None

    def submit(self, spec: worker.JobSpec) -> Future[worker.WorkerOutcome]:
        """Start ``spec`` (packed for this slot) on the slot's worker."""
        if self._worker is None:
            raise RuntimeError(f"slot {self.index} has no worker yet")
        future = self._worker.submit(spec)
        if not self._worker.keeps_state:
            self.forget_holdings()  # the next job may land on another process
        return future

    @property
    def busy(self) -> bool:
        return self.job_id is not None

    @property
    def free(self) -> bool:
        """Ready to take a job: it has a worker, no job, and is staying."""
        return self._worker is not None and not self.busy and not self.retiring

    def wait_warm(self, timeout: float) -> bool:
        """Block until the worker is warm (or ``timeout`` s pass); True if it is."""
        if self._worker is None:
            return False
        try:
            self._worker.warming.result(timeout)
        except Exception:  # noqa: BLE001 - a worker that failed to start shows up at its first job
            return False
        return True

    @property
    def warm(self) -> bool:
        """Whether the worker has started and imported what jobs need."""
        return self._worker is not None and self._worker.warming.done()

    def worker_pid(self) -> int | None:
        return None if self._worker is None else self._worker.pid()

    def worker_node(self) -> str | None:
        return None if self._worker is None else self._worker.node()

    def forget_holdings(self) -> None:
        """Clear the mirror of what the worker holds: the next job gets everything."""
        self.shipped_tokens.clear()
        self.objects.clear()
        self.environ_token = 0

    def remember_shipped(self, token: int) -> bool:
        """Record that the worker now holds ``token``; True if it already did.

        Mirrors the worker's LRU cache (same size, same order of use), so the
        kernel knows when it must send the function's payload again.
        """
        known = token in self.shipped_tokens
        self.shipped_tokens[token] = None  # most recently used now; the oldest goes
        return known

    def kill(self) -> int | None:
        """Stop the worker at once and forget its job; return its pid. :meth:`attach` follows."""
        old_worker, self._worker = self._worker, None
        old_pid = old_worker.kill() if old_worker is not None else None
        self.generation += 1
        self.job_id = None
        self.needs_restart = False
        self.forget_holdings()
        return old_pid


class SlotPool:
    """The slots of one engine: how many, which is free, which runs what.

    Not thread-safe on its own: the engine calls it under its lock.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.slots: list[Slot] = []

    def grow(self) -> list[Slot]:
        """Add slots up to the target; return them (they need a worker each)."""
        added = []
        while len(self.slots) < self.target:
            slot = Slot(len(self.slots))
            self.slots.append(slot)
            added.append(slot)
        return added

    def resize(self, target: int) -> None:
        """Slots beyond ``target`` retire (busy ones after their job)."""
        self.target = target
        for index, slot in enumerate(self.slots):
            slot.retiring = index >= target
        self.retire_idle()

    def retire_idle(self) -> None:
        kept = []
        for slot in self.slots:
            if slot.retiring and not slot.busy:
                slot.kill()
            else:
                kept.append(slot)
        for index, slot in enumerate(kept):
            slot.index = index
        self.slots = kept

    def wait_until_warm(self, timeout: float) -> None:
        """Return once every worker has started and imported what jobs need.

        So the first click after the app starts runs at warm speed. The workers
        start in parallel (~0.5 s on 2 cores); a slow one is waited for at most
        ``timeout`` s, then jobs simply queue until it is up.
        """
        deadline = time.monotonic() + timeout
        for slot in list(self.slots):
            slot.wait_warm(max(0.0, deadline - time.monotonic()))

    def free_slot(self) -> Slot | None:
        """A free slot, preferring a warm one: a slot just respawned after a
        cancel is still starting its worker while another may sit idle."""
        free = [slot for slot in self.slots if slot.free]
        return next((slot for slot in free if slot.warm), free[0] if free else None)

    def running(self, job_id: str) -> Slot | None:
        return next((slot for slot in self.slots if slot.job_id == job_id), None)

    def workers(self) -> list[WorkerInfo]:
        return [
            WorkerInfo(slot.index, slot.worker_pid(), slot.job_id, slot.worker_node())
            for slot in self.slots
        ]

    def close(self) -> None:
        for slot in self.slots:
            slot.kill()
        self.slots = []


def check_worker_count(max_workers: int) -> None:
    if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
        raise ValueError(f"max_workers must be a whole number of at least 1, not {max_workers!r}")
