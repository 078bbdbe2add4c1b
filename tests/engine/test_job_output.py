"""Each job's output (print, stderr, logging, warnings) captured in its worker (real workers)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import nbbg
from nbbg._engine.output import MAX_LINE, MAX_LINES
from tests.support.helpers import REPO, wait_until


def talk_then_fail(lines: int) -> None:
    for k in range(lines):
        print(f"line {k}")
    print("something odd", file=sys.stderr)
    logging.getLogger("demo").warning("careful: %d", 42)
    warnings.warn("old API", UserWarning, stacklevel=1)
    raise ValueError("no luck")


def print_tagged(tag: str, count: int, pause: float) -> str:
    for k in range(count):
        print(f"{tag} {k}")
        time.sleep(pause)
    return tag


def print_many(count: int) -> int:
    for k in range(count):
        print(k)
    return count


def misbehave() -> str:
    sys.stdout.write(b"raw bytes \xff\xfe end\n")  # type: ignore[arg-type]
    sys.stdout.buffer.write(b"through .buffer \xc3\x28\n")
    print("lone surrogate \udcff here")
    print("x" * (MAX_LINE + 5000))
    print("no newline at the end", end="")

    # A handler whose formatting raises: logging reports it on stderr and goes on.
    broken = logging.StreamHandler()
    broken.setFormatter(logging.Formatter("%(no_such_field)s"))
    logger = logging.getLogger("fragile")
    logger.addHandler(broken)
    logger.propagate = False
    logger.error("through a raising handler")
    logging.getLogger("sloppy").warning("%d items", "not a number")  # no handler: ours
    sys.stdout.close()
    print("\nafter closing stdout")
    return "still fine"


def warn_once() -> int:
    warnings.warn("shown once per location", UserWarning, stacklevel=1)
    return os.getpid()


@pytest.fixture
def one_worker(store_dir: Path) -> Iterator[nbbg.LokyManager]:
    """One worker: every job runs in the same process, one after the other."""
    mgr = nbbg.LokyManager(max_workers=1, cache=str(store_dir))
    yield mgr
    mgr.shutdown()


def texts(snapshot: nbbg.JobSnapshot) -> list[str]:
    return [line.text for line in snapshot.output]


def test_a_failing_job_keeps_its_lines_log_record_warning_and_a_readable_traceback(
    manager: nbbg.LokyManager,
) -> None:
    job_id = manager.submit(talk_then_fail, 5)
    with pytest.raises(nbbg.JobFailedError):
        manager.wait(job_id, timeout=30)
    snapshot = manager.job(job_id)
    assert snapshot is not None and snapshot.failure is not None
    streams = [(line.stream, line.text) for line in snapshot.output]
    assert streams[:6] == [("stdout", f"line {k}") for k in range(5)] + [
        ("stderr", "something odd")
    ]
    assert ("log", "WARNING demo: careful: 42") in streams
    warning = next(line for line in snapshot.output if line.stream == "warning")
    assert "UserWarning: old API" in warning.text and warning.prominent
    assert not snapshot.output[0].prominent and snapshot.output[5].prominent
    assert snapshot.failure.message == "ValueError: no luck"
    trace = snapshot.failure.traceback
    assert trace.startswith("Traceback (most recent call last):")
    assert "nbbg/_engine" not in trace, "nbbg's own frames are left out"
    assert 'raise ValueError("no luck")' in trace and "in talk_then_fail" in trace


def test_two_concurrent_jobs_each_keep_only_their_own_lines(manager: nbbg.LokyManager) -> None:
    first = manager.submit(print_tagged, "alpha", 40, 0.005)
    second = manager.submit(print_tagged, "beta", 40, 0.005)
    assert manager.wait(first, timeout=30) == "alpha"
    assert manager.wait(second, timeout=30) == "beta"
    assert texts(manager.job(first)) == [f"alpha {k}" for k in range(40)]
    assert texts(manager.job(second)) == [f"beta {k}" for k in range(40)]


def test_a_flood_of_output_keeps_a_bounded_tail_and_counts_the_rest(
    manager: nbbg.LokyManager,
) -> None:
    count = 100_000
    job_id = manager.submit(print_many, count)
    assert manager.wait(job_id, timeout=60) == count
    snapshot = manager.job(job_id)
    assert len(snapshot.output) == MAX_LINES
    assert texts(snapshot)[-1] == str(count - 1)
    assert len(snapshot.output) + snapshot.output_dropped == count, "every line kept or counted"


def test_output_is_followed_live_while_the_job_runs(manager: nbbg.LokyManager) -> None:
    seen: list[int] = []
    done = threading.Event()

    def on_event(event: nbbg.JobEvent) -> None:
        if event.kind == "output" and event.job.state is nbbg.JobState.RUNNING:
            seen.append(len(event.job.output))
        if not event.job.state.active:
            done.set()

    unsubscribe = manager.subscribe(on_event)
    try:
        job_id = manager.submit(print_tagged, "tick", 20, 0.05)
        manager.wait(job_id, timeout=30)
    finally:
        unsubscribe()
    assert len(seen) >= 5, f"output arrives while the job runs, not only at its end: {seen}"
    assert seen == sorted(seen)


def test_bad_output_gives_sane_lines_and_the_worker_goes_on(one_worker: nbbg.LokyManager) -> None:
    manager = one_worker
    job_id = manager.submit(misbehave)
    assert manager.wait(job_id, timeout=30) == "still fine"
    lines = texts(manager.job(job_id))
    assert lines[0] == "raw bytes \ufffd\ufffd end"
    assert lines[1] == "through .buffer \ufffd("
    assert lines[2] == "lone surrogate \\udcff here", "undecodable text shown escaped"
    assert lines[3].startswith("x" * MAX_LINE) and lines[3].endswith("[5000 more characters]")
    assert "--- Logging error ---" in lines, "logging's own report of the broken handler"
    assert any(line.startswith("KeyError: 'no_such_field'") for line in lines)
    assert any(line.startswith("WARNING sloppy: <could not format: TypeError") for line in lines)
    assert lines[-2:] == ["no newline at the end", "after closing stdout"]

    again = manager.submit(print_tagged, "next", 2, 0)
    assert manager.wait(again, timeout=30) == "next"
    assert texts(manager.job(again)) == ["next 0", "next 1"], "the next job is captured too"


def test_a_warning_is_shown_in_every_job_not_once_per_worker(
    one_worker: nbbg.LokyManager,
) -> None:
    manager = one_worker
    first, second = manager.submit(warn_once), manager.submit(warn_once)
    assert manager.wait(first, timeout=30) == manager.wait(second, timeout=30), "same worker"
    for job_id in (first, second):
        assert any("shown once per location" in text for text in texts(manager.job(job_id)))


SPILL_SCRIPT = """
import sys
import nbbg
from tests.engine.test_job_output import talk_then_fail
manager = nbbg.LokyManager(max_workers=1, cache=sys.argv[1])
job_id = manager.submit(talk_then_fail, 3)
try:
    manager.wait(job_id, timeout=30)
