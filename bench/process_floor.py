"""The process floor: the least a manager that runs jobs in other processes can do.

Not a product and not for apps. The thread floor (``floor.py``) tells what
Dash's HTTP protocol alone costs; this one adds only what crossing a process
boundary costs, and nothing else: one warm worker process per core, one pipe
to each, one kernel thread per pipe reading the outcomes, results in dicts.
Whatever nbbg costs beyond this is its own features (a job table and its
events, the panel, the history, results in a store that outlives the kernel,
the kernel's current state sent to the worker, captured output, memory and
CPU per job), not the process boundary. The benchmark reports it beside the
thread floor so that the difference between the two floors is visible.

What it gives up: no cancel (``terminate_job`` only forgets the job, as on the
thread floor), a job's error crashes nothing but is reported only as text, a
worker that dies is not replaced, and workers are forked (the jobs' functions
are sent once per worker with cloudpickle, as nbbg does).

::

    request thread: call_job_fn ──pipe──► worker process (serves jobs one at a time)
    reader thread (one per worker) ◄──pipe── outcome, progress, set_props
    request thread: get_progress / get_updated_props / get_result ◄── dicts under one lock
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
import traceback
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle
from dash._callback_context import context_value
from dash._utils import AttributeDict
from dash.background_callback._proxy_set_props import ProxySetProps
from dash.background_callback.managers import BaseBackgroundCallbackManager
from dash.exceptions import PreventUpdate


class FloorFunction:
    """What ``make_job_fn`` returns: the callback and whether it takes ``set_progress``."""

    def __init__(self, fn: Callable[..., Any], progress: bool) -> None:
        self.fn = fn
        self.progress = progress
        self.payload = cloudpickle.dumps((fn, progress))


class _Worker:
    def __init__(self, index: int, process: Any, conn: Connection) -> None:
        self.index = index
        self.process = process
        self.conn = conn
        self.known: set[int] = set()  # ids of the functions it has been sent


class ProcessFloorManager(BaseBackgroundCallbackManager):
    """Dash's manager contract over pipes to warm worker processes, and nothing more."""

    def __init__(self, max_workers: int | None = None) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._results: dict[str, Any] = {}
        self._progress: dict[str, list[Any]] = {}
        self._props: dict[str, dict[str, Any]] = {}
        self._undelivered: dict[str, str] = {}
        self._waiting: deque[tuple[str, str, FloorFunction, Any, Any]] = deque()
        self._free: list[_Worker] = []
        self._secret: bytes | None = None
        context = multiprocessing.get_context("fork")
        ends: list[Connection] = []  # the server's ends, each inherited by later forks
        for index in range(max_workers or os.cpu_count() or 1):
            ours, theirs = context.Pipe()
            ends.append(ours)
            process = context.Process(target=_serve, args=(theirs, list(ends)), daemon=True)
            process.start()
            theirs.close()
            worker = _Worker(index, process, ours)
            self._free.append(worker)
            threading.Thread(
                target=self._read, args=(worker,), name=f"pfloor-read-{index}", daemon=True
            ).start()
        super().__init__(cache_by=None)  # type: ignore[no-untyped-call]

    # -------------------------------------------------------- job side
    def make_job_fn(
        self, fn: Callable[..., Any], progress: Any, key: str | None = None
    ) -> FloorFunction:
        return FloorFunction(fn, bool(progress))

    def call_job_fn(self, key: str, job_fn: FloorFunction, args: Any, context: Any) -> str:
        job = str(next(self._ids))
        with self._lock:
            self._results.pop(key, None)
            self._undelivered[job] = key
            worker = self._free.pop() if self._free else None
            if worker is None:
                self._waiting.append((job, key, job_fn, args, context))
                return job
        self._send(worker, job, key, job_fn, args, context)
        return job

    def _send(
        self, worker: _Worker, job: str, key: str, job_fn: FloorFunction, args: Any, context: Any
    ) -> None:
        fn_id = id(job_fn)
        payload = None if fn_id in worker.known else job_fn.payload
        worker.known.add(fn_id)
        worker.conn.send((job, key, fn_id, payload, args, dict(context or {})))

    def _read(self, worker: _Worker) -> None:
        while True:
            try:
                kind, job, key, value = worker.conn.recv()
            except (EOFError, OSError):
                return
            if kind == "progress":
                with self._lock:
                    self._progress[key] = value
                continue
            if kind == "props":
                with self._lock:
                    pending = self._props.setdefault(key, {})
                    for component_id, props in value.items():
                        pending[component_id] = {**pending.get(component_id, {}), **props}
                continue
            with self._lock:
                if self._undelivered.get(job) == key:
                    self._results[key] = value
                following = self._waiting.popleft() if self._waiting else None
                if following is None:
                    self._free.append(worker)
            if following is not None:
                self._send(worker, *following)

    # -------------------------------------------------------- request side
    def job_running(self, job: Any) -> bool:
        with self._lock:
            return str(job) in self._undelivered

    def terminate_job(self, job: Any) -> None:
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

    def shutdown(self) -> None:
        with self._lock:
            workers = list(self._free)
        for worker in workers:
            worker.process.kill()


def _serve(conn: Connection, server_ends: list[Connection]) -> None:
    """A worker: run the jobs that come down the pipe, one at a time, until it closes.

    The fork gave it copies of the server's pipe ends, its own among them: closed
    first, so that the server's exit ends the pipe and with it this process.
    """
    for end in server_ends:
        end.close()
    functions: dict[int, tuple[Callable[..., Any], bool]] = {}
    while True:
        try:
            job, key, fn_id, payload, args, context = conn.recv()
        except (EOFError, OSError):
            return
        if payload is not None:
            functions[fn_id] = cloudpickle.loads(payload)
        fn, has_progress = functions[fn_id]
        conn.send(("result", job, key, _run(conn, job, key, fn, has_progress, args, context)))


def _run(
    conn: Connection,
    job: str,
    key: str,
    fn: Callable[..., Any],
    has_progress: bool,
    args: Any,
    context: dict[str, Any],
) -> Any:
    def set_progress(value: Any) -> None:
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        conn.send(("progress", job, key, values))

    def set_props(component_id: str, props: dict[str, Any]) -> None:
        conn.send(("props", job, key, {component_id: props}))

    callback_context = AttributeDict(**context)
    callback_context.ignore_register_page = False
    callback_context.updated_props = ProxySetProps(set_props)  # type: ignore[no-untyped-call]
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
