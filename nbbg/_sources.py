"""Where the jobs panel gets its jobs: nbbg's engine, or Dash's own managers.

::

    LokyManager ─────────────► EngineSource       pushed: engine events
    DiskcacheManager,
    CeleryManager, ... ──────► DashManagerSource  polled: job_running, result_ready,
                                                  the stored progress; cancel = terminate_job
             ▲
             └── ManagerWatch: wraps the manager *instance*'s methods to learn
                 which app started each job (and, for Dash's managers, which
                 jobs exist at all: they keep no job list)

A panel for one app shows the jobs that app's requests started (the app is
known from the Flask request that calls ``call_job_fn``). ``restore()``
removes every wrapper, so unloading the extension leaves managers untouched.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from dash.background_callback.managers import BaseBackgroundCallbackManager

from ._jobs import JobFailure, JobSnapshot, JobState
from ._manager import LokyManager, _label
from ._patching import patch_attribute

POLL_INTERVAL = 0.25
"""Seconds between two looks at a Dash manager's jobs (each look reads its store)."""

HISTORY = 1000
"""Finished jobs of a Dash manager remembered for the panel."""

Listener = Callable[[], None]


class JobSource(Protocol):
    """The jobs of one manager, as far as one panel is concerned."""

    polled: bool
    """True when changes are only seen by looking again (no events)."""

    def jobs(self) -> list[JobSnapshot]: ...

    def cancel(self, job_id: str) -> bool: ...

    def subscribe(self, on_change: Listener) -> Callable[[], None]: ...


def serving_app_id() -> int | None:
    """``id()`` of the Flask server handling the current request, if any."""
    try:
        import flask

        if flask.has_app_context():
            return id(flask.current_app._get_current_object())  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - another backend (Quart, FastAPI): owner unknown
        pass
    return None