except nbbg.JobFailedError:
    pass
print("kept", len(manager.job(job_id).output))
manager.shutdown()
"""


def test_job_output_no_longer_reaches_the_kernels_own_streams(tmp_path: Path) -> None:
    # The worker shares the parent's stdout/stderr, as in a kernel: nothing may arrive there.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", SPILL_SCRIPT, str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
        check=True,
    )
    assert done.stdout.strip() == "kept 7"
    for text in ("line 0", "something odd", "careful", "old API"):
        assert text not in done.stdout + done.stderr


def hold_memory(megabytes: int, seconds: float) -> int:
    block = bytearray(megabytes * 2**20)  # zero-filled: every page touched
    time.sleep(seconds)
    return len(block)


def burn_cpu(cpu_seconds: float) -> float:
    """Spin until this process has used ``cpu_seconds`` of CPU (on a busy machine, wall
    time runs longer); return the CPU time the worker itself counted."""
    start = time.process_time()
    while time.process_time() - start < cpu_seconds:
        pass
    return time.process_time() - start


def test_peak_memory_and_cpu_time_are_kept_per_job(manager: nbbg.LokyManager) -> None:
    big = manager.submit(hold_memory, 200, 0.5)
    busy = manager.submit(burn_cpu, 1.0)
    assert manager.wait(big, timeout=30) == 200 * 2**20
    counted = manager.wait(busy, timeout=60)
    wait_until(lambda: manager.job(busy).cpu_time is not None, what="the last sample")
    big_job, busy_job = manager.job(big), manager.job(busy)
    assert big_job.peak_memory is not None and big_job.peak_memory >= 200 * 2**20
    assert big_job.cpu_time is not None and big_job.cpu_time < 0.4, "it mostly slept"
    assert busy_job.cpu_time is not None
    # The worker also imported this test module (and pytest) for the job: up to ~0.2 s more.
    assert counted - 0.1 <= busy_job.cpu_time <= counted + 0.3, "as the worker itself counted"
    records = {record.id: record for record in manager.history()}
    assert records[busy].cpu_time == busy_job.cpu_time, "the record has the final count"
    assert records[big].peak_memory == big_job.peak_memory
    print(
        f"peak {big_job.peak_memory / 2**20:.0f} MiB; CPU {busy_job.cpu_time:.2f} s "
        f"(the worker counted {counted:.2f} s in {busy_job.elapsed:.2f} s)"
    )


class Summer:
    def total(self, values: list[int]) -> int:
        return sum(values)


def test_a_bound_method_job_keeps_its_callable_for_its_traceback() -> None:
    from nbbg._engine.jobs import Job

    summer = Summer()
    job = Job("id", "total", "", "")
    job.remember_code(summer.total)
    assert job.code() == summer.total, "a bound method is not dropped at once"
    del summer
    assert job.code() is None, "nor kept alive"
