"""From raw samples to the table: medians, ratios against DiskcacheManager and the floor.

``samples[manager][metric]`` is the list of per-repetition dicts that
``metrics.py`` returned. Each row below reduces one metric to one number per
manager; the "÷ DC" columns divide by DiskcacheManager's number from the same
run, the "Loky ÷ floor" column divides nbbg's by the floor's (``floor.py``:
jobs on threads in the server, the least the HTTP protocol costs), and "Loky ÷
process floor" by the process floor's (``process_floor.py``: the least a manager
with its jobs in other processes costs); the target column is checked for
LokyManager (nbbg).
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .servers import LABELS

AllSamples = dict[str, dict[str, list[dict[str, Any]]]]
MIB_PER_WORKER = 50.0


def _present(values: list[Any]) -> list[float]:
    return [float(v) for v in values if v is not None]


def median(values: list[Any]) -> float | None:
    present = _present(values)
    return statistics.median(present) if present else None


def percentile(values: list[Any], fraction: float) -> float | None:
    """Nearest-rank percentile (``fraction`` in 0..1)."""
    present = sorted(_present(values))
    if not present:
        return None
    return present[max(0, math.ceil(fraction * len(present)) - 1)]


def _pooled(reps: list[dict[str, Any]], key: str) -> list[Any]:
    return [value for rep in reps for value in rep.get(key) or []]


def _each(reps: list[dict[str, Any]], key: str) -> list[Any]:
    return [rep.get(key) for rep in reps]


def _first_over_warm(reps: list[dict[str, Any]]) -> float | None:
    ratios = []
    for rep in reps:
        warm = median(rep.get("warm_ms") or [])
        if rep.get("first_ms") is not None and warm:
            ratios.append(rep["first_ms"] / warm)
    return median(ratios)


def _big_first(reps: list[dict[str, Any]]) -> float | None:
    return median([rep["big_ms"][0] for rep in reps if rep.get("big_ms")])


def _big_overhead(reps: list[dict[str, Any]]) -> float | None:
    later = [ms for rep in reps for ms in (rep.get("big_ms") or [])[1:]]
    noop = _pooled(reps, "noop_ms")
    later_median, noop_median = median(later), median(noop)
    if later_median is None or noop_median is None:
        return None
    return later_median - noop_median


def _count(reps: list[dict[str, Any]], key: str, good: Any) -> str:
    values = _pooled(reps, key)
    return f"{sum(1 for v in values if v == good)}/{len(values)}"


def _sum(reps: list[dict[str, Any]], key: str) -> float:
    return float(sum(v or 0 for v in _each(reps, key)))


Value = float | str | None


Check = Callable[[dict[str, Value]], "bool | None"]


@dataclass(frozen=True)
class Row:
    metric: str
    label: str
    unit: str
    reduce: Callable[[list[dict[str, Any]]], Value]
    target: str = ""
    ratio: bool = True
    check: Callable[[dict[str, Value]], bool | None] | None = None


def _num(value: Value) -> float | None:
    return value if isinstance(value, (int, float)) else None


def _ratio_at_most(limit: float) -> Callable[[dict[str, Value]], bool | None]:
    def check(values: dict[str, Value]) -> bool | None:
        mine, theirs = _num(values.get("loky")), _num(values.get("diskcache"))
        return None if mine is None or not theirs else mine / theirs <= limit

    return check


def _ratio_at_least(limit: float) -> Callable[[dict[str, Value]], bool | None]:
    def check(values: dict[str, Value]) -> bool | None:
        mine, theirs = _num(values.get("loky")), _num(values.get("diskcache"))
        return None if mine is None or not theirs else mine / theirs >= limit

    return check


def _floor_ratio(at_most: float | None = None, at_least: float | None = None) -> Check:
    """nbbg against the floor measured in the same run."""

    def check(values: dict[str, Value]) -> bool | None:
        mine, floor = _num(values.get("loky")), _num(values.get("floor"))
        if mine is None or not floor:
            return None
        ratio = mine / floor
        return (at_most is None or ratio <= at_most) and (at_least is None or ratio >= at_least)

    return check


def _every(*checks: Check) -> Check:
    """Met when every check that could be made is met (None when none could)."""

    def check(values: dict[str, Value]) -> bool | None:
        verdicts = [verdict for one in checks if (verdict := one(values)) is not None]
        return all(verdicts) if verdicts else None

    return check


def _at_most(limit: float) -> Callable[[dict[str, Value]], bool | None]:
    def check(values: dict[str, Value]) -> bool | None:
        mine = _num(values.get("loky"))
        return None if mine is None else mine <= limit

    return check


def _no_worse_than_celery(values: dict[str, Value]) -> bool | None:
    mine, celery = _num(values.get("loky")), _num(values.get("celery"))
    return None if mine is None or celery is None else mine <= celery


def _memory_budget(values: dict[str, Value]) -> bool | None:
    mine, theirs = _num(values.get("loky")), _num(values.get("diskcache"))
    workers = os.cpu_count() or 1  # LokyManager's default max_workers
    return None if mine is None or theirs is None else mine <= theirs + MIB_PER_WORKER * workers


def _all_of(fraction: Value) -> bool | None:
    if not isinstance(fraction, str):
        return None
    good, total = fraction.split("/")
    return good == total and total != "0"


def _lost_fraction(reps: list[dict[str, Any]]) -> str:
    return f"{int(_sum(reps, 'lost'))}/{int(_sum(reps, 'jobs'))}"


def _none_lost(values: dict[str, Value]) -> bool | None:
    mine = values.get("loky")
    return None if not isinstance(mine, str) else mine.startswith("0/")


ROWS: tuple[Row, ...] = (
    Row(
        "turnaround",
        "no-op job turnaround, 2 ms polling",
        "ms",
        lambda reps: median(_pooled(reps, "ms")),
        "≤ 0.55x DC, ≤ 1.15x floor",
        check=_every(_ratio_at_most(0.55), _floor_ratio(at_most=1.15)),
    ),
    Row(
        "throughput",
        "throughput, 2 ms polling (stress), {throughput_jobs} no-ops, {throughput_threads} tabs",
        "jobs/s",
        lambda reps: median(_each(reps, "jobs_per_s")),
        "≥ 3x DC, ≥ 0.85x floor",
        check=_every(_ratio_at_least(3.0), _floor_ratio(at_least=0.85)),
    ),
    Row(
        "throughput_calm",
        "throughput, 100 ms polling (realistic): the same jobs and tabs",
        "jobs/s",
        lambda reps: median(_each(reps, "jobs_per_s")),
    ),
    Row(
        "throughput",
        "jobs lost at 2 ms polling (no answer in {lost_after:g} s, 204 or error)",
        "lost/sent",
        _lost_fraction,
        "0",
        ratio=False,
        check=_none_lost,
    ),
    Row(
        "throughput_calm",
        "jobs lost at 100 ms polling",
        "lost/sent",
        _lost_fraction,
        "0",
        ratio=False,
        check=_none_lost,
    ),
    Row(
        "set_progress_cost",
        "one set_progress call: cost inside the job (nbbg sends later, from a flush thread)",
        "µs",
        lambda reps: median(_each(reps, "us_per_call")),
        "≤ 1 µs",
        check=_at_most(1.0),
    ),
    Row(
        "set_progress_cost",
        "… progress delivered to the client meanwhile (20 ms polling: ≤ 50/s)",
        "updates/s",
        lambda reps: median(_each(reps, "delivered_per_s")),
    ),
    Row(
        "progress_latency",
        "progress latency p90 (job stamp → client)",
        "ms",
        lambda reps: percentile(_pooled(reps, "latency_ms"), 0.9),
        "≤ Celery's",
        check=_no_worse_than_celery,
    ),
    Row(
        "progress_latency",
        "progress updates seen of sent",
        "%",
        lambda reps: median([100 * r["seen"] / r["sent"] for r in reps if r.get("sent")]),
        ratio=False,
    ),
    Row(
        "cancel",
        "cancel → job's process stops using CPU",
        "ms",
        lambda reps: median(_pooled(reps, "stop_ms")),
        "≤ 20 ms",
        check=_at_most(20.0),
    ),
    Row(
        "cancel",
        "concurrent job unharmed by the cancel",
        "ok/runs",
        lambda reps: _count(reps, "concurrent_unharmed", True),
        "all",
        ratio=False,
        check=lambda v: _all_of(v.get("loky")),
    ),
    Row(
        "cancel",
        "cancel request answered (HTTP round trip)",
        "ms",
        lambda reps: median(_pooled(reps, "answer_ms")),
    ),
    Row(
        "busy",
        "every worker CPU-bound: a poll answered",
        "ms",
        lambda reps: median(_pooled(reps, "poll_ms")),
    ),
    Row(
        "busy",
        "every worker CPU-bound: the cancel request answered",
        "ms",
        lambda reps: median(_pooled(reps, "answer_ms")),
        "≤ 0.5x",
        check=_ratio_at_most(0.5),
    ),
    Row(
        "busy",
        "every worker CPU-bound: the cancelled job stops",
        "ms",
        lambda reps: median(_pooled(reps, "stop_ms")),
        "≤ 0.5x",
        check=_ratio_at_most(0.5),
    ),
    Row(
        "refire",
        "re-fire (oldJob) → old job's process stops",
        "ms",
        lambda reps: median(_pooled(reps, "stop_ms")),
    ),
    Row(
        "refire",
        "re-fired job turnaround (50 ms of CPU)",
        "ms",
        lambda reps: median(_pooled(reps, "new_job_ms")),
    ),
    Row("big_global", "100 MB `__main__` global: first call", "ms", _big_first),
    Row(
        "big_global",
        "100 MB global: overhead per later call",
        "ms",
        _big_overhead,
        "≤ 5 ms",
        ratio=False,
        check=_at_most(5.0),
    ),
    Row(
        "big_global",
        "100 MB global: memory after the calls (PSS)",
        "MiB",
        lambda reps: median(_each(reps, "pss_after_mib")),
    ),
    Row(
        "startup",
        "first job after start (page load, click)",
        "ms",
        lambda reps: median(_each(reps, "first_ms")),
    ),
    Row(
        "startup",
        "warm job (same server, right after)",
        "ms",
        lambda reps: median(_pooled(reps, "warm_ms")),
    ),
    Row(
        "startup",
        "first job ÷ warm job",
        "x",
        _first_over_warm,
        "≤ 2x",
        ratio=False,
        check=_at_most(2.0),
    ),
    Row(
        "startup_settled",
        "first job, clicked 1 s after page load",
        "ms",
        lambda reps: median(_each(reps, "first_ms")),
    ),
    Row(
        "startup_settled",
        "… ÷ warm job",
        "x",
        _first_over_warm,
        "(≤ 2x)",
        ratio=False,
        check=_at_most(2.0),
    ),
    Row(
        "memory",
        "memory idle, server + workers (PSS)",
        "MiB",
        lambda reps: median(_each(reps, "idle_mib")),
        "≤ DC + 50 MiB/worker",
        check=_memory_budget,
    ),
    Row(
        "memory",
        "memory with 4 jobs submitted (PSS)",
        "MiB",
        lambda reps: median(_each(reps, "busy_mib")),
        "≤ DC + 50 MiB/worker",
        check=_memory_budget,
    ),
    Row(
        "leftover",
        "processes left after stopping the server",
        "count",
        lambda reps: _sum(reps, "processes"),
        "0",
        ratio=False,
        check=_at_most(0.0),
    ),
    Row(
        "leftover_crash",
        "processes left after SIGKILL of the server",
        "count",
        lambda reps: _sum(reps, "processes"),
        "(0)",
        ratio=False,
        check=_at_most(0.0),
    ),
)


def _format(value: Value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _format_ratio(mine: Value, theirs: Value) -> str:
    a, b = _num(mine), _num(theirs)
    return "-" if a is None or not b else f"{a / b:.2f}x"


def table(samples: AllSamples, managers: list[str], settings: dict[str, Any]) -> str:
    """The markdown table: medians, ratios against DiskcacheManager and the floor, nbbg's verdict.

    Row labels may name ``settings`` fields in braces.
    """
    others = [m for m in managers if m not in ("diskcache", "floor", "pfloor")]
    against_floor = "floor" in managers and "loky" in managers
    against_process_floor = "pfloor" in managers and "loky" in managers
    header = ["metric", "unit", *(LABELS[m] for m in managers)]
    if "diskcache" in managers:
        header += [f"{LABELS[m].removesuffix('Manager')} ÷ DC" for m in others]
    if against_floor:
        header.append("Loky ÷ floor")
    if against_process_floor:
        header.append("Loky ÷ process floor")
    header += ["target (nbbg)", "nbbg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in ROWS:
        values: dict[str, Value] = {}
        for manager in managers:
            reps = samples.get(manager, {}).get(row.metric) or []
            values[manager] = row.reduce(reps) if reps else None
        cells = [row.label.format(**settings), row.unit, *(_format(values[m]) for m in managers)]
        if "diskcache" in managers:
            cells += [
                _format_ratio(values[m], values["diskcache"]) if row.ratio else "" for m in others
            ]
        if against_floor:
            cells.append(_format_ratio(values["loky"], values["floor"]) if row.ratio else "")
        if against_process_floor:
            cells.append(_format_ratio(values["loky"], values["pfloor"]) if row.ratio else "")
        verdict = row.check(values) if row.check else None
        cells += [row.target, {True: "met", False: "**missed**", None: ""}[verdict]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(
    samples: AllSamples, managers: list[str], settings: dict[str, Any], meta: dict[str, Any]
) -> str:
    """The table with what it was measured on: date, command, machine, versions."""
    versions = ", ".join(f"{name} {version}" for name, version in meta["versions"].items())
    machine = meta["machine"]
    command = " ".join(["python -m bench", *meta["argv"]])
    return (
        f"Run {meta['started']} · `{command}` · {meta['seconds']} s · "
        f"{settings['reps']} repetitions\n\n"
        f"Machine: nproc={machine['nproc']}, {machine['platform']}, load average "
        f"{machine['load_average_at_start']} at start, {meta['load_average_at_end']} at end\n\n"
        f"Versions: {versions}\n\n{table(samples, managers, settings)}\n"
    )