class ManagerWatch:
    """Records which app started each job of one manager instance."""

    def __init__(self, manager: BaseBackgroundCallbackManager) -> None:
        self.manager = manager
        self._lock = threading.RLock()
        self._owners: OrderedDict[str, int | None] = OrderedDict()
        self._listeners: list[Listener] = []
        self._restores: list[Callable[[], None]] = []
        self._wrap("call_job_fn", self._calling_job_fn)

    # ------------------------------------------------------------ wrapping
    def _wrap(
        self, name: str, make_wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]
    ) -> None:
        original = getattr(self.manager, name)
        self._restores.append(patch_attribute(self.manager, name, make_wrapper(original)))

    def _calling_job_fn(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def call_job_fn(key: str, job_fn: Any, args: Any, context: Any) -> Any:
            job = original(key, job_fn, args, context)
            if job is not None:
                self.record(str(job), key, job_fn, context, serving_app_id())
            return job

        return call_job_fn

    def record(self, job_id: str, key: str, job_fn: Any, context: Any, owner: int | None) -> None:
        with self._lock:
            self._owners[job_id] = owner
            while len(self._owners) > 4 * HISTORY:
                self._owners.popitem(last=False)
        self.notify()

    def restore(self) -> None:
        while self._restores:
            self._restores.pop()()

    # ------------------------------------------------------------ queries
    def belongs_to(self, job_id: str, owner: int | None) -> bool:
        """Whether a panel for ``owner`` (None: the whole kernel) shows this job.

        Jobs whose app could not be told apart are shown in every app's panel;
        jobs not started through Dash (``manager.submit``) only kernel-wide.
        """
        if owner is None:
            return True
        with self._lock:
            if job_id not in self._owners:
                return False
            started_by = self._owners[job_id]
        return started_by is None or started_by == owner

    # ------------------------------------------------------------ listeners
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener()


@dataclass
class _DashJob:
    """What the panel knows of one job of a Dash manager."""

    id: str
    name: str
    label: str
    key: str
    submitted_at: float = field(default_factory=time.time)
    state: JobState = JobState.RUNNING
    progress: Any = None
    finished_at: float | None = None
    failure: JobFailure | None = None

    def end(self, state: JobState, failure: JobFailure | None = None) -> None:
        if self.state.active:
            self.state, self.failure, self.finished_at = state, failure, time.time()

    def snapshot(self) -> JobSnapshot:
        return JobSnapshot(
            id=self.id,
            name=self.name,
            label=self.label,
            state=self.state,
            progress=self.progress,
            queue_position=None,
            submitted_at=self.submitted_at,
            started_at=self.submitted_at,
            finished_at=self.finished_at,
            failure=self.failure,
            worker_pid=int(self.id) if self.id.isdigit() else None,
        )


def _callback_name(manager: BaseBackgroundCallbackManager, job_fn: Any) -> str:
    """The user's function behind ``job_fn`` (Dash's managers wrap it anonymously)."""
    for key, registered in getattr(manager, "func_registry", {}).items():
        if registered is job_fn:
            for registered_key, fn, _progress in BaseBackgroundCallbackManager.functions:
                if registered_key == key:
                    return str(getattr(fn, "__name__", "callback"))
    return str(getattr(job_fn, "__name__", "callback"))


def _error_of(value: Any) -> JobFailure | None:
    if isinstance(value, dict) and "background_callback_error" in value:
        error = value["background_callback_error"] or {}
        return JobFailure(str(error.get("msg", "the job failed")), str(error.get("tb", "")))
    return None


def _peek(manager: BaseBackgroundCallbackManager, key: str) -> Any:
    """Read a stored value without consuming it (Dash deletes progress once read)."""
    handle = getattr(manager, "handle", None)
    try:
        backend = getattr(handle, "backend", None)  # CeleryManager: a celery app
        if backend is not None and hasattr(backend, "get"):
            raw = backend.get(key)
            return json.loads(raw) if raw else None
        if handle is not None and hasattr(handle, "get"):  # DiskcacheManager: a cache
            return handle.get(key)
    except Exception:  # noqa: BLE001 - a store we cannot read: the app's own reads still count
        return None
    return None


class DashManagerWatch(ManagerWatch):
    """Keeps the job list a Dash manager does not keep, from its own calls and a poll.

    ``get_result`` and ``get_progress`` are seen as the app reads them;
    ``terminate_job`` of an active job (the app's cancel or re-fire, or the
    panel) marks it cancelled, except the call Dash makes for a job whose
    result it has just read.
    """

    def __init__(self, manager: BaseBackgroundCallbackManager) -> None:
        self._jobs: OrderedDict[str, _DashJob] = OrderedDict()
        self._reading = threading.local()
        self._last_poll = 0.0
        super().__init__(manager)
        self._wrap("get_result", self._getting_result)
        self._wrap("get_progress", self._getting_progress)
        self._wrap("terminate_job", self._terminating)

    def record(self, job_id: str, key: str, job_fn: Any, context: Any, owner: int | None) -> None:
        with self._lock:
            self._jobs[job_id] = _DashJob(
                job_id, _callback_name(self.manager, job_fn), _label(context), key
            )
            finished = [j for j in self._jobs.values() if not j.state.active]
            for job in finished[: max(0, len(finished) - HISTORY)]:
                del self._jobs[job.id]
        super().record(job_id, key, job_fn, context, owner)

    def _getting_result(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def get_result(key: str, job: Any) -> Any:
            job_id = str(job)
            with self._lock:  # so a poll never sees the result gone but not yet recorded
                self._reading.job_id = job_id
                try:
                    value = original(key, job)
                finally:
                    self._reading.job_id = None
                record = self._jobs.get(job_id)
                if record is not None and value is not self.manager.UNDEFINED:
                    failure = _error_of(value)
                    record.end(JobState.ERROR if failure else JobState.DONE, failure)
            self.notify()
            return value

        return get_result

    def _getting_progress(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def get_progress(key: str) -> Any:
            value = original(key)
            if value is not None:
                with self._lock:
                    for record in self._jobs.values():
                        if record.key == key and record.state.active:
                            record.progress = value
                self.notify()
            return value

        return get_progress

    def _terminating(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def terminate_job(job: Any) -> Any:
            if job is not None:
                job_id = str(job)
                with self._lock:
                    record = self._jobs.get(job_id)
                    if record is not None and getattr(self._reading, "job_id", None) != job_id:
                        record.end(JobState.CANCELLED)
                self.notify()
            return original(job)

        return terminate_job

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None or not record.state.active:
                return False
        self.manager.terminate_job(job_id)  # the wrapper marks it cancelled
        return True

    def jobs(self) -> list[JobSnapshot]:
        self._poll()
        with self._lock:
            return [record.snapshot() for record in self._jobs.values()]

    def _poll(self) -> None:
        with self._lock:
            active = [record for record in self._jobs.values() if record.state.active]
            if not active or time.monotonic() - self._last_poll < POLL_INTERVAL:
                return
            self._last_poll = time.monotonic()
            for record in active:
                self._look_at(record)

    def _look_at(self, record: _DashJob) -> None:
        manager = self.manager
        progress = _peek(manager, manager._make_progress_key(record.key))
        if progress is not None:
            record.progress = progress
        try:
            running = bool(manager.job_running(record.id))
            ready = not running and bool(manager.result_ready(record.key))
        except Exception:  # noqa: BLE001 - the store or broker is unreachable: look again later
            return
        if running:
            return
        if ready:
            failure = _error_of(_peek(manager, record.key))
            record.end(JobState.ERROR if failure else JobState.DONE, failure)
        else:
            record.end(
                JobState.ERROR,
                JobFailure(
                    "the job's process ended without a result (killed from outside or crashed)"
                ),
            )


class EngineSource:
    """An nbbg manager's jobs: pushed by its engine, cancelled by its engine."""

    polled = False

    def __init__(self, manager: LokyManager, watch: ManagerWatch, owner: int | None) -> None:
        self.manager, self.watch, self.owner = manager, watch, owner

    def jobs(self) -> list[JobSnapshot]:
        return [job for job in self.manager.jobs() if self.watch.belongs_to(job.id, self.owner)]

    def cancel(self, job_id: str) -> bool:
        return self.manager.cancel(job_id)

    def subscribe(self, on_change: Listener) -> Callable[[], None]:
        # The engine reports a job before call_job_fn returns its id (and its
        # owner is recorded): listen to both.
        stop_engine = self.manager.subscribe(lambda _event: on_change())
        stop_watch = self.watch.add_listener(on_change)

        def unsubscribe() -> None:
            stop_engine()
            stop_watch()

        return unsubscribe


class DashManagerSource:
    """A Dash manager's jobs, as its :class:`DashManagerWatch` sees them."""

    polled = True

    def __init__(self, watch: DashManagerWatch, owner: int | None) -> None:
        self.watch, self.owner = watch, owner

    def jobs(self) -> list[JobSnapshot]:
        return [job for job in self.watch.jobs() if self.watch.belongs_to(job.id, self.owner)]

    def cancel(self, job_id: str) -> bool:
        return self.watch.cancel(job_id)

    def subscribe(self, on_change: Listener) -> Callable[[], None]:
        return self.watch.add_listener(on_change)


_watches: dict[int, ManagerWatch] = {}
_watches_lock = threading.Lock()


def watch(manager: BaseBackgroundCallbackManager) -> ManagerWatch:
    """The (single) watch of ``manager``, installed on first use."""
    with _watches_lock:
        existing = _watches.get(id(manager))
        if existing is not None and existing.manager is manager:
            return existing
        created: ManagerWatch
        if isinstance(manager, LokyManager):
            created = ManagerWatch(manager)
        else:
            created = DashManagerWatch(manager)
        _watches[id(manager)] = created
        return created


def release_watches() -> None:
    """Remove every wrapper from every manager."""
    with _watches_lock:
        watches = list(_watches.values())
        _watches.clear()
    for each in watches:
        each.restore()


def source_for(manager: BaseBackgroundCallbackManager, owner: int | None) -> JobSource:
    watched = watch(manager)
    if isinstance(manager, LokyManager):
        return EngineSource(manager, watched, owner)
    assert isinstance(watched, DashManagerWatch)
    return DashManagerSource(watched, owner)


def usable(manager: Any) -> bool:
    """A manager the panel can show: not a shut-down nbbg manager."""
    if isinstance(manager, LokyManager):
        return not manager.engine.closed
    return isinstance(manager, BaseBackgroundCallbackManager)


def app_managers(app: Any) -> list[BaseBackgroundCallbackManager]:
    """The managers an app uses: its default and any given to one callback."""
    candidates = [getattr(app, "_background_manager", None)]
    candidates += [entry.get("manager") for entry in _callback_entries(app)]
    found: dict[int, BaseBackgroundCallbackManager] = {}
    for candidate in candidates:
        if candidate is not None and usable(candidate):
            found.setdefault(id(candidate), candidate)
    return list(found.values())


def _callback_entries(app: Any) -> list[dict[str, Any]]:
    # Dash adds callbacks (e.g. the hidden cancel callbacks) on its first
    # request, from a request thread, while the panel may be reading.
    for _attempt in range(3):
        try:
            return list(getattr(app, "callback_map", {}).values())
        except RuntimeError:  # dictionary changed size during iteration
            continue
    return []


def kernel_managers() -> list[BaseBackgroundCallbackManager]:
    """Every usable manager created in this process."""
    found: dict[int, BaseBackgroundCallbackManager] = {}
    for manager in BaseBackgroundCallbackManager.managers:
        if usable(manager):
            found.setdefault(id(manager), manager)
    return list(found.values())
