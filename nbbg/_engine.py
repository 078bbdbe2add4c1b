"""The engine: a FIFO queue in front of N slots, a job table, events out.

::

    submit() ──► queued_jobs (FIFO) ──► free Slot ──► loky worker ──► run_job
                     ▲                                   │     │
    cancel() ────────┘ drop if queued,                   │     └─ result ─► store (diskcache)
                       else kill + respawn the slot      │
                                                         └─ progress ─► ProgressListener
    job table ◄── progress / completion ──┘
        └──► subscribers (JobEvent), wait(), jobs()

It knows nothing of Dash or widgets. All state is guarded by one lock; events
are sent to subscribers after the lock is released.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import threading
import time
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

import cloudpickle
import diskcache

from . import _worker
from ._channel import Message, ProgressListener
from ._errors import (
    BadProgressError,
    JobCancelledError,
    JobFailedError,
    NbbgError,
    ObjectChangedError,
    ShippingError,
    ShutdownError,
    UnknownJobError,
    UnpicklableArgumentsError,
    WorkerDiedError,
)
from ._jobs import Job, JobEvent, JobFailure, JobSnapshot, JobState
from ._kernel_state import KernelStateTracker
from ._shipping import Cargo, FunctionRegistry
from ._slots import Slot
from ._store import MISSING, read_result

LOGGER = logging.getLogger("nbbg")

PREWARM_TIMEOUT = 30.0
"""Seconds a prewarming manager waits at most for its workers to be ready."""

MESSAGE_WAIT = 0.05
"""Seconds a finished job's worker callback waits for its last progress messages."""

MESSAGE_GRACE = 2.0
"""Seconds a finished job waits for its last progress messages before it ends anyway."""

RESULT_TTL = 24 * 3600.0
"""Seconds a job's own result is kept in the store (cache_by entries use ``expire``)."""

Subscriber = Callable[[JobEvent], None]


@dataclass(frozen=True)
class WorkerInfo:
    slot: int
    pid: int | None
    job_id: str | None


