"""``python -m bench.memory_stop``: how soon a job over the memory limit is stopped.

A job grows its worker in 5 MiB steps, writing the time and its RSS after
each step; this process watches the worker's pid every millisecond. Two
figures, from the start of the step that crosses the limit: to the job's
end (the guard's sample, every 50 ms, and its SIGKILL) and to the worker's
exit. The dying worker frees its memory on its own CPU time, at its lower
priority: on a busy machine the second figure is the larger.
Small steps make the crossing time exact to ~1 ms; the test suite uses the
issue's 50 MB steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import psutil

import nbbg

MiB = 2**20


def grow_until_stopped(step: int, log: str) -> None:
    blocks = []
    with open(log, "a") as out:
        while True:
            blocks.append(b"x" * step)
            rss = psutil.Process().memory_info().rss
            out.write(json.dumps({"time": time.time(), "rss": rss}) + "\n")
            out.flush()


def _snapshot(manager: nbbg.LokyManager, job: str) -> nbbg.JobSnapshot:
    snapshot = manager.job(job)
    if snapshot is None:
        raise RuntimeError(f"job {job} was forgotten")
    return snapshot


def _started_in(manager: nbbg.LokyManager, job: str) -> int:
    """The pid of the worker running ``job``, once it runs (at most 60 s)."""
    deadline = time.monotonic() + 60
    while (pid := _snapshot(manager, job).worker_pid) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job} did not start in 60 s")
        time.sleep(0.001)
    return pid


def _gone_at(pid: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return time.time()
        except psutil.NoSuchProcess:
            return time.time()
        time.sleep(0.001)
    raise TimeoutError(f"worker {pid} still alive after {timeout} s")


def measure(runs: int, limit_mib: int) -> tuple[list[float], list[float]]:
    """Milliseconds from crossing the limit to the job's end and to the worker's exit."""
    limit = limit_mib * MiB
    manager = nbbg.LokyManager(max_workers=1, memory_limit=limit, cache=tempfile.mkdtemp())
    ended, exited = [], []
    try:
        for _ in range(runs):
            log = Path(tempfile.mkdtemp()) / "rss.log"
            job = manager.submit(grow_until_stopped, 5 * MiB, str(log))
            pid = _started_in(manager, job)
            gone = _gone_at(pid, timeout=60)
            steps = [json.loads(line) for line in log.read_text().splitlines()]
            # The step that crosses begins after the first record within one step of
            # the limit: a bound on the delay from above, tight to one 5 MiB step.
            crossed = next(step["time"] for step in steps if step["rss"] + 5 * MiB > limit)
            try:
                manager.wait(job, timeout=30)
            except nbbg.JobFailedError:
                pass
            finished = _snapshot(manager, job).finished_at or gone
            ended.append((finished - crossed) * 1000)
            exited.append((gone - crossed) * 1000)
            time.sleep(0.3)  # the replacement worker warms up
    finally:
        manager.shutdown()
    return ended, exited


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_stop", description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--limit-mib", type=int, default=300)
    args = parser.parse_args(argv)
    ended, exited = measure(args.runs, args.limit_mib)
    print(f"over a {args.limit_mib} MiB limit, {args.runs} runs, milliseconds after crossing it:")
    for what, delays in (("job stopped", ended), ("worker exited", exited)):
        print(
            f"  {what:<14} median {statistics.median(delays):4.0f}, max {max(delays):4.0f} "
            f"({', '.join(f'{d:.0f}' for d in delays)})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
