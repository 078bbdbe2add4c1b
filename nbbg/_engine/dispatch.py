"""The dispatcher: moves jobs between the queue, the slots and their final states.

Every method runs under the engine's lock, changes the job table and the
slots, and records what it caused in an :class:`Effects`: the events to
publish, the slots that need a new worker, the jobs forgotten. The engine
carries those out after it releases the lock (publishing never runs under
it, and neither does starting a worker process).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from .._errors import BadProgressError, NbbgError, WorkerDiedError
from . import worker
from .channel import Report, ReportKind
from .jobs import Job, JobEvent, JobFailure, JobState
from .packing import RESENDS, forget_missing, pack
from .slots import Slot, SlotPool
from .table import JobTable, QueuedJob
from .tracebacks import localize

MESSAGE_WAIT = 0.05
"""Seconds a finished job's worker callback waits for its last reports."""

MESSAGE_GRACE = 2.0
"""Seconds a finished job waits for its last reports before it ends anyway (then by a timer)."""

UNDELIVERABLE = JobFailure(
    "the job did not run: its worker kept lacking values the kernel had sent it; submit it again"
)

WorkerDone = Callable[[Slot, int, QueuedJob, "Future[Any]"], None]


@dataclass
class Effects:
    """What one step under the lock caused, to be carried out after it."""

    events: list[JobEvent] = field(default_factory=list)
    spawn: list[Slot] = field(default_factory=list)
    forgotten: list[Job] = field(default_factory=list)
    overdue: list[Job] = field(default_factory=list)
    """Jobs whose worker is done but whose last report never came (a broken connection)."""


