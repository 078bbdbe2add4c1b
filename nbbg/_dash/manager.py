"""``LokyManager`` (and ``RayManager``'s base): Dash's background-callback contract on the engine.

Dash talks to a manager in cache keys (one per callback + inputs) and job ids
(signed and handed to the browser). The engine talks in job ids only, so this
adapter remembers the latest job per cache key and what the polls have not
taken yet (``Deliveries``), answers ``cache_by`` hits from the store without
running anything, records which app started each job (the job's ``origin``),
and turns job failures into Dash's ``background_callback_error`` result
(``outcomes``) so the browser shows them.

In a process forked from the one that built it (a pre-fork server), the
manager does not touch the engine: a callback fired there is handed a job that
answers its first poll with :class:`WrongProcessError` as the callback's
error, so the app shows why instead of a silent cancel.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import diskcache
from dash.background_callback.managers import BaseBackgroundCallbackManager

from .._engine.backend import BackendFactory
from .._engine.engine import Engine
from .._engine.events import Subscriber
from .._engine.history import History
from .._engine.history_writer import HistoryWriter
from .._engine.jobs import JobFailure, JobSnapshot, JobState, made_elsewhere
from .._engine.memory_guard import MemoryGuard, MemoryLimit, MemoryLimitSpec, parse_memory_limit
from .._engine.process_owner import current_pid
from .._engine.records import JobHistory
from .._engine.slots import WorkerInfo
from .._engine.store import MISSING, Store, open_store, read_result
from .._engine.worker import in_worker
from .._errors import NbbgError, UnknownJobError, WrongProcessError
from .dash_jobs import AppOrigin, DashJobFunction, trigger_label
from .delivery import Deliveries
from .outcomes import (
    bad_update_error,
    error_result,
    json_problem,
    missing_result_message,
    other_process_message,
    unsendable_result_message,
    warm_json_encoder,
)
from .private import serving_app_id
from .runner import run_dash_callback

WARM_MODULES = ("dash", "nbbg._dash.runner")

REFUSED_JOB_PREFIX = "refused-"
"""Job ids handed out in a forked process: their poll answers the ``WrongProcessError``."""


class EngineManager(BaseBackgroundCallbackManager):
    """Dash's background-callback contract on the engine, whatever its backend.

    :class:`LokyManager` (workers on this machine) and ``RayManager`` (jobs as
    Ray tasks) differ only in the backend they give the engine.
    """

    def __init__(
        self,
        *,
        max_workers: int | None,
        cache: diskcache.Cache | str | os.PathLike[str] | None,
        cache_by: Callable[[], Any] | list[Callable[[], Any]] | None,
        expire: float | None,
        prewarm: bool,
        memory_limit: MemoryLimit | None,
        backend: BackendFactory | None = None,
    ) -> None:
        warm_json_encoder()
        self.handle = open_store(cache)
        self.expire = expire
        self._deliveries = Deliveries()
        self._engine = Engine(
            self.handle,
            max_workers,
            # A worker that imports the app's module to find a callback (an app
            # served by gunicorn: callbacks pickle by reference) builds the
            # module's manager again: it must not start a pool of its own.
            prewarm=prewarm and not in_worker(),
            warm_modules=WARM_MODULES,
            hooks=self._deliveries,
            backend=backend,
        )
        self._memory_guard = MemoryGuard(self._engine, memory_limit)
        self._history = History(self.handle.directory, self.handle, self.submit)
        self._history_writer = HistoryWriter(self._engine, self._history)
        super().__init__(cache_by)  # type: ignore[no-untyped-call]
        # Registered after the engine's own hook, so it runs first: the records of the
        # last jobs (and of those the shutdown cancels) are written before the exit.
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    # ------------------------------------------------------------ cache_by
    @property
    def cache_by(self) -> list[Callable[[], Any]] | None:
        return self._cache_by

    @cache_by.setter
    def cache_by(self, value: Callable[[], Any] | list[Callable[[], Any]] | None) -> None:
        if value is not None and not isinstance(value, (list, tuple)):
            value = [value]
        if value is not None:
            for item in value:
                if not callable(item):
                    raise TypeError(
                        f"cache_by takes zero-argument functions, not {type(item).__name__}: "
                        "wrap the value in a function, e.g. cache_by=[lambda: version]"
                    )
            value = list(value)
        self._cache_by = value

    # ------------------------------------------------------------ Dash's contract
    def make_job_fn(
        self, fn: Callable[..., Any], progress: bool, key: str | None = None
    ) -> DashJobFunction:
        return DashJobFunction(fn, bool(progress))

    def call_job_fn(self, key: str, job_fn: DashJobFunction, args: Any, context: Any) -> str:
        if not self._engine.owner.is_current:
            return f"{REFUSED_JOB_PREFIX}{uuid.uuid4().hex}"
        label, origin = trigger_label(context), AppOrigin(serving_app_id())
        if self.cache_by is not None and self._cached(key):
            job_id = self._engine.add_finished(job_fn.name, label, key, origin)
        else:
            try:
                job_id = self._engine.submit(
                    job_fn.fn,
                    (args, dict(context) if context is not None else {}, job_fn.has_progress),
                    name=job_fn.name,
                    label=label,
                    origin=origin,
                    runner=run_dash_callback,
                    result_key=key if self.cache_by is not None else None,
                    expire=self.expire,
                )
            except NbbgError as exc:
                # Show the error in the browser at the first poll, not as a 500.
                failure = JobFailure(str(exc))
                job_id = self._engine.add_failed(job_fn.name, label, failure, origin)
        self._deliveries.record(key, job_id)
        return job_id

    def _cached(self, key: str) -> bool:
        try:
            return key in self.handle
        except Exception:  # noqa: BLE001 - a broken store is a miss, the job reports the error
            return False

    def _job_for(self, key: str | None) -> str | None:
        """The latest job of ``key`` (None in a forked process: its jobs are not here)."""
        return self._deliveries.job_for(key) if self._engine.owner.is_current else None

    def job_running(self, job: Any) -> bool:
        """Whether the browser should keep polling: the job is queued or running,
        or it has ended and ``get_result`` has not handed its outcome over yet.

        Dash asks ``get_result`` first and ``job_running`` second in one poll. A
        job ending between the two would otherwise look cancelled: the poll
        answers 204 and the result never reaches the browser.
        """
        if job is None or not self._engine.owner.is_current:
            return False
        return self._engine.awaits_collection(str(job))

    def terminate_job(self, job: Any) -> None:
        if job is not None and self._engine.owner.is_current:
            self._engine.cancel(str(job))

    def terminate_unhealthy_job(self, job: Any) -> bool:
        return False  # crashed workers are detected and replaced as they happen

    def get_progress(self, key: str) -> list[Any] | None:
        job_id = self._job_for(key)
        taken = self._deliveries.take_progress(job_id) if job_id else None
        if job_id is None or taken is None:
            return None
        value = taken[0]
        if not isinstance(value, (list, tuple)):
            value = [value]
        if not self._sendable(job_id, value):
            return None
        return list(value)

    def result_ready(self, key: str) -> bool:
        job_id = self._job_for(key)
        state = self._engine.state(job_id) if job_id else None
        if state is not None:
            return not state.active
        return self.cache_by is not None and self._cached(key)

    def get_result(self, key: str, job: Any) -> Any:
        if not self._engine.owner.is_current or str(job).startswith(REFUSED_JOB_PREFIX):
            error = WrongProcessError(type(self).__name__, self._engine.owner.pid, current_pid())
            return {"background_callback_error": {"msg": str(error), "tb": ""}}
        snapshot = self._engine.get(str(job)) if job is not None else None
        if snapshot is None:
            cached = self._cached_result(key)
            if cached is self.UNDEFINED and job is not None and made_elsewhere(str(job)):
                # Not a cancel: a silent 204 would lose the job without a word.
                return {"background_callback_error": {"msg": other_process_message(), "tb": ""}}
            return cached
        outcome = self._outcome(snapshot, key)
        if outcome is not self.UNDEFINED:
            self._engine.mark_collected(snapshot.id)
        return outcome

    def _outcome(self, snapshot: JobSnapshot, key: str) -> Any:
        """What the browser gets for a known job: its result, an error, or ``UNDEFINED``."""
        if snapshot.state is JobState.ERROR:
            return error_result(snapshot)
        if snapshot.state is not JobState.DONE:
            return self.UNDEFINED
        try:
            value = self._engine.result(snapshot.id)
        except NbbgError as exc:
            return error_result(snapshot, str(exc))
        message = None
        if value is MISSING:  # a silent 204 would look like a cancel: say what happened
            message = missing_result_message(snapshot.name)
        elif (problem := json_problem(value)) is not None:
            message = unsendable_result_message(snapshot.name, problem)
        if message is not None:
            self._engine.fail(snapshot.id, JobFailure(message))
            return error_result(snapshot, message)
        if self.cache_by is not None and self.expire:
            self.handle.touch(key, expire=self.expire)
        return value

    def _cached_result(self, key: str | None) -> Any:
        if self.cache_by is None or key is None:
            return self.UNDEFINED
        try:
            value = read_result(self.handle, key)
        except NbbgError:
            return self.UNDEFINED
        return self.UNDEFINED if value is MISSING else value

    def get_updated_props(self, key: str) -> dict[str, Any]:
        job_id = self._job_for(key)
        if job_id is None:
            return {}
        props = self._deliveries.take_props(job_id)
        return props if not props or self._sendable(job_id, props) else {}

    def _sendable(self, job_id: str, update: Any) -> bool:
        """Whether a progress or set_props update can go to the browser as JSON.

        If not, the job ends with a clear error instead: otherwise every poll of
        the app would answer 500.
        """
        problem = json_problem(update)
        if problem is None:
            return True
        snapshot = self._engine.get(job_id)
        error = bad_update_error(snapshot.name if snapshot else "callback", problem)
        self._engine.fail(job_id, JobFailure(str(error)))
        return False

    def get_or_create_signing_secret(self, generate: Callable[[], bytes]) -> Any:
        # ``add`` only writes when the key is absent, so concurrent callers agree.
        self.handle.add(self.SIGNING_SECRET_KEY, generate())
        return self.handle.get(self.SIGNING_SECRET_KEY)

    def clear_cache_entry(self, key: str) -> None:
        self.handle.delete(key)

    # ------------------------------------------------------------ jobs API
    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def max_workers(self) -> int:
        return self._engine.max_workers

    @property
    def memory_limit(self) -> MemoryLimit | None:
        """The per-job memory limit (``None``: no limit); assign any form
        ``memory_limit=`` takes to change it, also for running jobs."""
        return self._memory_guard.limit

    @memory_limit.setter
    def memory_limit(self, value: MemoryLimitSpec) -> None:
        self._memory_guard.limit = parse_memory_limit(value)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> str:
        """Run ``fn(*args, **kwargs)`` in a worker, outside Dash; return the job id."""
        job_id = self._engine.submit(fn, (args, kwargs))
        self._history.note_call(job_id, fn, args, kwargs)
        return job_id

    def history(
        self, limit: int | None = None, name: str | None = None, state: JobState | str | None = None
    ) -> JobHistory:
        """Records of finished jobs in this manager's store, newest first.

        Every kernel using the same store adds to it (and sees the others'):
        ``name`` keeps one callback's jobs, ``state`` one final state
        (``"done"``, ``"error"``, ``"cancelled"``). Each record has
        ``result()``, ``output``, ``traceback`` and, for ``submit()`` jobs,
        ``rerun()``; the list has ``to_pandas()``.
        """
        self._history_writer.catch_up()
        return self._history.records(limit, name, state)

    def rerun(self, job_id: str) -> str:
        """Submit a finished ``submit()`` job's call again (from its record); return the new id.

        Raises ``UnknownJobError`` when the history has no record of it and
        ``NotRerunnableError`` for a Dash job or a call too large to keep.
        """
        self._history_writer.catch_up()
        record = self._history.record(job_id)
        if record is None:
            raise UnknownJobError(job_id)
        return record.rerun()

    def clear_history(self) -> None:
        """Delete every job record of this store (of every kernel using it)."""
        self._history.clear()

    def jobs(self) -> list[JobSnapshot]:
        return self._engine.jobs()

    def job(self, job_id: str) -> JobSnapshot | None:
        return self._engine.get(job_id)

    def cancel(self, job_id: str) -> bool:
        return self._engine.cancel(job_id)

    def cancel_all(self) -> int:
        return self._engine.cancel_all()

    def wait(self, job_id: str, timeout: float | None = None) -> Any:
        return self._engine.wait(job_id, timeout)

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        return self._engine.subscribe(subscriber)

    def workers(self) -> list[WorkerInfo]:
        return self._engine.workers()

    def resize(self, max_workers: int) -> None:
        self._engine.resize(max_workers)

    def restart(self) -> None:
        self._engine.restart()

    def shutdown(self) -> None:
        if self._engine.owner.is_current:
            self._memory_guard.close()
        self._engine.shutdown()
        if self._engine.owner.is_current:
            self._history_writer.close()  # after the last jobs' records are queued
            if isinstance(self.handle, Store):
                # Every result on disk when this returns; a store that cannot be written
                # has logged why, and shutting down must not fail on it.
                with contextlib.suppress(Exception):
                    self.handle.write_waiting()

    def __repr__(self) -> str:
        active = sum(1 for job in self._engine.jobs() if job.state.active)
        limit = self.memory_limit
        return (
            f"<{type(self).__name__} max_workers={self.max_workers} active_jobs={active} "
            f"memory_limit={str(limit) if limit else None!r} store={self.handle.directory!r}>"
        )


def _shutdown_at_exit(manager_ref: weakref.ref[EngineManager]) -> None:
    manager = manager_ref()
    if manager is not None:
        manager.shutdown()
