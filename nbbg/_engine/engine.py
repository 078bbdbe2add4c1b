"""The engine: a FIFO queue in front of N slots, a job table, events out.

::

    submit() ──► JobTable.queued ──► Dispatcher ──► free Slot ──► loky worker: serve_jobs
                     ▲                      │                          │     │
    cancel() ────────┘ drop if queued,      │                          │     └─ result ─► store
                       else kill the slot ──┤ (its new worker          │
                                            │  starts off the lock)    └─ Report ─► listener
    JobTable ◄── state changes, reports ────┘
        └──► subscribers (JobEvent), wait(), jobs()

It knows nothing of Dash or widgets. The table, the slots and the dispatcher
are guarded by one lock; what a step under the lock caused (events, workers
to start, jobs forgotten) is carried out after the lock is released.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import cloudpickle
import diskcache

from .._errors import (
    ShutdownError,
    UnpicklableArgumentsError,
)
from . import worker
from .backend import Backend, BackendFactory, WorkerHandle
from .channel import Report
from .chores import Chores
from .collect import Collector
from .dispatch import MESSAGE_GRACE, Dispatcher, Effects
from .events import EngineHooks, EventHub, Subscriber
from .jobs import Job, JobEvent, JobFailure, JobSnapshot, JobState
from .kernel_state import KernelStateTracker
from .loky_backend import LokyBackend
from .packing import copy_at_submit, lacked_by
from .process_owner import ProcessOwner
from .shipping import Cargo, FunctionRegistry
from .slots import Slot, SlotPool, WorkerInfo, check_worker_count
from .store import delete_results
from .table import HISTORY, JobTable, QueuedJob

PREWARM_TIMEOUT = 30.0
"""Seconds a prewarming manager waits at most for its workers to be ready."""


class Engine:
    """Runs callables on its backend's workers (loky by default), ``max_workers`` at a time."""

    def __init__(
        self,
        store: diskcache.Cache,
        max_workers: int | None = None,
        *,
        prewarm: bool = True,
        warm_modules: tuple[str, ...] = (),
        history: int = HISTORY,
        hooks: EngineHooks | None = None,
        backend: BackendFactory | None = None,
    ) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        check_worker_count(max_workers)
        self.store = store
        self.owner = ProcessOwner("nbbg manager")
        self._hooks = hooks
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._events: EventHub[JobEvent] = EventHub()
        self._functions = FunctionRegistry()
        self._kernel_state = KernelStateTracker()
        self._closed = False
        self._chores = Chores("nbbg-spawn")  # replacement workers start there
        factory: BackendFactory = LokyBackend if backend is None else backend
        self.backend: Backend = factory(self._on_report, warm_modules, store)
        self._table = JobTable(history)
        self._collector = Collector(self._changed, self._table, store, self.fail)
        self._pool = SlotPool(max_workers)
        self._dispatcher = Dispatcher(
            self._table,
            self._pool,
            self._changed,
            self._on_worker_done,
            hooks.reported if hooks is not None else None,
        )
        if prewarm:
            for slot in self._pool.grow():
                slot.attach(self._start_worker())
            self._pool.wait_until_warm(PREWARM_TIMEOUT)
        atexit.register(_shutdown_if_alive, weakref.ref(self))

    # ---------------------------------------------------------------- workers
    def _start_worker(self) -> WorkerHandle:
        return self.backend.start_worker()

    @property
    def max_workers(self) -> int:
        return self._pool.target

    def workers(self) -> list[WorkerInfo]:
        with self._lock:
            return self._pool.workers()

    def resize(self, max_workers: int) -> None:
        """Change the number of workers; busy workers beyond it finish their job first."""
        check_worker_count(max_workers)
        with self._step() as fx:
            self._ensure_open()
            self._pool.resize(max_workers)
            fx.spawn += self._pool.grow()
            self._dispatcher.dispatch(fx)

    def restart(self) -> None:
        """Fresh workers (e.g. after editing an imported module); running jobs finish first."""
        with self._step() as fx:
            self._ensure_open()
            self._functions.clear()
            for slot in self._pool.slots:
                if slot.busy:
                    slot.needs_restart = True
                elif slot.has_worker:
                    slot.kill()
                    fx.spawn.append(slot)

    # ---------------------------------------------------------------- jobs
    def submit(
        self,
        fn: Callable[..., Any],
        call: Any,
        *,
        name: str | None = None,
        label: str = "",
        origin: Any = None,
        runner: worker.Runner = worker.call_plain,
        result_key: str | None = None,
        expire: float | None = None,
    ) -> str:
        """Queue ``runner(fn, reporter, call)`` in a worker; return the job id.

        ``result_key`` names a shared store entry (a ``cache_by`` key, kept
        ``expire`` s); without it the result gets a key of the job's own, kept
        ``RESULT_TTL`` s. ``origin`` is kept in the job's snapshots. Raises
        ``UnpicklableCallbackError`` / ``UnpicklableArgumentsError`` at once
        when ``fn`` or ``call`` cannot be sent to a worker.
        """
        name = name or str(getattr(fn, "__name__", type(fn).__name__))
        self._ensure_open()
        shipped, values = self._functions.ship(fn, name)
        kernel = self._kernel_state.snapshot()
        cargo = Cargo(shipped, kernel, self._kernel_state.environ(kernel.environ_token), values)
        try:
            args_payload = cloudpickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise UnpicklableArgumentsError(name, exc) from exc
        item = QueuedJob.new(
            name,
            label,
            origin,
            runner,
            args_payload,
            cargo,
            self.store.directory,
            result_key,
            expire,
            self.backend.result_inline_limit,
        )
        self._copy_values_at_submit(cargo)
        item.job.remember_code(fn)
        with self._step() as fx:
            self._ensure_open()
            fx.spawn += self._pool.grow()  # the first job of a manager that did not prewarm
            fx.events.append(self._table.add(item.job, item))
            self._dispatcher.dispatch(fx)
            fx.forgotten += self._table.sweep()
        return item.job.id

    def _copy_values_at_submit(self, cargo: Cargo) -> None:
        """Copy the large values the job's worker may lack: see ``packing.copy_at_submit``."""
        with self._lock:
            # A job that starts at once goes to the free slot the dispatcher picks;
            # one that queues may go to any.
            free = self._pool.free_slot() if not self._table.queued else None
            slots = [free] if free is not None else list(self._pool.slots)
            missing = [ref for ref in cargo.function.objects if lacked_by(slots, ref.digest)]
        copy_at_submit(cargo, missing)

    def add_finished(self, name: str, label: str, result_key: str, origin: Any = None) -> str:
        """Record a job answered from the cache without running (a cache hit)."""
        return self._add_ended(Job.ended(name, label, result_key, JobState.DONE, None, origin))

    def add_failed(self, name: str, label: str, failure: JobFailure, origin: Any = None) -> str:
        """Record a job that failed before it could be queued (bad input)."""
        return self._add_ended(Job.ended(name, label, "", JobState.ERROR, failure, origin))

    def _add_ended(self, job: Job) -> str:
        self.owner.check()
        with self._step() as fx:
            fx.events.append(self._table.add(job))
            fx.forgotten += self._table.sweep()
            self._changed.notify_all()
        return job.id

    def cancel(self, job_id: str) -> bool:
        """Stop a queued or running job; False (and no effect) for any other id."""
        self.owner.check()
        with self._step() as fx:
            job = self._table.get(job_id)
            if job is None or not job.state.active:
                return False
            self._dispatcher.end(job, JobState.CANCELLED, None, fx)
            self._dispatcher.dispatch(fx)
            self._changed.notify_all()
        return True

    def cancel_all(self) -> int:
        with self._lock:
            active = [job.id for job in self._table.active()]
        return sum(self.cancel(job_id) for job_id in active)

    def fail(self, job_id: str, failure: JobFailure) -> None:
        """End an active job with ``failure``; mark a done job as failed."""
        self.owner.check()
        with self._step() as fx:
            job = self._table.get(job_id)
            if job is None:
                return
            if job.state.active:
                self._dispatcher.end(job, JobState.ERROR, failure, fx)
                self._dispatcher.dispatch(fx)
            elif job.state is JobState.DONE:
                job.state, job.failure = JobState.ERROR, failure
                fx.events.append(JobEvent("state", self._table.snapshot(job)))
            self._changed.notify_all()

    def fail_running(self, job_id: str, worker_pid: int, failure: JobFailure) -> bool:
        """End the job with ``failure`` if it still runs on ``worker_pid`` (replacing
        that worker, as a cancel does); False if it moved on meanwhile."""
        self.owner.check()
        with self._step() as fx:
            job = self._table.get(job_id)
            if job is None or job.state is not JobState.RUNNING or job.worker_pid != worker_pid:
                return False
            self._dispatcher.end(job, JobState.ERROR, failure, fx)
            self._dispatcher.dispatch(fx)
            self._changed.notify_all()
        return True

    def record_usage(self, job_id: str, peak_memory: int, cpu_time: float) -> None:
        """Note what a sample of the job's worker found (the memory guard's sampler).

        Ignored once the job has ended: its worker's own count came with its outcome.
        """
        with self._lock:
            job = self._table.get(job_id)
            if job is not None and job.state.active:
                job.peak_memory, job.cpu_time = peak_memory, cpu_time

    def get(self, job_id: str) -> JobSnapshot | None:
        with self._lock:
            job = self._table.get(job_id)
            return None if job is None else self._table.snapshot(job)

    def state(self, job_id: str) -> JobState | None:
        """The job's state alone (no snapshot: a poll asks this first)."""
        with self._lock:
            job = self._table.get(job_id)
            return None if job is None else job.state

    def jobs(self) -> list[JobSnapshot]:
        """All remembered jobs, oldest first."""
        with self._lock:
            return self._table.snapshots()

    def result(self, job_id: str) -> Any:
        """The stored result of a done job (now collected), or ``MISSING``: see ``Collector``."""
        return self._collector.result(job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> Any:
        """Block until the job ends; return its result or raise why it did not."""
        self.owner.check()  # in a fork, nothing would ever end the job
        return self._collector.wait(job_id, timeout)

    def awaits_collection(self, job_id: str) -> bool:
        """Active, or ended done or failed with its outcome not collected yet."""
        with self._lock:
            job = self._table.get(job_id)
            return job is not None and job.awaits_collection

    def mark_collected(self, job_id: str) -> None:
        """Record that the job's result or error has been handed to its reader."""
        self._collector.mark(job_id)

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber(event)`` on every state change, progress report and output chunk.

        It runs on an engine thread: keep it short and never print from it.
        Returns a function that unsubscribes.
        """
        return self._events.subscribe(subscriber)

    def shutdown(self) -> None:
        """Cancel every job and stop every worker. Safe to call more than once.

        A no-op in a forked child (its exit handlers run this too): the
        workers belong to the process that created the engine.
        """
        if not self.owner.is_current:
            return
        fx = Effects()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._dispatcher.closing = True
            for job in list(self._table.active()):
                self._dispatcher.end(job, JobState.CANCELLED, None, fx)
            self._pool.close()
            fx.spawn.clear()
            self._changed.notify_all()
        self.backend.close()
        self._carry_out(fx)
        self._chores.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # ---------------------------------------------------------------- internals
    @contextlib.contextmanager
    def _step(self) -> Iterator[Effects]:
        """Hold the lock for one step; carry out what it caused once released."""
        fx = Effects()
        with self._lock:
            yield fx
        self._carry_out(fx)

    def _ensure_open(self) -> None:
        self.owner.check()
        if self._closed:
            raise ShutdownError()

    def _on_worker_done(
        self, slot: Slot, generation: int, item: QueuedJob, future: Future[Any]
    ) -> None:
        with self._step() as fx:
            self._dispatcher.worker_done(slot, generation, item, future, fx)

    def _finish_overdue(self, job: Job) -> None:
        with self._step() as fx:
            self._dispatcher.finish_overdue(job, fx)

    def _on_report(self, report: Report) -> None:
        with self._step() as fx:
            job = self._dispatcher.report(report, fx)
            if job is not None and job.messages_expected is not None:
                self._changed.notify_all()  # the worker-done callback may be waiting

    def _carry_out(self, fx: Effects) -> None:
        """Do what a step under the lock caused, with the lock released."""
        for job in fx.overdue:
            timer = threading.Timer(MESSAGE_GRACE, self._finish_overdue, (job,))
            timer.daemon = True
            timer.start()
        if fx.forgotten:
            self._forget(fx.forgotten)
        if fx.spawn:
            self._chores.run_soon(self._respawn, list(fx.spawn))
        self._events.publish(fx.events)

    def _respawn(self, slots: list[Slot]) -> None:
        """Give each slot a new worker, then start queued jobs on them."""
        for slot in slots:
            started = self._start_worker()
            with self._lock:
                if self._closed or slot.has_worker or slot not in self._pool.slots:
                    started.kill()
                    continue
                slot.attach(started)
        with self._step() as fx:
            if not self._closed:
                self._dispatcher.dispatch(fx)

    def _forget(self, forgotten: list[Job]) -> None:
        owned = [job.result_key for job in forgotten if job.owns_result]
        if owned:
            # All of a sweep's results in one transaction, on the chores thread: not
            # a SQLite transaction per job on the thread that submitted (a Dash request).
            self._chores.run_soon(delete_results, self.store, owned)
        if self._hooks is not None:
            self._hooks.forgotten([job.id for job in forgotten])


def _shutdown_if_alive(engine_ref: weakref.ref[Engine]) -> None:
    engine = engine_ref()
    if engine is not None:
        engine.shutdown()
