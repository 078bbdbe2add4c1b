"""The job table: every job the engine remembers, the FIFO queue, and how long jobs are kept.

Not thread-safe on its own: the engine calls it under its lock.

Retention: finished jobs beyond the newest ``history`` are forgotten (and
their own results deleted), but only once their outcome has been collected
(by ``wait``/``result``, or by a Dash poll) or cannot be (cancelled). A job
whose result or error nobody has collected yet is kept until it is, or until
its result has expired from the store (``RESULT_TTL``): a parameter sweep of
5000 jobs waited in order finds all 5000.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .jobs import Job, JobEvent, JobSnapshot, JobState, new_job_id
from .shipping import Cargo
from .worker import JobSpec, Runner

HISTORY = 1000
"""Collected finished jobs remembered (``jobs()``, the panel); uncollected ones are all kept."""

RESULT_TTL = 24 * 3600.0
"""Seconds a job's own result is kept in the store (cache_by entries use ``expire``)."""


@dataclass
class QueuedJob:
    """A job and what its worker will need, from submit until it has run."""

    job: Job
    spec: JobSpec
    cargo: Cargo
    """What the job ships (its callable, values and kernel state), let go when it ends."""

    @classmethod
    def new(
        cls,
        name: str,
        label: str,
        origin: Any,
        runner: Runner,
        args_payload: bytes,
        cargo: Cargo,
        store_directory: str,
        result_key: str | None,
        expire: float | None,
        result_inline_limit: int = 0,
    ) -> QueuedJob:
        """A new job; its result goes to ``result_key`` (a shared ``cache_by`` entry kept
        ``expire`` s) or, without one, to a key of its own kept ``RESULT_TTL`` s."""
        job_id = new_job_id()
        own_key = result_key is None
        job = Job(
            job_id,
            name,
            label,
            f"nbbg-result-{job_id}" if own_key else str(result_key),
            owns_result=own_key,
            origin=origin,
        )
        spec = JobSpec(
            job_id=job_id,
            name=name,
            token=cargo.function.token,
            payload=None,
            runner=runner,
            args_payload=args_payload,
            store_directory=store_directory,
            result_key=job.result_key,
            expire=RESULT_TTL if own_key else expire,
            kernel=cargo.kernel,
            objects=tuple((ref.digest, ref.size) for ref in cargo.function.objects),
            result_inline_limit=result_inline_limit,
        )
        job.cargo = cargo
        return cls(job, spec, cargo)


class JobTable:
    def __init__(self, history: int) -> None:
        self.history = history
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.queued: deque[QueuedJob] = deque()
        self._size_after_sweep = 0

    def get(self, job_id: Any) -> Job | None:
        return self.jobs.get(job_id) if isinstance(job_id, str) else None

    def add(self, job: Job, queued: QueuedJob | None = None) -> JobEvent:
        self.jobs[job.id] = job
        if queued is not None:
            self.queued.append(queued)
        return JobEvent("state", self.snapshot(job))

    def active(self) -> Iterator[Job]:
        return (job for job in self.jobs.values() if job.state.active)

    # ------------------------------------------------------------ queue
    def pop_next(self) -> QueuedJob | None:
        return self.queued.popleft() if self.queued else None

    def push_front(self, item: QueuedJob) -> None:
        self.queued.appendleft(item)

    def unqueue(self, job: Job) -> None:
        self.queued = deque(item for item in self.queued if item.job is not job)

    def queue_events(self) -> list[JobEvent]:
        """A state event for every queued job (after their positions moved)."""
        return [
            JobEvent("state", item.job.snapshot(position))
            for position, item in enumerate(self.queued, 1)
        ]

    # ------------------------------------------------------------ snapshots
    def snapshot(self, job: Job) -> JobSnapshot:
        position = None
        if job.state is JobState.QUEUED:
            position = next((k for k, item in enumerate(self.queued, 1) if item.job is job), None)
        return job.snapshot(position)

    def snapshots(self) -> list[JobSnapshot]:
        """Every remembered job, oldest first."""
        positions = {item.job.id: k for k, item in enumerate(self.queued, 1)}
        return [job.snapshot(positions.get(job.id)) for job in self.jobs.values()]

    # ------------------------------------------------------------ retention
    def sweep(self, now: float | None = None) -> list[Job]:
        """Forget what retention allows; return the forgotten jobs.

        Runs in full only after the table grew by a quarter of ``history``
        since the last sweep, so submitting stays O(1) amortised even with
        thousands of uncollected jobs waiting.
        """
        if len(self.jobs) < max(self.history, self._size_after_sweep) + self.history // 4:
            return []
        now = time.time() if now is None else now
        ended = [job for job in self.jobs.values() if not job.state.active]
        expired = [job for job in ended if job.awaits_collection and _expired(job, now)]
        settled = [job for job in ended if not job.awaits_collection]
        forgotten = expired + settled[: max(0, len(settled) - self.history)]
        for job in forgotten:
            del self.jobs[job.id]
        self._size_after_sweep = len(self.jobs)
        return forgotten


def _expired(job: Job, now: float) -> bool:
    return job.finished_at is not None and now - job.finished_at > RESULT_TTL
