"""What macOS and Windows would run, forced on Linux; and workers below the kernel's CPU priority.

Only Linux machines run these tests. The fallbacks for what Windows lacks
(SIGKILL, signal masks, AF_UNIX) are turned on here by switching off the
capability flags of ``nbbg._engine.platform``, then real jobs, progress and a cancel
go through them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import nbbg
from nbbg._engine import platform as _platform
from tests.support.helpers import REPO, pid_gone, wait_until


def test_workers_run_at_a_lower_cpu_priority_than_the_kernel(manager: nbbg.LokyManager) -> None:
    kernel_nice = psutil.Process().nice()
    pids = [w.pid for w in manager.workers() if w.pid]
    assert len(pids) == 2
    for pid in pids:
        assert psutil.Process(pid).nice() == kernel_nice + _platform.WORKER_NICE_INCREMENT
    # A respawned worker (after a cancel) is lowered again, from the kernel's level.
    doomed = manager.submit(time.sleep, 30)
    wait_until(lambda: manager.job(doomed).worker_pid, what="the job to start")
    manager.cancel(doomed)
    fresh = wait_until(
        lambda: {w.pid for w in manager.workers() if w.pid} - set(pids), what="a fresh worker"
    )
    job = manager.submit(lambda: psutil.Process().nice())
    assert manager.wait(job, timeout=30) == kernel_nice + _platform.WORKER_NICE_INCREMENT
    wait_until(
        lambda: all(psutil.Process(pid).nice() > kernel_nice for pid in fresh),
        what="the fresh worker's initializer to lower its priority",
    )


def test_a_new_worker_runs_below_the_kernel_from_its_start(manager: nbbg.LokyManager) -> None:
    """Lowered by the kernel as it is spawned, not only by its initializer ~20+ ms later:
    a replacement worker's interpreter start does not compete with the kernel's cancel answer."""
    kernel_nice = psutil.Process().nice()
    started = manager.engine.backend.start_worker()
    try:
        pid = started.pid()
        assert pid is not None
        assert psutil.Process(pid).nice() == kernel_nice + _platform.WORKER_NICE_INCREMENT
        assert not started.warming.done(), "checked while the interpreter was still starting"
    finally:
        started.kill()


def count_with_progress(set_progress: Any, steps: int) -> str:
    for step in range(1, steps + 1):
        set_progress((step, steps))
        time.sleep(0.2)
    return f"counted {steps}"


@pytest.fixture(params=["AF_UNIX", "AF_INET"])
def without_linux_only_features(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, list[Any]]]:
    """No SIGKILL, no signal mask, no abstract sockets; the listener in ``request.param``.

    ``AF_UNIX`` is macOS's path (a socket file); ``AF_INET`` stands in for a
    family other than AF_UNIX, as Windows's named pipes are. Yields what the
    spies saw: kills and priority changes through psutil, and signal masks nbbg set.
    """
    seen: dict[str, list[Any]] = {"psutil_kills": [], "nbbg_masks": [], "psutil_nice": []}
    monkeypatch.setattr(_platform, "HAS_SIGKILL", False)
    monkeypatch.setattr(_platform, "HAS_SETPRIORITY", False)
    monkeypatch.setattr(_platform, "HAS_SIGMASK", False)
    monkeypatch.setattr(_platform, "HAS_ABSTRACT_SOCKETS", False)
    monkeypatch.setattr(_platform, "CONNECTION_FAMILY", request.param)
    real_kill, real_nice = psutil.Process.kill, psutil.Process.nice
    real_mask = signal.pthread_sigmask

    def kill(process: psutil.Process) -> None:
        seen["psutil_kills"].append(process.pid)
        real_kill(process)

    def nice(process: psutil.Process, value: int | None = None) -> Any:
        if value is not None:
            seen["psutil_nice"].append(process.pid)
        return real_nice(process, value)

    def mask(how: int, signals: Any) -> Any:
        if "nbbg" in sys._getframe(1).f_code.co_filename:
            seen["nbbg_masks"].append((how, signals))
        return real_mask(how, signals)

    monkeypatch.setattr(psutil.Process, "kill", kill)
    monkeypatch.setattr(psutil.Process, "nice", nice)
    monkeypatch.setattr(signal, "pthread_sigmask", mask)
    yield seen


def test_jobs_progress_and_cancel_through_the_fallbacks(
    without_linux_only_features: dict[str, list[Any]], store_dir: Path
) -> None:
    seen = without_linux_only_features
    manager = nbbg.LokyManager(max_workers=2, cache=str(store_dir))
    try:
        address = manager.engine.backend.listener_address  # type: ignore[attr-defined]
        if _platform.CONNECTION_FAMILY == "AF_INET":
            assert address[0] == "127.0.0.1" and address[1] > 0
        else:
            assert address.endswith("progress.sock") and Path(address).exists()

        key = "p" * 64
        job = manager.call_job_fn(key, manager.make_job_fn(count_with_progress, True), [3], {})
        progress = wait_until(lambda: manager.get_progress(key), timeout=30, what="progress")
        assert progress[1] == 3, "progress came over the fallback connection"
        wait_until(lambda: manager.get_result(key, job) == "counted 3", what="the result")

        doomed = manager.submit(time.sleep, 30)
        wait_until(lambda: manager.job(doomed).worker_pid, what="the job to start")
        doomed_pid = manager.job(doomed).worker_pid
        assert manager.cancel(doomed) is True
        wait_until(lambda: pid_gone(doomed_pid), timeout=5, what="the cancelled worker to end")
        assert doomed_pid in seen["psutil_kills"], "killed through psutil, not os.kill"
        assert manager.wait(manager.submit(sum, [1, 2]), timeout=30) == 3
        assert seen["nbbg_masks"] == [], "no signal mask where none exists"
        workers = {w.pid for w in manager.workers() if w.pid}
        assert workers and workers <= set(seen["psutil_nice"]), "lowered through psutil"
        kernel_nice = psutil.Process().nice()
        assert all(psutil.Process(pid).nice() > kernel_nice for pid in workers)
    finally:
        manager.shutdown()


def test_worker_side_fallbacks_in_a_real_process() -> None:
    """``lower_priority`` through psutil (twice, as the kernel and then the initializer call it:
    lowered once) and no SIGINT unmasking, as a worker would run them."""
    script = (
        "import psutil\n"
        "from nbbg._engine import platform as _platform\n"
        "_platform.HAS_SETPRIORITY = False\n"
        "_platform.HAS_SIGMASK = False\n"
        "before = psutil.Process().nice()\n"
        "_platform.unblock_sigint()\n"
        "nice = min(19, before + _platform.WORKER_NICE_INCREMENT)\n"
        "_platform.lower_priority(nice)\n"
        "_platform.lower_priority(nice)\n"
        "print(before, psutil.Process().nice())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    before, after = map(int, done.stdout.split())
    assert after == min(19, before + _platform.WORKER_NICE_INCREMENT)


def test_own_memory_is_read_from_proc_and_through_psutil_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a worker reports as its memory at each job's end, on Linux and elsewhere."""
    tolerance = 8 * 2**20  # the two reads are not at the same instant
    assert _platform.HAS_PROC_STATM, "this Linux machine has /proc/self/statm"
    before = _platform.resident_memory()
    assert before is not None
    assert abs(before - psutil.Process().memory_info().rss) < tolerance
    block = bytearray(64 * 2**20)  # zero-filled pages: touch each so they count as resident
    block[::4096] = b"\1" * len(block[::4096])
    grown = _platform.resident_memory()
    assert grown is not None and grown - before >= 60 * 2**20
    monkeypatch.setattr(_platform, "HAS_PROC_STATM", False)
    through_psutil = _platform.resident_memory()
    assert through_psutil is not None and abs(through_psutil - grown) < tolerance
    del block
