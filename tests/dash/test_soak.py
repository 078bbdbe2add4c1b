"""A soak: 20 000 mixed jobs over HTTP; nothing lost or wrong, and nothing leaks.

The app (``tests/support/soak_server.py``) runs in a process of its own, the
"kernel side", so its memory, descriptors and threads are its own. Eight
client threads drive it as eight browser tabs would, with no-op jobs,
progress, ``set_props``, errors, ``cache_by`` hits, cancels, re-fires, and a
worker SIGKILLed mid-job every 2 000 jobs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.helpers import REPO, free_port, wait_until
from tests.support.reliability_helpers import LOKY_WORKER_MARK, DashClient, run_in_threads, shown

JOBS = 20_000
TABS = 8
KILL_EVERY = 2_000
SETTLE = 30.0
"""Seconds the server may take to be back to its warm-up level once the load stops."""


def kind_of(token: int) -> str:
    """Which operation job ``token`` is (a fixed, repeatable mix)."""
    if token % KILL_EVERY == 1000:
        return "killed"
    if token % 200 == 7:
        return "cancel"
    if token % 200 == 13:
        return "refire"
    return {3: "error", 5: "progress", 6: "props", 9: "cache_hit"}.get(token % 10, "noop")


def _run_one(client: DashClient, token: int, pid_dir: Path) -> tuple[str, Any]:
    """Do job ``token`` as a tab would; return ``(kind, what the tab saw)``."""
    kind = kind_of(token)
    if kind in ("noop", "cache_hit"):
        # a cache hit asks for the inputs of this tab's previous job, a no-op
        asked = token - TABS if kind == "cache_hit" and token >= TABS else token
        result = client.run("out", {"go": asked}, timeout=60)
        return kind, (asked, shown(result))
    if kind == "error":
        return kind, shown(client.run("out_err", {"go_err": token}, timeout=60), "out_err")
    if kind == "progress":
        result = client.run("out_prog", {"go_prog": token}, timeout=60)
        return kind, shown(result, "out_prog")
    if kind == "props":
        return kind, shown(client.run("out_props", {"go_props": token}, timeout=60), "out_props")
    slow = client.submit("out_slow", {"go_slow": token, "secs": 60})
    if kind == "cancel":
        client.cancel(slow)
        return kind, client.wait(slow, timeout=60).outcome
    if kind == "refire":
        again = client.submit("out_slow", {"go_slow": -token, "secs": 0}, old_jobs=(slow,))
        return kind, shown(client.wait(again, timeout=60), "out_slow")
    pid_file = pid_dir / f"{token}.pid"
    wait_until(pid_file.exists, 60, "the job to start in its worker")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    return kind, shown(client.wait(slow, timeout=60), "out_slow")


def _right(token: int, kind: str, seen: Any) -> bool:
    if kind in ("noop", "cache_hit"):
        asked, value = seen
        return isinstance(value, dict) and value.get("token") == asked
    if kind == "error":
        first_line = str(seen).splitlines()[0]
        return first_line.startswith("error: ") and first_line.endswith(f"ValueError: boom {token}")
    if kind in ("progress", "props"):
        return seen == {"token": token}
    if kind == "cancel":
        return seen == "ended"
    if kind == "refire":
        return seen == {"token": -token}
    return isinstance(seen, str) and "the worker process running `slow` died" in seen


class Server:
    """The soak server's process and the readings the test compares."""

    def __init__(self, tmp_path: Path) -> None:
        self.pid_dir = tmp_path / "pids"
        self.pid_dir.mkdir()
        self.store = tmp_path / "store"
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.soak_server",
                str(self.port),
                str(self.store),
                str(self.pid_dir),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"
        self.process = psutil.Process(self.proc.pid)
        self.url = f"http://127.0.0.1:{self.port}/"

    def reading(self) -> dict[str, int]:
        return {
            "rss": self.process.memory_info().rss,
            "fds": self.process.num_fds(),
            "threads": self.process.num_threads(),
        }

    def at_rest(self, warm: dict[str, int]) -> bool:
        now = self.reading()
        return now["threads"] <= warm["threads"] and now["fds"] <= warm["fds"]

    def workers(self) -> list[psutil.Process]:
        return [
            child
            for child in self.process.children()
            if LOKY_WORKER_MARK in " ".join(child.cmdline())
            and child.status() != psutil.STATUS_ZOMBIE
        ]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_20000_mixed_jobs_lose_nothing_and_leak_nothing(tmp_path: Path) -> None:
    server = Server(tmp_path)
    descendants = []
    try:
        seen: dict[int, tuple[str, Any]] = {}
        lock = threading.Lock()
        done = Counter[str]()
        readings: dict[str, dict[str, int]] = {}

        def tab(k: int) -> None:
            with DashClient.open(server.url) as client:
                for token in range(k, JOBS, TABS):
                    outcome = _run_one(client, token, server.pid_dir)
                    with lock:
                        seen[token] = outcome
                        done["jobs"] += 1
                        if done["jobs"] in (300, 1000) and str(done["jobs"]) not in readings:
                            readings[str(done["jobs"])] = server.reading()

        started = time.monotonic()
        errors = run_in_threads(TABS, tab, timeout=900)
        elapsed = time.monotonic() - started
        assert errors == [], errors[:3]

        wrong = [(t, seen.get(t)) for t in range(JOBS) if t not in seen or not _right(t, *seen[t])]
        assert wrong == [], wrong[:5]
        asked_again = [t for t, (kind, _) in seen.items() if kind == "cache_hit" and t >= TABS]
        answered_from_cache = [t for t in asked_again if seen[t][1] == seen[t - TABS][1]]
        assert len(answered_from_cache) == len(asked_again), "the same value, not a new run"

        # Back at rest: threads and descriptors at their warm-up level, a full pool.
        warm = readings["300"]
        wait_until(
            lambda: server.at_rest(warm),
            SETTLE,
            f"the server's threads and descriptors back to {warm} (now {server.reading()})",
        )
        wait_until(lambda: len(server.workers()) == 2, SETTLE, "a full pool of 2 workers")
        end = server.reading()
        grown = (end["rss"] - readings["1000"]["rss"]) / 2**20
        store_bytes = sum(f.stat().st_size for f in server.store.rglob("*") if f.is_file())
        assert grown <= 20, f"the server's memory grew {grown:.1f} MiB after the first 1000 jobs"
        assert store_bytes <= 2**30
        print(
            f"\nsoak: {JOBS} jobs in {elapsed:.0f} s ({JOBS / elapsed:.0f}/s), "
            f"{dict(Counter(k for k, _ in seen.values()))}, 0 lost, 0 wrong; "
            f"RSS {readings['1000']['rss'] / 2**20:.1f} -> {end['rss'] / 2**20:.1f} MiB "
            f"({grown:+.1f}); fds {warm['fds']} -> {end['fds']}; threads {warm['threads']} -> "
            f"{end['threads']}; workers 2; store {store_bytes / 2**20:.1f} MiB"
        )
        descendants = server.process.children(recursive=True)
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(30)
    gone = psutil.wait_procs(descendants, timeout=20)[1]
    assert gone == [], f"processes left after shutdown: {gone}"
