"""Shared by the reliability tests: a Dash server in a thread, handles, process counts.

::

    test threads ── nbbg.client.DashClient (the renderer's requests) ──HTTP──►
        werkzeug server thread on 127.0.0.1 (as ``app.run`` in a notebook) ──► LokyManager
                                                                                 └─ loky workers

The server runs in the test process, like the inline server of a notebook
kernel, so a test can compare what the browser saw with the jobs API.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from jupyter_client.manager import start_new_kernel
from werkzeug.serving import WSGIRequestHandler, make_server

from nbbg.client import DashClient, JobResult, output_value

__all__ = ["DashClient"]  # re-exported: the renderer-protocol client the tests use

LOKY_WORKER_MARK = "loky.backend.popen_loky_posix"


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass  # thousands of requests: no log line each


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve a Dash ``app`` on 127.0.0.1 from a thread (threaded werkzeug); yield its URL."""
    server = make_server("127.0.0.1", 0, app.server, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def engine_id(signed_job: str) -> str:
    """The manager's job id inside Dash's signed ``job`` handle (``<id>~<hmac>``)."""
    return signed_job.rpartition("~")[0]


def error_text(err: Exception) -> str:
    """An ``on_error`` handler: the app shows the error in the callback's output."""
    return f"error: {err}"


def shown(result: JobResult, output_id: str = "out") -> Any:
    """What a finished poll put in ``output_id.children``."""
    return output_value(result, output_id)


def loky_workers() -> set[int]:
    """Live loky worker processes started by this test process (any manager)."""
    found = set()
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            if LOKY_WORKER_MARK in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.Error:
            continue
    return found


def run_in_threads(
    count: int, target: Callable[[int], None], timeout: float
) -> list[BaseException]:
    """Run ``target(k)`` for k in range(count) on threads; return what they raised."""
    errors: list[BaseException] = []

    def guarded(k: int) -> None:
        try:
            target(k)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(k,), daemon=True) for k in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(thread.is_alive() for thread in threads)
    if stuck:
        errors.append(TimeoutError(f"{stuck} client threads still running after {timeout} s"))
    return errors


class Kernel:
    """A real ipykernel (``jupyter_client``), its process and a way to run cells."""

    def __init__(self, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
        env["XDG_CACHE_HOME"] = str(cwd / "xdg-cache")  # a private default nbbg store
        self.km, self.kc = start_new_kernel(
            kernel_name="python3", cwd=str(cwd), env=env, startup_timeout=120
        )

    @property
    def pid(self) -> int:
        return int(self.km.provisioner.pid)  # type: ignore[union-attr]

    def run(self, code: str, timeout: float = 120) -> str:
        """Run a cell that must succeed; return what it printed."""
        printed: list[str] = []
        failure: list[dict[str, Any]] = []

        def collect(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                printed.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                failure.append(msg["content"])

        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=collect)
        if reply["content"]["status"] != "ok" or failure:
            trace = "\n".join((failure or [reply["content"]])[0].get("traceback", []))
            raise AssertionError(f"cell failed:\n{code}\n{trace}")
        return "".join(printed)

    def start(self, code: str) -> str:
        """Start a cell without waiting for it; return its message id."""
        return str(self.kc.execute(code))

    def reply(self, msg_id: str, timeout: float) -> dict[str, Any]:
        """The shell reply to the cell ``msg_id`` (skipping older replies)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no reply to {msg_id} within {timeout} s")
            try:
                msg = self.kc.get_shell_msg(timeout=remaining)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return dict(msg["content"])

    def descendants(self) -> dict[int, float]:
        """Live processes under the kernel: pid -> creation time."""
        found = {}
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return {}
        for child in children:
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    found[child.pid] = child.create_time()
            except psutil.Error:
                continue
        return found

    def workers(self) -> set[int]:
        """nbbg's loky workers among the kernel's processes."""
        found = set()
        for pid in self.descendants():
            try:
                if LOKY_WORKER_MARK in " ".join(psutil.Process(pid).cmdline()):
                    found.add(pid)
            except psutil.Error:
                continue
        return found

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@contextmanager
def kernel(cwd: Path) -> Iterator[Kernel]:
    session = Kernel(cwd)
    try:
        yield session
    finally:
        session.close()


def still_running(processes: dict[int, float]) -> list[int]:
    """Those of ``processes`` (pid -> creation time) that are alive and not zombies."""
    alive = []
    for pid, created in processes.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def kill_leftovers(processes: dict[int, float]) -> None:
    """SIGKILL those of ``processes`` this test started that are still alive."""
    for pid in still_running(processes):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
