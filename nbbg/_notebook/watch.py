"""The job list Dash's own managers do not keep, for the panel and ``%nbbg``.

``DiskcacheManager`` and ``CeleryManager`` know a job only by the id they
return; the panel wants every job, its state and progress. A
:class:`DashManagerWatch` wraps the manager *instance*'s methods (never the
class): ``call_job_fn`` records each job and which app started it,
``get_result`` / ``get_progress`` show the outcome and progress as the app
reads them, ``terminate_job`` a cancel; a poll of the manager's store fills
the gaps. ``restore()`` takes every wrapper off.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from dash.background_callback.managers import BaseBackgroundCallbackManager

from .._dash.dash_jobs import AppOrigin, trigger_label
from .._dash.private import progress_key, serving_app_id
from .._engine.events import EventHub
from .._engine.jobs import Job, JobFailure, JobSnapshot, JobState
from .._engine.table import HISTORY
from .patching import patch_attribute

POLL_INTERVAL = 0.25
"""Seconds between two looks at a Dash manager's jobs (each look reads its store)."""

Listener = Callable[[], None]


def _end(record: Job, state: JobState, failure: JobFailure | None = None) -> None:
    if record.state.active:
        record.state, record.failure, record.finished_at = state, failure, time.time()


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


class DashManagerWatch:
    """Keeps the job list a Dash manager does not keep, from its own calls and a poll.

    ``get_result`` and ``get_progress`` are seen as the app reads them;
    ``terminate_job`` of an active job (the app's cancel or re-fire, or the
    panel) marks it cancelled, except the call Dash makes for a job whose
    result it has just read.
    """

    def __init__(self, manager: BaseBackgroundCallbackManager) -> None:
        self.manager = manager
        self._lock = threading.RLock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._reading = threading.local()
        self._last_poll = 0.0
        self._changed: EventHub[None] = EventHub()
        self._undo = contextlib.ExitStack()
        self._wrap("call_job_fn", self._calling_job_fn)
        self._wrap("get_result", self._getting_result)
        self._wrap("get_progress", self._getting_progress)
        self._wrap("terminate_job", self._terminating)

    # ------------------------------------------------------------ wrapping
    def _wrap(
        self, name: str, make_wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]
    ) -> None:
        original = getattr(self.manager, name)
        self._undo.callback(patch_attribute(self.manager, name, make_wrapper(original)))

    def restore(self) -> None:
        """Take every wrapper off the manager."""
        self._undo.close()

    def _calling_job_fn(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def call_job_fn(key: str, job_fn: Any, args: Any, context: Any) -> Any:
            job = original(key, job_fn, args, context)
            if job is not None:
                self._record(str(job), key, job_fn, context)
            return job

        return call_job_fn

    def _record(self, job_id: str, key: str, job_fn: Any, context: Any) -> None:
        name, origin = _callback_name(self.manager, job_fn), AppOrigin(serving_app_id())
        with self._lock:
            self._jobs[job_id] = Job(
                job_id,
                name,
                trigger_label(context),
                key,
                origin=origin,
                state=JobState.RUNNING,
                started_at=time.time(),
                worker_pid=int(job_id) if job_id.isdigit() else None,  # DiskcacheManager's ids
            )
            finished = [j for j in self._jobs.values() if not j.state.active]
            for job in finished[: max(0, len(finished) - HISTORY)]:
                del self._jobs[job.id]
        self.notify()

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
                    _end(record, JobState.ERROR if failure else JobState.DONE, failure)
            self.notify()
            return value

        return get_result

    def _getting_progress(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def get_progress(key: str) -> Any:
            value = original(key)
            if value is not None:
                with self._lock:
                    for record in self._jobs.values():
                        if record.result_key == key and record.state.active:
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
                        _end(record, JobState.CANCELLED)
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

    def _look_at(self, record: Job) -> None:
        manager = self.manager
        progress = _peek(manager, progress_key(manager, record.result_key))
        if progress is not None:
            record.progress = progress
        try:
            running = bool(manager.job_running(record.id))
            ready = not running and bool(manager.result_ready(record.result_key))
        except Exception:  # noqa: BLE001 - the store or broker is unreachable: look again later
            return
        if running:
            return
        if ready:
            failure = _error_of(_peek(manager, record.result_key))
            _end(record, JobState.ERROR if failure else JobState.DONE, failure)
        else:
            _end(
                record,
                JobState.ERROR,
                JobFailure(
                    "the job's process ended without a result (killed from outside or crashed)"
                ),
            )

    # ------------------------------------------------------------ listeners
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        return self._changed.subscribe(lambda _nothing: listener())

    def notify(self) -> None:
        self._changed.publish([None])
