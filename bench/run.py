"""Run the benchmark: every manager, interleaved repetition by repetition.

::

    for each repetition (manager order rotated each time):
        start a fresh server per manager -> first job right after page load, warm jobs
        for each metric: for each manager: one repetition of the metric
            (turnaround: one job on each manager in turn; throughput: 3 rounds in turn;
             so load drift weighs on all alike)
            (not cancel / re-fire on the floors: neither can cancel a job)
        stop the servers -> count the processes they left behind
        start a fresh server per manager holding a 100 MB global
            -> first job 1 s after page load; 100 MB global calls; SIGKILL, count
    -> bench/out/results-<time>.json (raw samples) and the table on stdout

Usage: ``python -m bench [--quick] [--reps N] [--managers loky,diskcache,celery,floor,pfloor,ray]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python bench/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import metrics, report
from bench.servers import (
    DEFAULT_MANAGERS,
    LABELS,
    MANAGERS,
    RedisServer,
    Server,
    celery_available,
    start_server,
)

OUT_DIR = Path(__file__).resolve().parent / "out"


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _rotated(managers: list[str], rep: int) -> list[str]:
    shift = rep % len(managers)
    return managers[shift:] + managers[:shift]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in (
        "nbbg",
        "dash",
        "loky",
        "diskcache",
        "celery",
        "redis",
        "cloudpickle",
        "psutil",
    ):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    try:
        redis_line = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        found["redis-server"] = redis_line.split("v=")[1].split()[0] if "v=" in redis_line else "?"
    except (OSError, subprocess.TimeoutExpired):
        found["redis-server"] = "not installed"
    return found


def _machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in load],
    }


class Run:
    """One benchmark run: settings, the shared Redis, and the samples collected."""

    def __init__(self, managers: list[str], settings: metrics.Settings, out_dir: Path) -> None:
        self.managers = managers
        self.settings = settings
        self.out_dir = out_dir
        self.samples: report.AllSamples = {m: {} for m in managers}
        self.redis: RedisServer | None = None

    def record(self, manager: str, metric: str, sample: dict[str, Any]) -> None:
        self.samples[manager].setdefault(metric, []).append(sample)

    def _start(self, manager: str, *, big: bool) -> Server:
        if manager == "celery" and self.redis is None:
            self.redis = RedisServer.start(self.out_dir)
        return start_server(manager, self.out_dir, big=big, redis=self.redis)

    def _stop_all(self, servers: dict[str, Server], *, crash: bool = False) -> None:
        for manager, server in servers.items():
            left = server.stop(crash=crash)
            self.record(manager, "leftover_crash" if crash else "leftover", {"processes": left})

    def _servers(self, order: list[str], *, big: bool, first: str) -> dict[str, Server]:
        """Fresh servers in ``order``, each measured for its first job as it comes up."""
        servers: dict[str, Server] = {}
        try:
            for manager in order:
                _log(f"start {LABELS[manager]}{' with a 100 MB global' if big else ''}")
                servers[manager] = self._start(manager, big=big)
                measure = metrics.STARTUP[first]
                self.record(manager, first, measure(servers[manager], self.settings))
        except BaseException:
            self._stop_all(servers)
            raise
        return servers

    def repetition(self, rep: int) -> None:
        order = _rotated(self.managers, rep)
        _log(f"repetition {rep + 1} of {self.settings.reps}: {', '.join(order)}")
        servers = self._servers(order, big=False, first="startup")
        try:
            for name, measure in metrics.METRICS.items():
                if name in metrics.INTERLEAVED:
                    _log(f"rep {rep + 1}: {name} on all, the managers taking turns")
                    each = metrics.INTERLEAVED[name]({m: servers[m] for m in order}, self.settings)
                    for manager in order:
                        self.record(manager, name, each[manager])
                    continue
                for manager in order:
                    if name in metrics.NOT_MEASURED.get(manager, ()):
                        continue
                    _log(f"rep {rep + 1}: {name} on {LABELS[manager]}")
                    self.record(manager, name, measure(servers[manager], self.settings))
        finally:
            self._stop_all(servers)
        if not self.settings.big:
            return
        servers = self._servers(order, big=True, first="startup_settled")
        try:
            for manager in order:
                _log(f"rep {rep + 1}: big_global on {LABELS[manager]}")
                self.record(
                    manager, "big_global", metrics.big_global(servers[manager], self.settings)
                )
        finally:
            self._stop_all(servers, crash=True)

    def execute(self) -> None:
        try:
            for rep in range(self.settings.reps):
                self.repetition(rep)
        finally:
            if self.redis is not None:
                left = self.redis.stop()
                self.record("celery", "leftover", {"processes": left})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one short repetition, no 100 MB servers (a smoke test, not a measurement)",
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="repetitions (default 3; 1 with --quick)"
    )
    parser.add_argument(
        "--managers",
        default=",".join(DEFAULT_MANAGERS),
        help="comma-separated subset of " + ",".join(MANAGERS) + " (default: all but ray)",
    )
    parser.add_argument("--no-big", action="store_true", help="skip the 100 MB global servers")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory for JSON and logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    managers = [m.strip() for m in args.managers.split(",") if m.strip()]
    unknown = sorted(set(managers) - set(MANAGERS))
    if unknown or not managers:
        raise SystemExit(f"--managers takes a subset of {','.join(MANAGERS)}; not {unknown}")
    if "celery" in managers and not celery_available():
        _log("redis-server not found: CeleryManager is left out")
        managers.remove("celery")
    settings = metrics.QUICK if args.quick else metrics.Settings()
    if args.reps is not None:
        settings = dataclasses.replace(settings, reps=max(1, args.reps))
    if args.no_big:
        settings = dataclasses.replace(settings, big=False)
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.time()
    run = Run(managers, settings, args.out)
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "machine": _machine(),
        "versions": _versions(),
        "argv": sys.argv[1:],
    }
    try:
        run.execute()
    finally:
        meta["seconds"] = round(time.time() - started, 1)
        meta["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        stem = args.out / f"results-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}"
        raw = {
            "meta": meta,
            "settings": dataclasses.asdict(settings),
            "managers": managers,
            "samples": run.samples,
        }
        stem.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str))
        _log(f"raw samples: {stem.with_suffix('.json')}")
    summary = report.markdown(run.samples, managers, dataclasses.asdict(settings), meta)
    stem.with_suffix(".md").write_text(summary)
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
