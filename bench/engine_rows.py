"""The engine alone, without Dash or HTTP: what a job costs the kernel and its worker.

``PYTHONPATH=$PWD python -m bench.engine_rows [--jobs N] [--cancels N]``

- round trip: ``manager.wait(manager.submit(noop))`` one after another (median, p90);
- CPU per job: the kernel process's and the worker's CPU time over those jobs
  (user + system, psutil), divided by the number of jobs;
- ``cancel()`` call: how long ``manager.cancel(job)`` takes while every worker
  runs a CPU-bound job (the time a Dash cancel request spends in nbbg).

The HTTP rows (``python -m bench``) include Dash's own cost per request; these
isolate nbbg's, so a change to the engine shows here first.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import psutil

import nbbg


def noop() -> None:
    return None


def spin() -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pass


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def round_trips(manager: nbbg.LokyManager, jobs: int) -> dict[str, float]:
    for _ in range(50):  # warm: the callable shipped, the store's connection open
        manager.wait(manager.submit(noop))
    kernel = psutil.Process()
    workers = [psutil.Process(w.pid) for w in manager.workers() if w.pid]
    kernel_before, workers_before = _cpu(kernel), sum(_cpu(w) for w in workers)
    seconds = []
    for _ in range(jobs):
        started = time.perf_counter()
        manager.wait(manager.submit(noop))
        seconds.append(time.perf_counter() - started)
    kernel_cpu = _cpu(kernel) - kernel_before
    workers_cpu = sum(_cpu(w) for w in workers) - workers_before
    seconds.sort()
    return {
        "round trip median ms": statistics.median(seconds) * 1e3,
        "round trip p90 ms": seconds[int(len(seconds) * 0.9)] * 1e3,
        "kernel CPU per job ms": kernel_cpu / jobs * 1e3,
        "worker CPU per job ms": workers_cpu / jobs * 1e3,
    }


def cancel_calls(manager: nbbg.LokyManager, cancels: int) -> dict[str, float]:
    seconds = []
    for _ in range(cancels):
        busy = [manager.submit(spin) for _ in range(manager.max_workers)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            (job := manager.job(j)) is None or job.state is not nbbg.JobState.RUNNING for j in busy
        ):
            time.sleep(0.01)
        time.sleep(0.2)  # every worker now burns its core
        started = time.perf_counter()
        manager.cancel(busy[0])
        seconds.append(time.perf_counter() - started)
        for job_id in busy[1:]:
            manager.cancel(job_id)
        time.sleep(1.0)  # the replacement workers start and warm up
    return {
        "cancel() median ms": statistics.median(seconds) * 1e3,
        "cancel() max ms": max(seconds) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--cancels", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nbbg-bench-engine-") as store:
        manager = nbbg.LokyManager(max_workers=2, cache=store)
        try:
            rows = {**round_trips(manager, args.jobs), **cancel_calls(manager, args.cancels)}
        finally:
            manager.shutdown()
    for name, value in rows.items():
        print(f"{name:24s} {value:8.3f}")


if __name__ == "__main__":
    main()
