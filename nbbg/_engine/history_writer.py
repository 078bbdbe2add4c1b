"""Keeps the history current: a record queued for every job of an engine that ends."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .history import History
from .jobs import JobEvent, JobState

if TYPE_CHECKING:
    from .engine import Engine


class HistoryWriter:
    """Subscribes to an engine's events and queues a record for every job that ends."""

    def __init__(self, engine: Engine, history: History) -> None:
        self._engine = engine
        self._history = history
        self._recorded: dict[str, JobState] = {}
        """The final state each remembered job was recorded in (so each is written once,
        again only if it changes: a done job failed later)."""
        self._lock = threading.Lock()
        self._unsubscribe = engine.subscribe(self._on_event)

    def _on_event(self, event: JobEvent) -> None:
        if event.kind != "state" or event.job.state.active:
            return
        latest = event.job  # complete: the worker's CPU time and memory came with its outcome
        with self._lock:
            if self._recorded.get(latest.id) is latest.state:
                return  # catch_up() was first
            self._recorded[latest.id] = latest.state
        self._history.add(latest)

    def catch_up(self) -> None:
        """Queue the ended jobs whose event is still on its way (before reading records).

        ``wait()`` returns as soon as the engine's lock is released, while the
        events of that step are still being handed out: without this, a
        ``history()`` right after ``wait()`` could miss the job.
        """
        jobs = self._engine.jobs()
        with self._lock:
            remembered = {job.id for job in jobs}
            for job_id in [job_id for job_id in self._recorded if job_id not in remembered]:
                del self._recorded[job_id]  # forget what the engine forgot
            missing = [
                job
                for job in jobs
                if not job.state.active and self._recorded.get(job.id) is not job.state
            ]
            self._recorded.update((job.id, job.state) for job in missing)
        for job in missing:
            self._history.add(job)

    def close(self) -> None:
        self._unsubscribe()
        self._history.flush()
        self._history.close()
