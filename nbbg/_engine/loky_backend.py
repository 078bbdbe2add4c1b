"""The loky backend: one single-worker loky executor per slot, on this machine.

loky cannot cancel a running task, and killing a worker of a shared pool
fails every future of that pool. With one executor per slot, cancelling a job
kills only its own worker; a fresh executor (prewarmed) takes the slot.
Starting one (fork + exec, 10-20 ms) happens off the engine's lock.

loky starts the worker, runs ``worker.initialize`` and ``worker.warm_up`` in
it, and tells us when it dies. Jobs do not go through loky's task queue: that
costs two kernel threads (loky's manager and queue feeder) per job each way,
~0.2 ms of a no-op's ~1 ms round trip and CPU the kernel's requests need
(bench/RESULTS.md). Once warm, the worker runs ``worker.serve_jobs`` as one
long loky task, and each job is one write of its pickled spec to the worker's
socket (``channel``) and one ``OUTCOME`` report back on the thread that reads
the worker's reports. A small result comes back in that report and the
kernel stores it (``write_behind``); a large one the worker writes itself.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import cloudpickle
import diskcache
from loky import ProcessPoolExecutor
from loky.process_executor import ShutdownExecutorError

from . import worker
from .backend import OnReport
from .channel import ProgressListener, Report, ReportKind
from .platform import kill_process, lower_priority, sigint_blocked, worker_nice
from .store import Store
from .worker import JobSpec, WorkerOutcome

KeepResult = Callable[[str, bytes, "float | None"], None]
"""Stores a result that came back with its job's outcome: key, pickled value, expiry."""

SEND_INLINE_LIMIT = 32 * 1024
"""Bytes of a pickled job written from the dispatching thread; larger ones from a thread.

Below a socket's buffer (~200 KiB for AF_UNIX) a write never blocks while the
worker holds at most one job, so the engine's lock is never held on a write
that waits for a worker still importing modules.
"""


class WorkerArgs(NamedTuple):
    """What ``worker.initialize`` takes besides the worker's token."""

    owner_pid: int
    channel_address: Any
    authkey: bytes
    nice: int


class LokyWorker:
    """A single-worker executor, the future of its warm-up, and its socket once it says hello."""

    keeps_state = True

    warming: Future[Any]

    def __init__(self, initargs: WorkerArgs, token: str, keep_result: KeepResult) -> None:
        self.token = token
        self._keep_result = keep_result
        self._nice = initargs.nice
        self.executor = ProcessPoolExecutor(
            max_workers=1, initializer=worker.initialize, initargs=(*initargs, token)
        )
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._unsent: bytes | None = None  # a job written before the worker said hello
        self._pending: Future[WorkerOutcome] | None = None
        self._pending_result: tuple[str, float | None] = ("", None)  # its result's key, expiry
        # At interpreter exit loky's hook waits for every running task, and
        # ``serve_jobs`` never ends: a kernel would hang on exit. This flag
        # (what ``shutdown(kill_workers=True)`` sets) makes loky kill the worker then.
        self.executor._flags.kill_workers = True

    def start(self, warm_up_args: tuple[Any, ...]) -> None:
        """Spawn the worker, warm it up, then let it serve jobs from its socket."""
        # The first submit spawns the worker (fork + exec) from this thread.
        # Spawn it with SIGINT blocked, so an "interrupt kernel" that reaches
        # the process group before the initializer ignores SIGINT cannot kill it.
        with sigint_blocked():
            self.warming = self.executor.submit(worker.warm_up, *warm_up_args)
        pid = self.pid()
        if pid is not None:  # from its first instruction: see ``platform.lower_priority``
            lower_priority(self._nice, pid)
        serving = self.executor.submit(worker.serve_jobs)
        serving.add_done_callback(self._stopped_serving)

    def submit(self, spec: JobSpec) -> Future[WorkerOutcome]:
        future: Future[WorkerOutcome] = Future()
        future.set_running_or_notify_cancel()
        data = _pickle_spec(spec)
        with self._lock:
            self._pending = future
            self._pending_result = (spec.result_key, spec.expire)
            conn = self._conn
            if conn is None:
                self._unsent = data  # written when the worker says hello
                return future
        _write(conn, data)
        return future

    def connected(self, conn: Connection) -> None:
        """The worker said hello on ``conn``: write the job that waited for it, if any."""
        with self._lock:
            self._conn = conn
            data, self._unsent = self._unsent, None
        if data is not None:
            _write(conn, data)

    def finished(self, outcome: WorkerOutcome, result: bytes | None) -> None:
        """The worker reported how its job ended (on the thread reading its reports),
        with the pickled result when it is the kernel's to store."""
        with self._lock:
            future, self._pending = self._pending, None
            key, expire = self._pending_result
        if future is None or future.done():
            return  # killed meanwhile: nobody reads the result
        if result is not None:  # stored before the job can be seen done
            self._keep_result(key, result, expire)
        future.set_result(outcome)

    def _stopped_serving(self, serving: Future[Any]) -> None:
        # Only the worker's death or the executor's shutdown ends serve_jobs. A
        # shutdown is ours (``kill``: the engine has moved on) or the interpreter
        # exiting: neither is news to the job, and replacing the worker then fails.
        exc = serving.exception()
        if isinstance(exc, ShutdownExecutorError):
            return
        with self._lock:
            future, self._pending = self._pending, None
        if future is None or future.done():
            return
        future.set_exception(exc or RuntimeError("the worker stopped serving jobs"))

    def pid(self) -> int | None:
        # loky keeps its workers in ``_processes`` (pid -> process).
        pids = list(getattr(self.executor, "_processes", {}))
        return pids[0] if pids else None

    def node(self) -> str | None:
        return None

    def kill(self) -> int | None:
        pid = self.pid()
        if pid is not None:
            kill_process(pid)
        # Not waiting: loky's manager thread sees the worker gone and cleans up.
        self.executor.shutdown(wait=False, kill_workers=True)
        return pid


