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

import functools
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from bench.floor import DictManager, run_callback


class FloorFunction:
    """What ``make_job_fn`` returns: the callback and whether it takes progress.

    Pickled at its first job, not here: Dash hands a new manager every background
    callback registered in the process so far, some of which may not pickle.
    """

    def __init__(self, fn: Callable[..., Any], progress: bool) -> None:
        self.fn = fn
        self.progress = progress

    @functools.cached_property
    def payload(self) -> bytes:
        return bytes(cloudpickle.dumps((self.fn, self.progress)))


class _Worker:
    def __init__(self, process: Any, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.known: set[int] = set()  # ids of the functions it has been sent


Waiting = tuple[str, str, FloorFunction, Any, Any]
"""A job no worker was free for: job id, cache key, function, args, context."""


class ProcessFloorManager(DictManager):
    """Dash's manager contract over pipes to warm worker processes, and nothing more."""

    def __init__(self, max_workers: int | None = None) -> None:
        super().__init__()
        self._waiting: deque[Waiting] = deque()
        self._free: list[_Worker] = []
        self._workers: list[_Worker] = []
        context = multiprocessing.get_context("fork")
        ends: list[Connection] = []  # the server's ends, each inherited by later forks
        for index in range(max_workers or os.cpu_count() or 1):
            ours, theirs = context.Pipe()
            ends.append(ours)
            process = context.Process(target=_serve, args=(theirs, list(ends)), daemon=True)
            process.start()
            theirs.close()
            worker = _Worker(process, ours)
            self._workers.append(worker)
            self._free.append(worker)
            threading.Thread(
                target=self._read, args=(worker,), name=f"pfloor-read-{index}", daemon=True
            ).start()

    def make_job_fn(
        self, fn: Callable[..., Any], progress: Any, key: str | None = None
    ) -> FloorFunction:
        return FloorFunction(fn, bool(progress))

    def call_job_fn(self, key: str, job_fn: FloorFunction, args: Any, context: Any) -> str:
        job = self._new_job(key)
        with self._lock:
            worker = self._free.pop() if self._free else None
            if worker is None:
                self._waiting.append((job, key, job_fn, args, context))
                return job
        self._send(worker, (job, key, job_fn, args, context))
        return job

    def _send(self, worker: _Worker, waiting: Waiting) -> None:
        job, key, job_fn, args, context = waiting
        fn_id = id(job_fn)
        payload = None if fn_id in worker.known else job_fn.payload
        worker.known.add(fn_id)
        worker.conn.send((job, key, fn_id, payload, args, dict(context or {})))

    def _read(self, worker: _Worker) -> None:
        """One worker's messages: progress, props, and its job's outcome (then the next job)."""
        while True:
            try:
                kind, job, key, value = worker.conn.recv()
            except (EOFError, OSError):
                return
            if kind == "progress":
                self._keep_progress(key, value)
            elif kind == "props":
                self._merge_props(key, *value)
            else:
                self._keep_result(job, key, value)
                with self._lock:
                    following = self._waiting.popleft() if self._waiting else None
                    if following is None:
                        self._free.append(worker)
                if following is not None:
                    self._send(worker, following)

    def shutdown(self) -> None:
        for worker in self._workers:
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

        def keep_progress(values: list[Any], job: str = job, key: str = key) -> None:
            conn.send(("progress", job, key, values))

        def set_props(
            component_id: str, props: dict[str, Any], job: str = job, key: str = key
        ) -> None:
            conn.send(("props", job, key, (component_id, props)))

        outcome = run_callback(fn, has_progress, args, context, keep_progress, set_props)
        conn.send(("result", job, key, outcome))
