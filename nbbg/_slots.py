"""One slot = one single-worker loky executor that can be killed and replaced.

loky cannot cancel a running task, and killing a worker of a shared pool
fails every future of that pool. With one executor per slot, cancelling a job
kills only its own worker; a fresh executor (prewarmed) takes the slot.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import OrderedDict
from concurrent.futures import Future
from multiprocessing import resource_tracker
from typing import Any

from loky import ProcessPoolExecutor

from . import _worker
from ._object_cache import ObjectCache


class Slot:
    def __init__(
        self, index: int, initargs: tuple[Any, ...], warm_up_args: tuple[Any, ...]
    ) -> None:
        self.index = index
        self._initargs = initargs
        self._warm_up_args = warm_up_args
        self.generation = 0
        self.job_id: str | None = None
        self.retiring = False
        self.needs_restart = False
        self.shipped_tokens: OrderedDict[int, None] = OrderedDict()
        self.objects: ObjectCache[None] = ObjectCache()  # mirror of the worker's objects
        self.environ_token = 0  # the kernel environment the worker holds
        self._warming: Future[Any] | None = None
        self.executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        executor = ProcessPoolExecutor(
            max_workers=1, initializer=_worker.initialize, initargs=self._initargs
        )
        # The first submit spawns the worker (fork + exec) from this thread.
        # Spawn it with SIGINT blocked, so an "interrupt kernel" that reaches
        # the process group before the initializer ignores SIGINT cannot kill it.
        # Start multiprocessing's resource tracker first: the spawn needs it, and
        # starting it unblocks SIGINT in this thread, undoing the mask.
        resource_tracker.ensure_running()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self._warming = executor.submit(_worker.warm_up, *self._warm_up_args)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return executor

    @property
    def busy(self) -> bool:
        return self.job_id is not None

    def wait_warm(self, timeout: float) -> bool:
        """Block until the worker is warm (or ``timeout`` s pass); True if it is."""
        if self._warming is None:
            return False
        try:
            self._warming.result(timeout)
        except Exception:  # noqa: BLE001 - a worker that failed to start shows up at its first job
            return False
        return True

    @property
    def warm(self) -> bool:
        """Whether the worker has started and imported what jobs need."""
        return self._warming is not None and self._warming.done()

    def worker_pid(self) -> int | None:
        # loky keeps its workers in ``_processes`` (pid -> process).
        pids = list(getattr(self.executor, "_processes", {}))
        return pids[0] if pids else None

    def remember_shipped(self, token: int) -> bool:
        """Record that the worker now holds ``token``; True if it already did.

        Mirrors the worker's LRU cache (same size, same order of use), so the
        kernel knows when it must send the function's payload again.
        """
        known = token in self.shipped_tokens
        self.shipped_tokens[token] = None
        self.shipped_tokens.move_to_end(token)
        while len(self.shipped_tokens) > _worker.FUNCTION_CACHE_SIZE:
            self.shipped_tokens.popitem(last=False)
        return known

    def replace_worker(self) -> int | None:
        """Kill the worker (SIGKILL) and start a fresh one; return the old pid."""
        old_executor, old_pid = self.executor, self.worker_pid()
        if old_pid is not None:
            try:
                os.kill(old_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.generation += 1
        self.job_id = None
        self.needs_restart = False
        self.shipped_tokens.clear()
        self.objects.clear()
        self.environ_token = 0
        self.executor = self._new_executor()
        _shutdown_in_background(old_executor)
        return old_pid

    def close(self) -> int | None:
        """Kill the worker for good; return its pid."""
        pid = self.worker_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.generation += 1
        self.job_id = None
        _shutdown_in_background(self.executor)
        return pid


def _shutdown_in_background(executor: ProcessPoolExecutor) -> None:
    # loky's shutdown joins its manager thread; never make the caller wait.
    threading.Thread(
        target=executor.shutdown,
        kwargs={"wait": True, "kill_workers": True},
        name="nbbg-retire-worker",
        daemon=True,
    ).start()