class LokyBackend:
    """Workers on this machine; their reports and outcomes through a ``ProgressListener``."""

    def __init__(
        self, on_report: OnReport, warm_modules: tuple[str, ...], store: diskcache.Cache
    ) -> None:
        self._on_report = on_report
        # A slot drops its worker when it is killed; so does this map.
        self._workers: weakref.WeakValueDictionary[str, LokyWorker] = weakref.WeakValueDictionary()
        self._workers_lock = threading.Lock()
        self._listener = ProgressListener(self._take_report, self._hello)
        self._initargs = WorkerArgs(
            os.getpid(), self._listener.address, self._listener.authkey, worker_nice()
        )
        self._warm_up_args = (warm_modules, store.directory)
        self._store = store
        # Results diskcache keeps as rows of its database come back to be stored in
        # batches; a user's own diskcache.Cache cannot wait for them: its workers write.
        self.result_inline_limit = store.disk_min_file_size - 1 if isinstance(store, Store) else 0

    @property
    def listener_address(self) -> Any:
        return self._listener.address

    def start_worker(self) -> LokyWorker:
        started = LokyWorker(self._initargs, uuid.uuid4().hex, self._keep_result)
        with self._workers_lock:  # before it can say hello
            self._workers[started.token] = started
        started.start(self._warm_up_args)
        return started

    def close(self) -> None:
        self._listener.close()

    def _keep_result(self, key: str, data: bytes, expire: float | None) -> None:
        assert isinstance(self._store, Store)
        self._store.set_later(key, data, expire, "nbbg")

    def _hello(self, token: str, conn: Connection) -> None:
        with self._workers_lock:
            found = self._workers.get(token)
        if found is not None:
            found.connected(conn)

    def _take_report(self, report: Report) -> None:
        if report.kind is not ReportKind.OUTCOME:
            self._on_report(report)
            return
        token, outcome, result = report.payload
        with self._workers_lock:
            found = self._workers.get(token)
        if found is not None:
            found.finished(outcome, result)


def _pickle_spec(spec: JobSpec) -> bytes:
    """The C pickler: a spec is plain data (the job's own objects are bytes in it already).

    cloudpickle took ~25 µs of a ~170 µs submit for it; it stays the fallback for
    a runner the C pickler cannot send by reference (a lambda, one of ``__main__``).
    """
    data: bytes | None = None
    with contextlib.suppress(Exception):  # whatever cloudpickle can send by value
        data = pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL)
    if data is None or b"__main__" in data:
        data = bytes(cloudpickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL))
    return data


def _write(conn: Connection, data: bytes) -> None:
    """Write a pickled job to its worker; a large one from a thread of its own."""
    if len(data) <= SEND_INLINE_LIMIT:
        _send_quietly(conn, data)
        return
    threading.Thread(
        target=_send_quietly, args=(conn, data), name="nbbg-send-job", daemon=True
    ).start()


def _send_quietly(conn: Connection, data: bytes) -> None:
    # A worker killed meanwhile: its death fails the job (``_stopped_serving``).
    with contextlib.suppress(OSError):
        conn.send_bytes(data)