class Dispatcher:
    def __init__(
        self,
        table: JobTable,
        pool: SlotPool,
        changed: threading.Condition,
        on_worker_done: WorkerDone,
        on_report: Callable[[Report], None] | None = None,
    ) -> None:
        self.table = table
        self.pool = pool
        self.closing = False
        self._changed = changed
        self._on_worker_done = on_worker_done
        self._on_report = on_report

    # ------------------------------------------------------------ starting
    def dispatch(self, fx: Effects) -> None:
        """Start queued jobs on free slots."""
        started = False
        while self.table.queued:
            slot = self.pool.free_slot()
            if slot is None:
                break
            item = self.table.pop_next()
            assert item is not None
            if self._start(slot, item, fx):
                started = True
                fx.events.append(JobEvent("state", self.table.snapshot(item.job)))
        if started:
            fx.events += self.table.queue_events()  # queue positions moved up

    def _start(self, slot: Slot, item: QueuedJob, fx: Effects) -> bool:
        """Start the job on the slot; False if it could not (failed, or back in the queue)."""
        job = item.job
        spec = pack(slot, item.spec, item.cargo, (queued.spec for queued in self.table.queued))
        if isinstance(spec, JobFailure):
            self.end(job, JobState.ERROR, spec, fx)
            return False
        try:
            future = slot.submit(spec)
        except Exception:  # noqa: BLE001 - a broken executor: a new worker, the job goes first
            self._replace_worker(slot, fx)
            self.table.push_front(item)
            return False
        job.state = JobState.RUNNING
        job.started_at = job.started_at or time.time()
        job.worker_pid = slot.worker_pid()
        slot.job_id = job.id
        generation = slot.generation
        future.add_done_callback(lambda done: self._on_worker_done(slot, generation, item, done))
        return True

    def resend(
        self, slot: Slot, item: QueuedJob, outcome: worker.WorkerOutcome, fx: Effects
    ) -> None:
        """The worker lacked what its mirror said it held: send the job again with it."""
        item.cargo.resends += 1
        forget_missing(slot, item.spec, outcome)
        slot.job_id = None
        item.job.state = JobState.QUEUED
        if self._start(slot, item, fx):
            fx.events.append(JobEvent("state", self.table.snapshot(item.job)))

    # ------------------------------------------------------------ ending
    def worker_done(
        self, slot: Slot, generation: int, item: QueuedJob, future: Future[Any], fx: Effects
    ) -> None:
        """The worker's future for ``item`` is done (its done-callback, lock held)."""
        if slot.generation != generation or slot.job_id != item.job.id:
            return  # the job was cancelled and its worker replaced
        job = item.job
        exc = future.exception()
        if exc is not None:
            self.worker_died(job, exc, fx)
        else:
            outcome: worker.WorkerOutcome = future.result()
            if outcome.kind == "missing" and item.cargo.resends < RESENDS and not self.closing:
                self.resend(slot, item, outcome, fx)
                return
            job.worker_outcome = outcome
            job.messages_expected = outcome.messages_sent
            # The job's last reports may still be in the reader thread's hands:
            # give them a moment (the slot stays busy; the lock is released meanwhile).
            self._changed.wait_for(
                lambda: job.messages_received >= outcome.messages_sent, MESSAGE_WAIT
            )
            if slot.generation != generation or slot.job_id != job.id:
                return  # cancelled meanwhile: its worker is already replaced
            self.run_finished(slot, job, fx)
            if job.state.active:
                fx.overdue.append(job)
        self.dispatch(fx)
        self._changed.notify_all()

    def finish_overdue(self, job: Job, fx: Effects) -> None:
        """Finish a job whose worker is done but whose last reports never came.

        Only a broken progress connection does that; the job's result is in the
        store all the same, so the job must not stay "running" for ever.
        """
        if job.messages_expected is not None:
            job.messages_received = max(job.messages_received, job.messages_expected)
        self.maybe_finish(job, fx)
        self._changed.notify_all()

    def worker_died(self, job: Job, exc: BaseException, fx: Effects) -> None:
        if isinstance(exc, NbbgError):
            message = str(exc)  # the backend said what happened (e.g. RayTaskLostError)
        else:
            message = str(WorkerDiedError(job.name, worker.describe_exception(exc)))
        self.end(job, JobState.ERROR, JobFailure(message), fx)

    def run_finished(self, slot: Slot, job: Job, fx: Effects) -> None:
        """The worker is done with the job: free its slot, end the job if all its reports came."""
        slot.job_id = None
        self.maybe_finish(job, fx)
        self.after_job(slot, fx)

    def maybe_finish(self, job: Job, fx: Effects) -> None:
        """Finish a job once its worker is done and all its reports arrived."""
        if job.messages_expected is None or job.messages_received < job.messages_expected:
            return
        if self.pool.running(job.id) is not None:
            return  # the worker-done callback finishes it once it frees the slot
        if not job.state.active:
            return
        outcome: worker.WorkerOutcome = job.worker_outcome
        if outcome.cpu_time is not None:  # the worker's own count: the whole job
            job.cpu_time = outcome.cpu_time
        if outcome.memory is not None:
            job.peak_memory = max(job.peak_memory or 0, outcome.memory)
        if outcome.kind == "ok":
            self.end(job, JobState.DONE, None, fx)
        else:
            failure = outcome.failure or UNDELIVERABLE
            if outcome.failure is not None:  # name the notebook's cells, as IPython would
                failure = replace(failure, traceback=localize(failure.traceback, job.code()))
            self.end(job, JobState.ERROR, failure, fx)

    def end(self, job: Job, state: JobState, failure: JobFailure | None, fx: Effects) -> None:
        """Move an active job to a final state, freeing or replacing its slot."""
        was_queued = job.state is JobState.QUEUED
        job.state, job.failure, job.finished_at = state, failure, time.time()
        if job.cargo is not None:
            # Its shared-memory copies and values; at shutdown, unlinked before the exit.
            job.cargo.release(background=not self.closing)
            job.cargo = None
        if was_queued:
            self.table.unqueue(job)
        else:
            slot = self.pool.running(job.id)
            if slot is not None:
                # Cancelled, failed from outside, or died: the worker is not reusable.
                self._replace_worker(slot, fx)
        fx.events.append(JobEvent("state", self.table.snapshot(job)))
        if was_queued:
            fx.events += self.table.queue_events()

    def after_job(self, slot: Slot, fx: Effects) -> None:
        if slot.retiring:
            self.pool.retire_idle()
        elif slot.needs_restart:
            self._replace_worker(slot, fx)

    def _replace_worker(self, slot: Slot, fx: Effects) -> None:
        slot.kill()
        if slot.retiring:
            self.pool.retire_idle()
        else:
            fx.spawn.append(slot)

    # ------------------------------------------------------------ reports
    def report(self, report: Report, fx: Effects) -> Job | None:
        """Take one report from a job's worker; return the job (None if forgotten)."""
        job = self.table.get(report.job_id)
        if job is None:
            return None
        if report.kind is not ReportKind.WORKER:  # not one of the job's own messages
            job.messages_received += 1
        if job.state.active:
            if report.kind is ReportKind.OUTPUT:
                job.output.add(report.payload)
                fx.events.append(JobEvent("output", self.table.snapshot(job)))
            elif report.kind is ReportKind.WORKER:
                job.worker_pid = report.payload
                fx.events.append(JobEvent("state", self.table.snapshot(job)))
            elif report.kind is ReportKind.BAD_PROGRESS:
                failure = JobFailure(str(BadProgressError(job.name, report.payload)))
                self.end(job, JobState.ERROR, failure, fx)
                self.dispatch(fx)
            else:
                if self._on_report is not None:
                    self._on_report(report)
                if report.kind is ReportKind.PROGRESS:
                    job.progress, job.progress_at = report.payload, time.time()
                    fx.events.append(JobEvent("progress", self.table.snapshot(job)))
        self.maybe_finish(job, fx)
        return job
