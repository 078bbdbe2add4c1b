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
- **sampling**: a CPU-bound job's wall time with the per-job memory/CPU
  sampling on (a limit set) and off (``memory_limit=None``, no job sampled).
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
from dash.background_callback import DiskcacheManager

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
        sampled, unsampled = [], []
        for limit in ("auto", None) * args.reps:
            manager = nbbg.LokyManager(max_workers=1, cache=tempfile.mkdtemp(), memory_limit=limit)
            try:
                (sampled if limit else unsampled).append(timed(manager, spin, args.spin)[1])
            finally:
                manager.shutdown()
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
            f"{med(sampled) / med(unsampled):.3f} (1 - this = the sampling's cost)",
        )
    )
    print("| what | median |\n|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
