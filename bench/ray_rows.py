"""RayManager against LokyManager (and CeleryManager, when Redis is here), in one run.

``PYTHONPATH=$PWD python -m bench.ray_rows [--runs N] [--no-celery]`` (~1-2 min a run
on 2 cores). Each run starts one Dash server per manager serving ``bench/apps.py``
(RayManager on a local Ray: 127.0.0.1, no dashboard, usage statistics off) and
measures, through HTTP as dash-renderer does (``bench.metrics``):

- no-op turnaround (submit -> result, 2 ms polling), median of the jobs;
- throughput: no-op jobs from 8 tabs, answered jobs per second;
- one ``set_progress`` call inside the job (µs);
- cancel -> the job's process stops using CPU (ms), a concurrent job unharmed;
- memory idle: PSS of the server and everything it started (Ray's daemons
  included; Redis and the Celery worker for Celery).

Managers alternate within a run; the table gives each row's median over the runs
and every run's value, so the ratios compare within one machine state.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import metrics
from .servers import RedisServer, celery_available, start_server

SETTINGS = replace(
    metrics.QUICK, turnaround_jobs=20, throughput_jobs=60, throughput_threads=8, cancel_runs=3
)


def _median(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def measure(kind: str, out_dir: Path, redis: RedisServer | None) -> dict[str, Any]:
    started = time.perf_counter()
    server = start_server(kind, out_dir, redis=redis)
    startup_s = time.perf_counter() - started
    try:
        for _ in range(SETTINGS.warm_jobs):  # warm every worker first, as a user's first clicks
            metrics.turnaround(server, replace(SETTINGS, turnaround_jobs=1))
        memory = metrics.memory(server, SETTINGS)
        turnaround = metrics.turnaround(server, SETTINGS)
        throughput = metrics.throughput(server, SETTINGS)
        cost = metrics.set_progress_cost(server, SETTINGS)
        cancel = metrics.cancel(server, SETTINGS)
    finally:
        server.stop()
    return {
        "startup s": startup_s,
        "no-op turnaround ms": _median(turnaround["ms"]),
        "throughput jobs/s": throughput["jobs_per_s"],
        "jobs lost": throughput["lost"],
        "set_progress µs": cost["us_per_call"],
        "cancel -> process stops ms": _median(cancel["stop_ms"]),
        "concurrent job unharmed": sum(bool(ok) for ok in cancel["concurrent_unharmed"]),
        "memory idle MiB (PSS)": memory["idle_mib"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-celery", action="store_true")
    args = parser.parse_args()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # the servers inherit it
    kinds = ["loky", "ray"]
    out_dir = Path(tempfile.mkdtemp(prefix="nbbg-ray-rows-"))
    redis = None
    if not args.no_celery and celery_available():
        redis = RedisServer.start(out_dir)
        kinds.append("celery")
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    try:
        for run in range(args.runs):
            for kind in kinds:
                results[kind].append(measure(kind, out_dir, redis))
                print(f"run {run + 1} {kind}: {results[kind][-1]}", flush=True)
    finally:
        if redis is not None:
            redis.stop()
    rows = list(results[kinds[0]][0])
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.runs} runs, "
        f"{os.cpu_count()} CPUs; medians over the runs (every run in brackets)\n"
    )
    print("| metric | " + " | ".join(kinds) + " | ray ÷ loky |")
    print("|---|" + "---|" * (len(kinds) + 1))
    for row in rows:
        cells, medians = [], {}
        for kind in kinds:
            values = [run[row] for run in results[kind]]
            medians[kind] = _median(values)
            shown = ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in values)
            cells.append(f"{_fmt(medians[kind])} ({shown})")
        ratio = (
            f"{medians['ray'] / medians['loky']:.2f}x"
            if medians["loky"] and medians["ray"] is not None
            else ""
        )
        print(f"| {row} | " + " | ".join(cells) + f" | {ratio} |")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


if __name__ == "__main__":
    main()
