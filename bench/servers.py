"""Start and stop one Dash server per manager, each in its own subprocess.

::

    bench (this process)
      ├─ python bench/apps.py        BENCH_MANAGER=<kind>, 127.0.0.1:<port> (see MANAGERS)
      │    └─ loky workers / forked job processes (floor: threads; pfloor: forked workers)
      ├─ redis-server --port <free>  (one per run, Celery only)
      └─ python -m celery -A bench.apps:celery_app worker   (Celery only, one per server)
           └─ prefork pool processes

Every process is started in its own session (a Ctrl+C in the terminal does
not reach it), stopped by PID (SIGINT, then SIGTERM, then SIGKILL), and its
descendants are recorded in a ``Ledger`` so that the ones that outlive the
stop are counted and then killed.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .procs import Ledger

REPO_ROOT = Path(__file__).resolve().parent.parent
APP_SCRIPT = REPO_ROOT / "bench" / "apps.py"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
MANAGERS = ("loky", "diskcache", "celery", "floor", "pfloor", "ray")
DEFAULT_MANAGERS = ("loky", "diskcache", "celery", "floor", "pfloor")
"""What ``python -m bench`` compares unless told otherwise: Ray (its own ~20 s start and
~700 MiB) joins with ``--managers ...,ray``; ``python -m bench.ray_rows`` has its rows."""
LABELS = {
    "loky": "LokyManager",
    "ray": "RayManager",
    "diskcache": "DiskcacheManager",
    "celery": "CeleryManager",
    "floor": "floor (threads)",
    "pfloor": "floor (processes)",
}
START_TIMEOUT = 120.0  # a local Ray takes 4-25 s to start on 2 busy cores
LEFTOVER_GRACE = 2.0
"""Seconds processes get to exit on their own after their server stopped."""


class StartError(RuntimeError):
    """A server or worker did not come up; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def celery_available() -> bool:
    return os.path.exists(REDIS_SERVER)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle: IO[bytes] = log.open("ab")
    try:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=REPO_ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        handle.close()


def _stop(process: subprocess.Popen[bytes], first: signal.Signals, patience: float) -> None:
    """Ask ``process`` to stop with ``first``; escalate to SIGTERM, then SIGKILL."""
    for sig, wait in ((first, patience), (signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            return
        try:
            process.send_signal(sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_for(
    condition_name: str, check: Callable[[], bool], process: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartError(
                f"{condition_name}: exited with {process.returncode}\n{_log_tail(log)}"
            )
        if check():
            return
        time.sleep(0.05)
    raise StartError(f"{condition_name}: not ready after {START_TIMEOUT} s\n{_log_tail(log)}")


def _http_ok(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/_dash-layout")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


@dataclass
class RedisServer:
    """A private, non-persistent redis-server on a free loopback port."""

    port: int
    process: subprocess.Popen[bytes]
    ledger: Ledger = field(default_factory=Ledger)
    next_db: int = 0

    @classmethod
    def start(cls, out_dir: Path) -> RedisServer:
        port = free_port()
        log = out_dir / f"redis-{port}.log"
        process = _spawn(
            [
                REDIS_SERVER,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--databases",
                "64",
            ],
            dict(os.environ),
            log,
        )
        server = cls(port, process)
        _wait_for("redis-server", server.ping, process, log)
        server.ledger.observe([process.pid])
        return server

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def fresh_url(self) -> str:
        """A database of its own for each server, so two workers never share a queue."""
        db, self.next_db = self.next_db, (self.next_db + 1) % 64
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> int:
        _stop(self.process, signal.SIGTERM, 5.0)
        left = len(self.ledger.wait_for_exit(LEFTOVER_GRACE))
        self.ledger.kill_survivors()
        return left


@dataclass
class Server:
    """A Dash server serving ``bench/apps.py`` with one manager."""

    kind: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes]
    log: Path
    worker: subprocess.Popen[bytes] | None = None
    ledger: Ledger = field(default_factory=Ledger)
    started: float = 0.0
    """``perf_counter()`` when the server process was launched."""
    infrastructure: list[int] = field(default_factory=list)
    """Shared services it needs (Redis): counted in its memory, stopped by their owner."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def label(self) -> str:
        return LABELS[self.kind]

    def roots(self) -> list[int]:
        """The server and, for Celery, the worker: jobs run under these."""
        pids = [self.process.pid]
        if self.worker is not None:
            pids.append(self.worker.pid)
        return pids

    def observe(self) -> None:
        self.ledger.observe(self.roots())

    def stop(self, *, crash: bool = False) -> int:
        """Stop the server (and its worker); return how many processes outlived it.

        Ctrl+C (SIGINT) by default; ``crash=True`` SIGKILLs the server as a
        crashed kernel would be, so nothing in it can clean up.
        """
        self.observe()
        _stop(self.process, signal.SIGKILL if crash else signal.SIGINT, 5.0)
        if self.worker is not None:
            _stop(self.worker, signal.SIGTERM, 10.0)
        left = len(self.ledger.wait_for_exit(LEFTOVER_GRACE))
        self.ledger.kill_survivors()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return left


def start_server(
    kind: str, out_dir: Path, *, big: bool = False, redis: RedisServer | None = None
) -> Server:
    """Launch ``bench/apps.py`` with manager ``kind`` and wait until it answers."""
    if kind not in MANAGERS:
        raise ValueError(f"manager must be one of {MANAGERS}, not {kind!r}")
    if kind == "celery" and redis is None:
        raise ValueError("CeleryManager needs a RedisServer")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"nbbg-bench-{kind}-"))
    env = dict(os.environ)
    env.update(
        BENCH_MANAGER=kind,
        BENCH_STORE=str(workdir / "store"),
        BENCH_PORT=str(port),
        BENCH_BIG="1" if big else "0",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    worker, worker_log = None, out_dir / f"celery-worker-{port}.log"
    if redis is not None and kind == "celery":
        env["BENCH_REDIS_URL"] = redis.fresh_url()
        worker = _start_celery_worker(env, worker_log)
    log = out_dir / f"server-{kind}-{port}.log"
    started = time.perf_counter()
    process = _spawn([sys.executable, str(APP_SCRIPT)], env, log)
    server = Server(kind, port, workdir, process, log, worker, started=started)
    if worker is not None and redis is not None:
        server.infrastructure.append(redis.process.pid)
    try:
        _wait_for(f"{server.label} server", lambda: _http_ok(port), process, log)
        if worker is not None:
            _wait_for(
                "celery worker", lambda: _celery_ready(env["BENCH_REDIS_URL"]), worker, worker_log
            )
    except BaseException:
        server.stop()
        raise
    server.observe()
    return server


def _start_celery_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    concurrency = str(os.cpu_count() or 1)  # as many as LokyManager's default workers
    return _spawn(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.apps:celery_app",
            "worker",
            "--pool=prefork",
            f"--concurrency={concurrency}",
            "--loglevel=WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--hostname",
            f"bench-{env['BENCH_PORT']}@%h",
        ],
        env,
        log,
    )


def _celery_ready(url: str) -> bool:
    from celery import Celery

    probe = Celery("bench_probe", broker=url, backend=url)
    try:
        return bool(probe.control.ping(timeout=0.3))
    except Exception:  # noqa: BLE001 - the broker may not answer yet
        return False
    finally:
        probe.close()
