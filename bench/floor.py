"""The floor: a background-callback manager that runs jobs on threads in the server.

Not a product and not for apps. It exists so the benchmark can tell what
Dash's HTTP protocol alone costs on this machine: a job is a function call on
a thread of the server process, its result and progress are plain dict
entries, nothing is pickled, nothing crosses a process boundary. No manager
can answer a background callback faster than this, so nbbg's turnaround and
throughput are reported as ratios to it, measured in the same run.

What it gives up to be the floor: a running job cannot be cancelled (Python
threads cannot be killed; ``terminate_job`` only stops reporting the job, it
runs to its end and its result is dropped), a CPU-bound job holds the GIL
that the server's request threads need, and a crash of the job is a crash of
the server. The benchmark therefore runs no cancel metrics on it.

::

    request thread: call_job_fn ──submit──► thread pool (nproc threads, as many as
                                             the other managers' workers)
    job thread:     set_progress / set_props / result ──► dicts under one lock
    request thread: get_progress / get_updated_props / get_result ◄── the same dicts
"""

from __future__ import annotations

import itertools
import os
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import Context
from typing import Any

from dash._callback_context import context_value
from dash._utils import AttributeDict
from dash.background_callback._proxy_set_props import ProxySetProps
from dash.background_callback.managers import BaseBackgroundCallbackManager
from dash.exceptions import PreventUpdate

JobFn = Callable[[str, str, Any, Any], None]


class DictManager(BaseBackgroundCallbackManager):
    """Dash's request side over dicts under one lock: what both floors share.

    A job's outcome is kept (``_keep_result``) only while it is undelivered;
    progress is the latest value, ``set_props`` updates are merged between two
    polls, as a browser expects.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._results: dict[str, Any] = {}
        self._progress: dict[str, list[Any]] = {}
        self._props: dict[str, dict[str, Any]] = {}
        self._undelivered: dict[str, str] = {}
        """job id -> cache key, from submit until ``get_result`` hands the outcome over."""
        self._secret: bytes | None = None
        super().__init__(cache_by=None)  # type: ignore[no-untyped-call]

    # -------------------------------------------------------- job side
    def _new_job(self, key: str) -> str:
        job = str(next(self._ids))
        with self._lock:
            self._results.pop(key, None)
            self._undelivered[job] = key
        return job

    def _keep_progress(self, key: str, values: list[Any]) -> None:
        with self._lock:
            self._progress[key] = values

    def _merge_props(self, key: str, component_id: str, props: dict[str, Any]) -> None:
        with self._lock:
            pending = self._props.setdefault(key, {})
            pending[component_id] = {**pending.get(component_id, {}), **props}

    def _keep_result(self, job: str, key: str, outcome: Any) -> None:
        with self._lock:
            if self._undelivered.get(job) == key:  # else terminated: nobody reads it
                self._results[key] = outcome

    # -------------------------------------------------------- request side
    def job_running(self, job: Any) -> bool:
        # True until the outcome is handed over, so a job ending between Dash's
        # get_result and job_running in one poll is not taken for a cancel (204).
        with self._lock:
            return str(job) in self._undelivered

    def terminate_job(self, job: Any) -> None:
        # Neither floor can stop a job: it is forgotten; it runs on, its result unread.
        with self._lock:
            self._undelivered.pop(str(job), None)

    def terminate_unhealthy_job(self, job: Any) -> bool:
        return False

    def get_progress(self, key: str) -> list[Any] | None:
        with self._lock:
            return self._progress.pop(key, None)

    def result_ready(self, key: str) -> bool:
        with self._lock:
            return key in self._results

    def get_result(self, key: str, job: Any) -> Any:
        with self._lock:
            if key not in self._results:
                return self.UNDEFINED
            self._progress.pop(key, None)
            if job is not None:
                self._undelivered.pop(str(job), None)
            return self._results.pop(key)

    def get_updated_props(self, key: str) -> dict[str, Any]:
        with self._lock:
            return self._props.pop(key, {})

    def get_or_create_signing_secret(self, generate: Callable[[], bytes]) -> bytes:
        with self._lock:
            if self._secret is None:
                self._secret = generate()
            return self._secret

    def clear_cache_entry(self, key: str) -> None:
        with self._lock:
            self._results.pop(key, None)


class ThreadFloorManager(DictManager):
    """Dash's manager contract with the least work behind it: threads and dicts."""

    def __init__(self, max_workers: int | None = None) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=max_workers or os.cpu_count() or 1, thread_name_prefix="floor-job"
        )
        super().__init__()

    def make_job_fn(self, fn: Callable[..., Any], progress: Any, key: str | None = None) -> JobFn:
        def job_fn(cache_key: str, job: str, args: Any, context: Any) -> None:
            def keep_progress(values: list[Any]) -> None:
                self._keep_progress(cache_key, values)

            def set_props(component_id: str, props: dict[str, Any]) -> None:
                self._merge_props(cache_key, component_id, props)

            self._keep_result(
                job, cache_key, run_callback(fn, progress, args, context, keep_progress, set_props)
            )

        return job_fn

    def call_job_fn(self, key: str, job_fn: JobFn, args: Any, context: Any) -> str:
        job = self._new_job(key)
        # An empty context per job: it sets the callback context (a context variable) itself.
        self._pool.submit(Context().run, job_fn, key, job, args, context)
        return job

    def shutdown(self) -> None:
        """Stop taking jobs; running ones finish on their own (threads cannot be stopped)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def run_callback(
    fn: Callable[..., Any],
    has_progress: bool,
    args: Any,
    context: Any,
    keep_progress: Callable[[list[Any]], None],
    set_props: Callable[[str, dict[str, Any]], None],
) -> Any:
    """Call ``fn`` as Dash's managers do: callback context, ``set_progress``, errors as results.

    ``keep_progress`` gets each progress value as the list Dash sends to the browser.
    """

    def set_progress(value: Any) -> None:
        keep_progress(list(value) if isinstance(value, (list, tuple)) else [value])

    callback_context = AttributeDict(**(context or {}))
    callback_context.ignore_register_page = False
    callback_context.updated_props = ProxySetProps(set_props)
    context_value.set(callback_context)
    leading = [set_progress] if has_progress else []
    try:
        if isinstance(args, dict):
            return fn(*leading, **args)
        if isinstance(args, (list, tuple)):
            return fn(*leading, *args)
        return fn(*leading, args)
    except PreventUpdate:
        return {"_dash_no_update": "_dash_no_update"}
    except Exception as exc:  # noqa: BLE001 - Dash shows it in the browser
        return {"background_callback_error": {"msg": str(exc), "tb": traceback.format_exc()}}
