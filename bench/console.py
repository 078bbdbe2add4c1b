"""``python -m bench.console``: what the job console costs a job.

Rows (medians of ``--reps`` runs, all in one run of this script):

- **print()**: one ``print`` of a short line inside a job, timed inside the job
  over ``--prints`` calls: under ``LokyManager`` (captured: appended to the
  job's buffer) and under Dash's ``DiskcacheManager`` (a forked process
  writing to the server's stdout, here a pipe drained by a thread, as
  ipykernel drains a kernel's).
- **100 000 lines**: submit -> result of a job printing 100 000 lines, with the
  capture on, and with the job writing to the worker's own stdout instead (the
  same pipe), as a ratio.
- **sampling**: the work a CPU-bound job gets done in ``--spin`` seconds with
  the memory guard sampling its worker (every 50 ms: peak memory, CPU time,
  the limit) and with the sampler stopped.
- **records**: writing one job record to the history (one transaction per
  record, as when jobs end one by one), and ``manager.history()`` of 10 000
  records, newest first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import diskcache
from dash import DiskcacheManager

import nbbg


def print_lines(count: int, captured: bool = True) -> float:
    """Print ``count`` short lines; return the seconds per print, timed in the job."""
    if not captured:
        sys.stdout = getattr(sys.stdout, "original", sys.stdout)  # the worker's own stdout
    started = time.perf_counter()
    for _ in range(count):
        print("a short line of output")
    return (time.perf_counter() - started) / count


def spin(seconds: float) -> int:
    """Busy CPU for ``seconds`` of wall time; the loop count shows the work done."""
    deadline = time.perf_counter() + seconds
    loops = 0
    while time.perf_counter() < deadline:
        loops += 1
    return loops


@contextlib.contextmanager
def stdout_into_drained_pipe() -> Iterator[None]:
    """File descriptor 1 into a pipe a thread reads and discards, as ipykernel does."""
    read_end, write_end = os.pipe()
    saved = os.dup(1)

    def drain() -> None:
        while os.read(read_end, 1 << 16):
            pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    sys.stdout.flush()
    os.dup2(write_end, 1)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        reader.join(5)
        os.close(read_end)


def diskcache_run(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` as DiskcacheManager runs a background callback: in a forked process."""
    manager = DiskcacheManager(diskcache.Cache(tempfile.mkdtemp()))
    job_fn = manager.make_job_fn(fn, False)
    key = f"bench-{time.monotonic_ns()}"
    pid = manager.call_job_fn(key, job_fn, list(args), {})
    deadline = time.monotonic() + 120
    while not manager.result_ready(key):
        if time.monotonic() > deadline:
            raise TimeoutError("DiskcacheManager job did not finish")
        time.sleep(0.005)
    return manager.get_result(key, pid)


def fake_record(k: int) -> nbbg.JobSnapshot:
    """A finished job as the history writer receives it, with 20 lines of output."""
    now = time.time() - 10_000 + k
    lines = tuple(nbbg.OutputLine("stdout", f"step {n} of job {k}: ok") for n in range(20))
    return nbbg.JobSnapshot(
        id=f"bench{k:08d}",
        name="callback",
        label="button.n_clicks=1",
        state=nbbg.JobState.DONE,
        progress=None,
        queue_position=None,
        submitted_at=now,
        started_at=now + 0.01,
        finished_at=now + 0.5,
        failure=None,
        worker_pid=1,
        output=lines,
        peak_memory=100 * 2**20,
        cpu_time=0.4,
        result_key=f"nbbg-result-bench{k:08d}",
    )


def record_costs(count: int) -> tuple[list[float], list[float]]:
    """Milliseconds per record written one by one, and per ``history()`` of ``count``."""
    manager = nbbg.LokyManager(max_workers=1, cache=tempfile.mkdtemp(), prewarm=False)
    history = manager._history  # the manager's own, as its writer thread uses it
    try:
        write_ms = []
        for k in range(200):
            started = time.perf_counter()
            history.write([fake_record(k)])
            write_ms.append((time.perf_counter() - started) * 1000)
        for first in range(200, count, 500):
            history.write([fake_record(k) for k in range(first, min(count, first + 500))])
        list_ms = []
        for _ in range(5):
            started = time.perf_counter()
            listed = manager.history()
            list_ms.append((time.perf_counter() - started) * 1000)
            assert len(listed) == count
    finally:
        manager.shutdown()
    return write_ms, list_ms


def timed(manager: nbbg.LokyManager, fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = manager.wait(manager.submit(fn, *args), timeout=600)
    return time.perf_counter() - started, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--prints", type=int, default=200_000)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--spin", type=float, default=5.0, help="CPU-bound job seconds")
    parser.add_argument("--records", type=int, default=10_000)
    args = parser.parse_args(argv)
    rows: list[tuple[str, str]] = []
    with stdout_into_drained_pipe():
        manager = nbbg.LokyManager(max_workers=1, cache=tempfile.mkdtemp())
        try:
            captured = [timed(manager, print_lines, args.prints)[1] for _ in range(args.reps)]
            forked = [diskcache_run(print_lines, args.prints, False) for _ in range(args.reps)]
            with_capture, without = [], []
            for _ in range(args.reps):  # interleaved: machine noise hits both alike
                with_capture.append(timed(manager, print_lines, args.lines)[0])
                without.append(timed(manager, print_lines, args.lines, False)[0])
        finally:
            manager.shutdown()
        sampled: list[float] = []
        unsampled: list[float] = []
        kernel_cpu: dict[bool, list[float]] = {True: [], False: []}
        for sampling in (True, False) * args.reps:
            manager = nbbg.LokyManager(max_workers=1, cache=tempfile.mkdtemp())
            if not sampling:
                manager._memory_guard.close()  # the sampler's thread stops: nothing sampled
            try:
                cpu_before = time.process_time()  # this process: the kernel's side
                seconds, loops = timed(manager, spin, args.spin)
                kernel_cpu[sampling].append((time.process_time() - cpu_before) / seconds)
                (sampled if sampling else unsampled).append(loops)
            finally:
                manager.shutdown()
        write_ms, list_ms = record_costs(args.records)
    med = statistics.median
    rows.append(("print() in a job, LokyManager (captured)", f"{med(captured) * 1e6:.2f} µs"))
    rows.append(("print() in a job, DiskcacheManager (stdout pipe)", f"{med(forked) * 1e6:.2f} µs"))
    rows.append(
        (
            f"job printing {args.lines:,} lines, captured ÷ not captured",
            f"{med(with_capture) / med(without):.2f}x ({med(with_capture):.2f} s vs "
            f"{med(without):.2f} s)",
        )
    )
    rows.append(
        (
            f"CPU-bound {args.spin:g} s job, work done sampled ÷ not sampled",
            f"{med(sampled) / med(unsampled):.3f} (noisy on a shared machine)",
        )
    )
    sampler = med(kernel_cpu[True]) - med(kernel_cpu[False])
    rows.append(("the sampler's CPU in the kernel, share of one core", f"{sampler:.2%}"))
    rows.append(("write one job record (20 output lines)", f"{med(write_ms):.3f} ms"))
    rows.append((f"manager.history() of {args.records:,} records", f"{med(list_ms):.0f} ms"))
    print("| what | median |\n|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
