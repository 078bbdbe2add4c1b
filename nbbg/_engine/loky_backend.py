"""The loky backend: one single-worker loky executor per slot, on this machine.

loky cannot cancel a running task, and killing a worker of a shared pool
fails every future of that pool. With one executor per slot, cancelling a job
kills only its own worker; a fresh executor (prewarmed) takes the slot.
Starting one (fork + exec, 10-20 ms) happens off the engine's lock. Reports
come back through one socket per worker (``channel``).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from typing import Any

import diskcache
from loky import ProcessPoolExecutor

from . import worker
from .backend import OnReport
from .channel import ProgressListener
from .platform import kill_process, sigint_blocked
from .worker import JobSpec, WorkerOutcome


class LokyWorker:
    """A single-worker executor and the future of its warm-up."""

    keeps_state = True

    def __init__(self, initargs: tuple[Any, ...], warm_up_args: tuple[Any, ...]) -> None:
        self.executor = ProcessPoolExecutor(
            max_workers=1, initializer=worker.initialize, initargs=initargs
        )
        # The first submit spawns the worker (fork + exec) from this thread.
        # Spawn it with SIGINT blocked, so an "interrupt kernel" that reaches
        # the process group before the initializer ignores SIGINT cannot kill it.
        with sigint_blocked():
            self.warming: Future[Any] = self.executor.submit(worker.warm_up, *warm_up_args)

    def submit(self, spec: JobSpec) -> Future[WorkerOutcome]:
        future: Future[WorkerOutcome] = self.executor.submit(worker.run_job, spec)
        return future

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
        _shutdown_in_background(self.executor)
        return pid


class LokyBackend:
    """Workers on this machine; reports through a ``ProgressListener``."""

    def __init__(
        self, on_report: OnReport, warm_modules: tuple[str, ...], store: diskcache.Cache
    ) -> None:
        self._listener = ProgressListener(on_report)
        self._initargs = (os.getpid(), self._listener.address, self._listener.authkey)
        self._warm_up_args = (warm_modules, store.directory)

    @property
    def listener_address(self) -> Any:
        return self._listener.address

    def start_worker(self) -> LokyWorker:
        return LokyWorker(self._initargs, self._warm_up_args)

    def close(self) -> None:
        self._listener.close()


def _shutdown_in_background(executor: ProcessPoolExecutor) -> None:
    # loky's shutdown joins its manager thread; never make the caller wait.
    threading.Thread(
        target=executor.shutdown,
        kwargs={"wait": True, "kill_workers": True},
        name="nbbg-retire-worker",
        daemon=True,
    ).start()