class Engine:
    """Runs callables in warm loky workers, at most ``max_workers`` at a time."""

    def __init__(
        self,
        store: diskcache.Cache,
        max_workers: int | None = None,
        *,
        prewarm: bool = True,
        warm_modules: tuple[str, ...] = (),
        history: int = 1000,
    ) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        _check_worker_count(max_workers)
        self.store = store
        self.history = history
        self._warm_up_args = (warm_modules, store.directory)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._queued: deque[tuple[Job, Any, Any]] = deque()
        self._subscribers: list[Subscriber] = []
        self._functions = FunctionRegistry()
        self._kernel_state = KernelStateTracker()
        self._closed = False
        self._listener = ProgressListener(self._on_message)
        self._initargs = (os.getpid(), self._listener.address, self._listener.authkey)
        self._slots: list[Slot] = []
        self._target_workers = max_workers
        self._started = False
        if prewarm:
            self._start_slots()
            self._wait_until_warm(PREWARM_TIMEOUT)
        self_ref = weakref.ref(self)
        atexit.register(_shutdown_if_alive, self_ref)

    # ---------------------------------------------------------------- slots
    def _start_slots(self) -> None:
        with self._lock:
            self._started = True
            while len(self._slots) < self._target_workers:
                self._slots.append(Slot(len(self._slots), self._initargs, self._warm_up_args))

    def _wait_until_warm(self, timeout: float) -> None:
        """Return once every worker has started and imported what jobs need.

        So the first click after the app starts runs at warm speed. The workers
        start in parallel (~0.5 s on 2 cores); a slow one is waited for at most
        ``timeout`` s, then jobs simply queue until it is up.
        """
        deadline = time.monotonic() + timeout
        for slot in list(self._slots):
            slot.wait_warm(max(0.0, deadline - time.monotonic()))

    @property
    def max_workers(self) -> int:
        return self._target_workers

    def workers(self) -> list[WorkerInfo]:
        with self._lock:
            return [WorkerInfo(s.index, s.worker_pid(), s.job_id) for s in self._slots]

    def resize(self, max_workers: int) -> None:
        """Change the number of workers; busy workers beyond it finish their job first."""
        _check_worker_count(max_workers)
        with self._lock:
            self._ensure_open()
            self._target_workers = max_workers
            for slot in self._slots[max_workers:]:
                slot.retiring = True
            for slot in self._slots[:max_workers]:
                slot.retiring = False
            self._retire_idle_slots()
            self._start_slots()
            events = self._dispatch()
        self._emit(events)

    def restart(self) -> None:
        """Fresh workers (e.g. after editing an imported module); running jobs finish first."""
        with self._lock:
            self._ensure_open()
            self._functions.clear()
            for slot in self._slots:
                if slot.busy:
                    slot.needs_restart = True
                else:
                    slot.replace_worker()

    def _retire_idle_slots(self) -> None:
        kept = []
        for slot in self._slots:
            if slot.retiring and not slot.busy:
                slot.close()
            else:
                kept.append(slot)
        for index, slot in enumerate(kept):
            slot.index = index
        self._slots = kept

    # ---------------------------------------------------------------- jobs
    def submit(
        self,
        fn: Callable[..., Any],
        call: Any,
        *,
        name: str | None = None,
        label: str = "",
        runner: _worker.Runner = _worker.call_plain,
        result_key: str | None = None,
        expire: float | None = None,
    ) -> str:
        """Queue ``runner(fn, reporter, call)`` in a worker; return the job id.

        Raises ``UnpicklableCallbackError`` / ``UnpicklableArgumentsError`` at
        once when ``fn`` or ``call`` cannot be sent to a worker.
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
        job_id = uuid.uuid4().hex
        job = Job(job_id, name, label, result_key or f"nbbg-result-{job_id}")
        spec = _worker.JobSpec(
            job_id=job_id,
            name=name,
            token=shipped.token,
            payload=None,
            runner=runner,
            args_payload=args_payload,
            store_directory=self.store.directory,
            result_key=job.result_key,
            expire=expire if result_key is not None else RESULT_TTL,
            kernel=kernel,
            objects=tuple((ref.digest, ref.size) for ref in shipped.objects),
        )
        job.cargo = cargo
        self._snapshot_values(cargo)
        with self._lock:
            self._ensure_open()
            if not self._started:
                self._start_slots()
            self._jobs[job_id] = job
            self._queued.append((job, spec, cargo))
            events = [JobEvent("state", self._snapshot(job))]
            events += self._dispatch()
            self._forget_old_jobs()
        self._emit(events)
        return job_id

    def _snapshot_values(self, cargo: Cargo) -> None:
        """Copy to shared memory, now, the large values the job's worker may lack.

        That copy is what the job gets if the object changes before it starts.
        A job that will start at once goes to the free slot ``_dispatch`` picks:
        only what that worker lacks is copied (checking every worker would copy
        a 100 MB array at every call while an idle second worker lacks it). A job
        that will queue may go to any worker. If the worker that takes it lacks
        a value after all (it was replaced, or another submit took the free
        slot), ``Cargo.snapshot`` copies the object at start when it is
        unchanged, else the job fails with ObjectChangedError.
        """
        with self._lock:
            free = self._free_slot() if not self._queued and self._started else None
            slots = [free] if free is not None else list(self._slots)
        try:
            for ref in cargo.function.objects:
                if not slots or any(ref.digest not in slot.objects for slot in slots):
                    try:
                        cargo.snapshot(ref.digest)
                    except OSError:  # no room now: tried again, with a clear error, at start
                        LOGGER.warning("nbbg: could not copy %s to shared memory", ref.label)
        except BaseException:
            cargo.release()
            raise
        finally:
            cargo.forget_streams()  # its buffer views must not outlive the submit

    def add_finished(self, name: str, label: str, result_key: str) -> str:
        """Record a job answered from the cache without running (a cache hit)."""
        return self._add_ended(name, label, result_key, JobState.DONE, None, cache_hit=True)

    def add_failed(self, name: str, label: str, failure: JobFailure) -> str:
        """Record a job that failed before it could be queued (bad input)."""
        return self._add_ended(name, label, "", JobState.ERROR, failure, cache_hit=False)

    def _add_ended(
        self,
        name: str,
        label: str,
        result_key: str,
        state: JobState,
        failure: JobFailure | None,
        *,
        cache_hit: bool,
    ) -> str:
        job_id = uuid.uuid4().hex
        now = time.time()
        job = Job(
            job_id,
            name,
            label,
            result_key,
            state=state,
            started_at=now,
            finished_at=now,
            failure=failure,
            cache_hit=cache_hit,
        )
        with self._lock:
            self._jobs[job_id] = job
            event = JobEvent("state", self._snapshot(job))
            self._forget_old_jobs()
            self._changed.notify_all()
        self._emit([event])
        return job_id

    def cancel(self, job_id: str) -> bool:
        """Stop a queued or running job; False (and no effect) for any other id."""
        with self._lock:
            job = self._jobs.get(job_id) if isinstance(job_id, str) else None
            if job is None or not job.state.active:
                return False
            events = self._end_job(job, JobState.CANCELLED, None)
            events += self._dispatch()
        self._emit(events)
        return True

    def cancel_all(self) -> int:
        with self._lock:
            active = [job.id for job in self._jobs.values() if job.state.active]
        return sum(self.cancel(job_id) for job_id in active)

    def fail(self, job_id: str, failure: JobFailure) -> None:
        """End an active job with ``failure``; mark a done job as failed."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            if job.state.active:
                events = self._end_job(job, JobState.ERROR, failure)
                events += self._dispatch()
            elif job.state is JobState.DONE:
                job.state, job.failure = JobState.ERROR, failure
                events = [JobEvent("state", self._snapshot(job))]
            else:
                return
        self._emit(events)

    def get(self, job_id: str) -> JobSnapshot | None:
        with self._lock:
            job = self._jobs.get(job_id) if isinstance(job_id, str) else None
            return None if job is None else self._snapshot(job)

    def jobs(self) -> list[JobSnapshot]:
        """All remembered jobs, oldest first."""
        with self._lock:
            positions = {job.id: k for k, (job, _, _) in enumerate(self._queued, 1)}
            return [job.snapshot(positions.get(job.id)) for job in self._jobs.values()]

    def result(self, job_id: str) -> Any:
        """The stored result of a done job, or ``MISSING`` when it is gone.

        A result that cannot be read fails the job (so the panel agrees with
        the app) and raises ``StoreError`` or ``UnreadableResultError``.
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not job.result_key:
                return MISSING
            key, name = job.result_key, job.name
        try:
            return read_result(self.store, key, name)
        except NbbgError as exc:
            self.fail(job_id, JobFailure(str(exc)))
            raise

    def wait(self, job_id: str, timeout: float | None = None) -> Any:
        """Block until the job ends; return its result or raise why it did not."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise UnknownJobError(job_id)
            while job.state.active:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"job {job_id} ({job.name}) still {job.state.value} after {timeout} s"
                    )
                self._changed.wait(remaining)
            state, failure = job.state, job.failure
        if state is JobState.CANCELLED:
            raise JobCancelledError(job_id)
        if state is JobState.ERROR:
            assert failure is not None
            raise JobFailedError(job_id, failure.message, failure.traceback)
        try:
            value = self.result(job_id)
        except NbbgError as exc:
            raise JobFailedError(job_id, str(exc)) from exc
        if value is MISSING:
            raise JobFailedError(
                job_id, "the result is no longer in the store (expired or evicted)"
            )
        return value

    def take_progress(self, job_id: str) -> tuple[bool, Any]:
        """The progress value not yet delivered, at most once: ``(found, value)``."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not job.has_undelivered_progress:
                return False, None
            value, job.undelivered_progress = job.undelivered_progress, None
            job.has_undelivered_progress = False
            return True, value

    def awaits_delivery(self, job_id: str) -> bool:
        """Whether the job is active, or ended done or failed and its outcome
        has not been marked delivered (``mark_delivered``) yet."""
        with self._lock:
            job = self._jobs.get(job_id) if isinstance(job_id, str) else None
            if job is None:
                return False
            ended_with_outcome = job.state in (JobState.DONE, JobState.ERROR)
            return job.state.active or (ended_with_outcome and not job.outcome_delivered)

    def mark_delivered(self, job_id: str) -> None:
        """Record that the job's result or error has been handed to its reader."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                job.outcome_delivered = True

    def take_props(self, job_id: str) -> dict[str, dict[str, Any]]:
        """All ``set_props`` updates not yet delivered, merged, at most once."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not job.undelivered_props:
                return {}
            props, job.undelivered_props = job.undelivered_props, {}
            return props

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber(event)`` on every state change and progress report.

        It runs on an engine thread: keep it short and never print from it.
        Returns a function that unsubscribes.
        """
        with self._lock:
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

        return unsubscribe

    def shutdown(self) -> None:
        """Cancel every job and stop every worker. Safe to call more than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            events: list[JobEvent] = []
            for job in list(self._jobs.values()):
                if job.state.active:
                    events += self._end_job(job, JobState.CANCELLED, None)
            for slot in self._slots:
                slot.close()
            self._slots = []
            self._changed.notify_all()
        self._listener.close()
        self._emit(events)

    @property
    def closed(self) -> bool:
        return self._closed

    # ---------------------------------------------------------------- internals
    def _ensure_open(self) -> None:
        if self._closed:
            raise ShutdownError()

    def _snapshot(self, job: Job) -> JobSnapshot:
        position = None
        if job.state is JobState.QUEUED:
            for k, (queued, _, _) in enumerate(self._queued, 1):
                if queued is job:
                    position = k
                    break
        return job.snapshot(position)

    def _dispatch(self) -> list[JobEvent]:
        """Start queued jobs on free slots (lock held)."""
        events: list[JobEvent] = []
        while self._queued:
            slot = self._free_slot()
            if slot is None:
                break
            job, spec, cargo = self._queued.popleft()
            self._start_on(slot, job, spec, cargo)  # may fail the job instead
            events.append(JobEvent("state", self._snapshot(job)))
        if events:
            for job, _, _ in self._queued:  # queue positions moved up
                events.append(JobEvent("state", self._snapshot(job)))
        return events

    def _free_slot(self) -> Slot | None:
        """A free slot, preferring a warm one: a slot just respawned after a
        cancel is still starting its worker while another may sit idle."""
        free = [s for s in self._slots if not s.busy and not s.retiring]
        return next((s for s in free if s.warm), free[0] if free else None)

    def _start_on(self, slot: Slot, job: Job, spec: _worker.JobSpec, cargo: Cargo) -> None:
        shipped = self._with_cargo(slot, job, spec, cargo)
        if shipped is None:
            return
        job.state = JobState.RUNNING
        job.started_at = time.time()
        job.slot_index = slot.index
        slot.job_id = job.id
        try:
            future = slot.executor.submit(_worker.run_job, shipped)
        except Exception:  # noqa: BLE001 - a broken executor: replace it and retry once
            slot.replace_worker()
            slot.job_id = job.id
            retry = self._with_cargo(slot, job, spec, cargo)
            if retry is None:
                return
            future = slot.executor.submit(_worker.run_job, retry)
        job.worker_pid = slot.worker_pid()
        generation = slot.generation
        future.add_done_callback(
            lambda f: self._on_worker_done(slot, generation, job, spec, cargo, f)
        )

    def _with_cargo(
        self, slot: Slot, job: Job, spec: _worker.JobSpec, cargo: Cargo
    ) -> _worker.JobSpec | None:
        """The job's spec plus what this slot's worker lacks (None: the job failed).

        Updates the slot's mirrors as the worker will update its caches.
        """
        parcels = {}
        for digest, _size in spec.objects:
            if digest in slot.objects:
                continue
            label = next(r.label for r in cargo.function.objects if r.digest == digest)
            error: NbbgError | None = None
            try:
                parcel = cargo.snapshot(digest)
            except OSError as exc:  # e.g. no room in /dev/shm
                parcel, error = None, ShippingError(job.name, label, exc)
            if parcel is None:
                failure = JobFailure(str(error or ObjectChangedError(job.name, label)))
                slot.job_id = None
                self._end_job(job, JobState.ERROR, failure)
                return None
            parcels[digest] = parcel.ref
        drops = self._superseded(slot, spec, cargo)
        for digest in drops:
            slot.objects.discard(digest)
        slot.objects.use((digest, size, None) for digest, size in spec.objects)
        environ = None
        if spec.kernel is not None and slot.environ_token != spec.kernel.environ_token:
            environ = cargo.environ
            slot.environ_token = spec.kernel.environ_token
        payload = None if slot.remember_shipped(spec.token) else cargo.function.payload
        return replace(spec, payload=payload, parcels=parcels or None, environ=environ, drops=drops)

    def _superseded(self, slot: Slot, spec: _worker.JobSpec, cargo: Cargo) -> tuple[bytes, ...]:
        """Old versions of this callback's values the worker may drop: none a queued job needs."""
        candidates = [d for d in cargo.function.replaces if d in slot.objects]
        if not candidates:
            return ()
        needed = {digest for digest, _ in spec.objects}
        for _, queued_spec, _ in self._queued:
            needed.update(digest for digest, _ in queued_spec.objects)
        return tuple(d for d in candidates if d not in needed)

    def _on_worker_done(
        self,
        slot: Slot,
        generation: int,
        job: Job,
        spec: _worker.JobSpec,
        cargo: Cargo,
        future: Future[Any],
    ) -> None:
        with self._lock:
            if slot.generation != generation or slot.job_id != job.id:
                return  # the job was cancelled and its worker replaced
            events: list[JobEvent] = []
            exc = future.exception()
            if exc is not None:
                detail = _worker.describe_exception(exc)
                failure = JobFailure(str(WorkerDiedError(job.name, detail)))
                events += self._end_job(job, JobState.ERROR, failure)
            else:
                outcome: _worker.WorkerOutcome = future.result()
                if outcome.kind == "missing" and not self._closed and cargo.resends < 2:
                    # The mirrors disagreed with the worker: send what it lacks.
                    cargo.resends += 1
                    for digest in outcome.missing:
                        slot.objects.discard(digest)
                    if outcome.missing_function:
                        slot.shipped_tokens.pop(spec.token, None)
                    if outcome.missing_environ:
                        slot.environ_token = 0
                    slot.job_id = None
                    self._start_on(slot, job, spec, cargo)
                    events.append(JobEvent("state", self._snapshot(job)))
                    events += self._dispatch()
                    self._emit(events)
                    return
                job.worker_outcome = outcome
                job.messages_expected = outcome.messages_sent
                # The job's last progress messages may still be in the reader
                # thread's hands: give them a moment (the slot stays busy).
                self._changed.wait_for(
                    lambda: job.messages_received >= outcome.messages_sent, MESSAGE_WAIT
                )
                if slot.generation != generation or slot.job_id != job.id:
                    return  # cancelled meanwhile: its worker is already replaced
                slot.job_id = None
                events += self._maybe_finish(job)
                if job.state.active:  # a message was lost (broken connection)
                    _start_timer(MESSAGE_GRACE, self._finish_overdue, job)
                self._after_job(slot)
            events += self._dispatch()
        self._emit(events)

    def _after_job(self, slot: Slot) -> None:
        if slot.retiring:
            self._retire_idle_slots()
        elif slot.needs_restart:
            slot.replace_worker()

    def _finish_overdue(self, job: Job) -> None:
        """Finish a job whose worker is done but whose last messages never came.

        Only a broken progress connection does that; the job's result is in the
        store all the same, so the job must not stay "running" for ever.
        """
        with self._lock:
            if job.messages_expected is not None:
                job.messages_received = max(job.messages_received, job.messages_expected)
            events = self._maybe_finish(job)
        self._emit(events)

    def _maybe_finish(self, job: Job) -> list[JobEvent]:
        """Finish a job once its worker is done and all its messages arrived."""
        if job.messages_expected is None or job.messages_received < job.messages_expected:
            return []
        if self._slot_running(job.id) is not None:
            return []  # the worker-done callback finishes it once it frees the slot
        if not job.state.active:
            return []
        outcome = job.worker_outcome
        if outcome.kind == "ok":
            return self._end_job(job, JobState.DONE, None)
        return self._end_job(job, JobState.ERROR, outcome.failure)

    def _end_job(self, job: Job, state: JobState, failure: JobFailure | None) -> list[JobEvent]:
        """Move an active job to a final state, freeing or replacing its slot (lock held)."""
        was_queued = job.state is JobState.QUEUED
        job.state, job.failure, job.finished_at = state, failure, time.time()
        if job.cargo is not None:
            # Its shared-memory snapshots and values; at shutdown unlink before exit.
            job.cargo.release(background=not self._closed)
            job.cargo = None
        if was_queued:
            self._queued = deque(item for item in self._queued if item[0] is not job)
        else:
            slot = self._slot_running(job.id)
            if slot is not None:
                # Cancelled, failed from outside, or died: the worker is not reusable.
                slot.replace_worker()
                self._after_job(slot)
        self._changed.notify_all()
        events = [JobEvent("state", self._snapshot(job))]
        if was_queued:
            events += [JobEvent("state", self._snapshot(q)) for q, _, _ in self._queued]
        return events

    def _slot_running(self, job_id: str) -> Slot | None:
        return next((s for s in self._slots if s.job_id == job_id), None)

    def _on_message(self, message: Message) -> None:
        kind, job_id, payload = message
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            job.messages_received += 1
            if job.messages_expected is not None:
                self._changed.notify_all()  # the worker-done callback may be waiting
            events: list[JobEvent] = []
            if job.state.active:
                if kind == "progress":
                    job.progress = payload
                    job.undelivered_progress = payload
                    job.has_undelivered_progress = True
                    events.append(JobEvent("progress", self._snapshot(job)))
                elif kind == "props":
                    for component_id, props in payload.items():
                        merged = job.undelivered_props.get(component_id, {})
                        job.undelivered_props[component_id] = {**merged, **props}
                elif kind == "bad_progress":
                    failure = JobFailure(str(BadProgressError(job.name, payload)))
                    events += self._end_job(job, JobState.ERROR, failure)
                    events += self._dispatch()
            events += self._maybe_finish(job)
        self._emit(events)

    def _forget_old_jobs(self) -> None:
        finished = [j for j in self._jobs.values() if not j.state.active]
        for job in finished[: max(0, len(finished) - self.history)]:
            del self._jobs[job.id]
            if job.result_key.startswith("nbbg-result-"):
                try:
                    self.store.delete(job.result_key)
                except Exception:  # noqa: BLE001 - the store may be gone; expiry cleans up
                    pass

    def _emit(self, events: list[JobEvent]) -> None:
        if not events:
            return
        with self._lock:
            subscribers = list(self._subscribers)
        for event in events:
            for subscriber in subscribers:
                try:
                    subscriber(event)
                except Exception:
                    LOGGER.exception("nbbg: job event subscriber failed")


def _start_timer(delay: float, function: Callable[..., None], *args: Any) -> None:
    timer = threading.Timer(delay, function, args)
    timer.daemon = True
    timer.start()


def _shutdown_if_alive(engine_ref: weakref.ref[Engine]) -> None:
    engine = engine_ref()
    if engine is not None:
        engine.shutdown()


def _check_worker_count(max_workers: int) -> None:
    if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
        raise ValueError(f"max_workers must be a whole number of at least 1, not {max_workers!r}")
