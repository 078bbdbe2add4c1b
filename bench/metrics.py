"""The measurements: one function per metric, each one repetition against one server.

Each takes a running ``Server`` and the run's ``Settings`` and returns a small
dict of raw samples (JSON-ready); ``report.py`` turns them into medians. Every
loop is bounded in count, and every wait in time.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from nbbg.client import BackgroundJob, DashClient, JobResult, output_value

from .procs import (
    busiest_descendant,
    pss_by_process,
    pss_mib,
    tree,
    wait_until_idle,
    wait_until_quiet,
)
from .servers import Server

Samples = dict[str, Any]
SETTLE_SECONDS = 1.0


@dataclass(frozen=True)
class Settings:
    reps: int = 3
    warm_jobs: int = 5
    turnaround_jobs: int = 60
    throughput_jobs: int = 300
    """Per repetition and manager, in ``THROUGHPUT_ROUNDS`` rounds taken in turn with the
    other managers. 100 in one go made a rate rest on ~0.5 s of a noisy machine (0.75x
    to 0.85x the floor between whole runs of the same code)."""
    throughput_threads: int = 8
    progress_updates: int = 200
    progress_period: float = 0.005
    cancel_runs: int = 3
    busy_jobs: int = 4
    busy_seconds: float = 1.5
    big_calls: int = 6
    job_timeout: float = 15.0
    lost_after: float = 5.0
    """A no-op job of the throughput test not answered by then counts as lost."""
    big: bool = True


QUICK = Settings(
    reps=1,
    warm_jobs=2,
    turnaround_jobs=5,
    throughput_jobs=16,
    throughput_threads=4,
    progress_updates=50,
    cancel_runs=1,
    busy_seconds=0.8,
    big_calls=2,
    job_timeout=10.0,
    big=False,
)


def _noop(client: DashClient, timeout: float) -> JobResult:
    return client.run("noop-out", {"noop-go": client.click("noop-go")}, timeout)


def _ms(result: JobResult) -> float | None:
    return result.seconds * 1000 if result.outcome == "done" else None


def _in_thread(target: Callable[[], Any]) -> Callable[[], Any]:
    """Run ``target`` in a thread now; the returned function joins it and gives its
    value (or raises its exception)."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, target()))
        except BaseException as exc:  # noqa: BLE001 - handed to the joining thread
            outcome.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join(timeout: float = 60.0) -> Any:
        thread.join(timeout)
        if not outcome:
            raise TimeoutError(f"{target} still running after {timeout} s")
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    return join


def _timed(call: Callable[[], Any]) -> Callable[[], tuple[Any, float]]:
    """``call`` returning ``(value, perf_counter() when it returned)``."""
    return lambda: (call(), time.perf_counter())


def _poll_in_thread(client: DashClient, job: BackgroundJob, timeout: float) -> Callable[[], Any]:
    """Poll ``job`` on its own connection, as the renderer's poll chain does."""
    poller = client.sibling()

    def wait() -> JobResult:
        try:
            return poller.wait(job, timeout)
        finally:
            poller.close()

    return _in_thread(wait)


# ------------------------------------------------------------------ metrics
def _first_jobs(server: Server, settings: Settings, pause: float) -> Samples:
    with DashClient.open(server.url) as client:
        time.sleep(pause)
        first = _noop(client, settings.job_timeout)
        warm = [_noop(client, settings.job_timeout) for _ in range(settings.warm_jobs)]
    return {
        "first_ms": _ms(first),
        "warm_ms": [_ms(r) for r in warm],
        "since_launch_s": time.perf_counter() - server.started,
    }


def startup(server: Server, settings: Settings) -> Samples:
    """The first job as soon as the server answers (page load, then click), then warm ones."""
    return _first_jobs(server, settings, pause=0.0)


def startup_settled(server: Server, settings: Settings) -> Samples:
    """The same, clicking 1 s after the page loaded (a browser loading its scripts, a person)."""
    return _first_jobs(server, settings, pause=SETTLE_SECONDS)


def turnaround(server: Server, settings: Settings) -> Samples:
    """No-op job, submit -> result, polling every 2 ms (the callback's interval)."""
    return turnaround_interleaved({"one": server}, settings)["one"]


def turnaround_interleaved(servers: dict[str, Server], settings: Settings) -> dict[str, Samples]:
    """``turnaround`` on every server at once, one job each in turn (the order alternating).

    A ratio of two managers' turnarounds then rests on jobs run within
    milliseconds of each other: the load of a shared machine, which drifts over
    seconds, weighs on both alike instead of on whichever ran during a busy spell.
    """
    with contextlib.ExitStack() as stack:
        clients = {name: stack.enter_context(DashClient.open(s.url)) for name, s in servers.items()}
        names = list(clients)
        ms: dict[str, list[float | None]] = {name: [] for name in names}
        for index in range(settings.turnaround_jobs):
            for name in names if index % 2 == 0 else reversed(names):
                ms[name].append(_ms(_noop(clients[name], settings.job_timeout)))
    return {name: {"ms": samples} for name, samples in ms.items()}


def _throughput(server: Server, settings: Settings, trigger: str, output: str) -> Samples:
    """``throughput_jobs`` no-op jobs (``trigger`` -> ``output``) from ``throughput_threads`` tabs.

    Each tab fires its next job as soon as the last one answered. A job not
    answered within ``lost_after`` s (or answered 204 or an error) is lost:
    counted apart, and the time it held its tab is left out of the rate, so
    losses show in the "lost" row and not as a lower rate. ``jobs_per_s`` =
    answered jobs ÷ (seconds the tabs spent on answered jobs ÷ tabs); with no
    loss that is the wall-clock rate (``wall_jobs_per_s``, kept for reference).
    """
    tabs = [DashClient.open(server.url) for _ in range(settings.throughput_threads)]
    tickets = iter(range(settings.throughput_jobs))
    clicks = itertools.count(1)  # unique inputs: Dash keys results by inputs, not by tab
    lock = threading.Lock()
    finished: list[tuple[str, float, float]] = []
    start = threading.Barrier(len(tabs) + 1)

    def tab_loop(tab: DashClient) -> None:
        start.wait()
        while True:
            with lock:
                ticket, click = next(tickets, None), next(clicks)
            if ticket is None:
                return
            result = tab.run(output, {trigger: click}, settings.lost_after)
            with lock:
                finished.append((result.outcome, result.seconds, time.perf_counter()))

    threads = [threading.Thread(target=tab_loop, args=(tab,), daemon=True) for tab in tabs]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join(settings.lost_after * (settings.throughput_jobs + 1))
    server.observe()
    for tab in tabs:
        tab.close()
    answered = [(held, at) for outcome, held, at in finished if outcome == "done"]
    tab_seconds = sum(held for held, _ in answered) / len(tabs)
    wall_seconds = (max(at for _, at in answered) - began) if answered else None
    return {
        "jobs": settings.throughput_jobs,
        "tabs": len(tabs),
        "done": len(answered),
        "lost": settings.throughput_jobs - len(answered),
        "outcomes": sorted(outcome for outcome, _, _ in finished),
        "answered_tab_seconds": tab_seconds,
        "jobs_per_s": len(answered) / tab_seconds if tab_seconds else None,
        "wall_seconds": wall_seconds,
        "wall_jobs_per_s": len(answered) / wall_seconds if wall_seconds else None,
    }


THROUGHPUT_ROUNDS = 3
"""Rounds a repetition's throughput jobs are split into, the managers taking turns."""


def _throughput_interleaved(
    servers: dict[str, Server], settings: Settings, trigger: str, output: str
) -> dict[str, Samples]:
    """``_throughput`` on every server in rounds, the managers taking turns (order alternating).

    As with ``turnaround_interleaved``, a ratio of two managers' rates then rests
    on the same stretch of a shared machine's drifting load, not on whichever
    manager ran during a busy spell.
    """
    total, count = settings.throughput_jobs, THROUGHPUT_ROUNDS
    sizes = [n for n in (total // count + (k < total % count) for k in range(count)) if n]
    names = list(servers)
    rounds: dict[str, list[Samples]] = {name: [] for name in names}
    for index, size in enumerate(sizes):
        per_round = replace(settings, throughput_jobs=size)
        for name in names if index % 2 == 0 else reversed(names):
            rounds[name].append(_throughput(servers[name], per_round, trigger, output))
    return {name: _combined(each) for name, each in rounds.items()}


def _combined(rounds: list[Samples]) -> Samples:
    """One manager's rounds as one sample: rates over all their answered jobs."""
    done = sum(r["done"] for r in rounds)
    tab_seconds = sum(r["answered_tab_seconds"] for r in rounds)
    wall_seconds = sum(r["wall_seconds"] or 0.0 for r in rounds)
    return {
        "jobs": sum(r["jobs"] for r in rounds),
        "tabs": rounds[0]["tabs"],
        "rounds": len(rounds),
        "done": done,
        "lost": sum(r["lost"] for r in rounds),
        "outcomes": sorted(o for r in rounds for o in r["outcomes"]),
        "answered_tab_seconds": tab_seconds,
        "jobs_per_s": done / tab_seconds if tab_seconds else None,
        "wall_seconds": wall_seconds or None,
        "wall_jobs_per_s": done / wall_seconds if wall_seconds else None,
    }


def throughput_interleaved(servers: dict[str, Server], settings: Settings) -> dict[str, Samples]:
    return _throughput_interleaved(servers, settings, "noop-go", "noop-out")


def throughput_calm_interleaved(
    servers: dict[str, Server], settings: Settings
) -> dict[str, Samples]:
    return _throughput_interleaved(servers, settings, "calm-go", "calm-out")


def throughput(server: Server, settings: Settings) -> Samples:
    """The stress setting: the no-op callback polled every 2 ms."""
    return _throughput(server, settings, "noop-go", "noop-out")


def throughput_calm(server: Server, settings: Settings) -> Samples:
    """A realistic setting: the same no-op, polled every 100 ms."""
    return _throughput(server, settings, "calm-go", "calm-out")


def set_progress_cost(server: Server, settings: Settings) -> Samples:
    """The job times its own ``set_progress`` calls (perf_counter over many calls).

    That is the cost inside the job only: a manager that sends later (nbbg's
    flush thread) pays the sending elsewhere. So the client also counts the
    polls that brought a progress value while the job ran: the updates per
    second that reach the browser (at most one per poll, 20 ms apart).
    """
    with DashClient.open(server.url) as client:
        job = client.submit("cost-out", {"cost-go": client.click("cost-go")})
        result = client.wait(job, settings.job_timeout)
    value = output_value(result, "cost-out") or {}
    calls, seconds = value.get("calls"), value.get("seconds")
    return {
        "calls": calls,
        "us_per_call": seconds / calls * 1e6 if calls else None,
        "in_job_seconds": seconds,
        "polls": job.polls,
        "delivered": len(job.progress),
        "delivered_per_s": len(job.progress) / seconds if seconds else None,
        "outcome": result.outcome,
    }


def progress_latency(server: Server, settings: Settings) -> Samples:
    """The job stamps ``time.time()`` into set_progress; the client notes when it sees each."""
    with DashClient.open(server.url) as client:
        values = {
            "progress-go": client.click("progress-go"),
            "progress-updates": settings.progress_updates,
            "progress-period": settings.progress_period,
        }
        job = client.submit("progress-out", values)
        result = client.wait(job, settings.job_timeout)
    latencies = [(seen - float(stamp)) * 1000 for seen, stamp in job.progress]
    return {
        "latency_ms": latencies,
        "sent": settings.progress_updates,
        "seen": len(latencies),
        "outcome": result.outcome,
    }


def _spinning_job(
    client: DashClient, server: Server, settings: Settings, busy_now: bool = False
) -> tuple[BackgroundJob, Callable[[], Any], int | None]:
    """Start a ``spin`` job, its poll chain, and find the process burning CPU for it.

    With no other job running, the server's processes are let settle first
    (``wait_until_quiet``), so a replacement worker still starting is not taken
    for the job's process.
    """
    if not busy_now:
        wait_until_quiet(server.roots())
    job = client.submit("spin-out", {"spin-go": client.click("spin-go"), "spin-seconds": 20})
    polled = _poll_in_thread(client, job, settings.job_timeout)
    pid = None
    deadline = time.monotonic() + 5.0
    while pid is None and time.monotonic() < deadline:
        pid = busiest_descendant(server.roots())
    server.observe()
    return job, polled, pid


def _repeated(once: Callable[[Server, Settings], Samples]) -> Callable[[Server, Settings], Samples]:
    """Run ``once`` ``settings.cancel_runs`` times; each key maps to the list of its values."""

    def repeated(server: Server, settings: Settings) -> Samples:
        runs = [once(server, settings) for _ in range(settings.cancel_runs)]
        return {key: [run[key] for run in runs] for key in runs[0]}

    repeated.__doc__ = once.__doc__
    return repeated


def _cancel_once(server: Server, settings: Settings) -> Samples:
    """Cancel button -> the job's process stops using CPU; a concurrent job must finish fine."""
    with DashClient.open(server.url) as client:
        spin, spin_polled, pid = _spinning_job(client, server, settings)
        steady_clicks = client.click("steady-go")
        steady = client.submit("steady-out", {"steady-go": steady_clicks, "steady-seconds": 1.0})
        steady_polled = _poll_in_thread(client, steady, settings.job_timeout)
        time.sleep(0.2)
        sent = time.perf_counter()
        cancel_answered = _in_thread(_timed(lambda: client.cancel(spin)))
        stopped = wait_until_idle(pid, sent) if pid is not None else None
        cancel_status, answered = cancel_answered()
        spin_result, steady_result = spin_polled(), steady_polled()
    steady_value = output_value(steady_result, "steady-out") or {}
    steps = steady_value.get("steps") or 0
    unharmed = (
        steady_result.outcome == "done"
        and steady_value.get("n_clicks") == steady_clicks
        and steady_value.get("checksum") == steps * (steps - 1) // 2
    )
    return {
        "stop_ms": stopped * 1000 if stopped is not None else None,
        "found_process": pid is not None,
        "cancel_status": cancel_status,
        "answer_ms": (answered - sent) * 1000,
        "cancelled_job_outcome": spin_result.outcome,
        "concurrent_outcome": steady_result.outcome,
        "concurrent_unharmed": unharmed,
    }


def _refire_once(server: Server, settings: Settings) -> Samples:
    """Re-firing a running callback sends ``oldJob``: the old job's process must stop."""
    with DashClient.open(server.url) as client:
        old, old_polled, pid = _spinning_job(client, server, settings)
        sent = time.perf_counter()
        values = {"spin-go": client.click("spin-go"), "spin-seconds": 0.05}
        new_submitted = _in_thread(
            _timed(lambda: client.submit("spin-out", values, old_jobs=(old,)))
        )
        stopped = wait_until_idle(pid, sent) if pid is not None else None
        new_job, answered = new_submitted()
        new_result = client.wait(new_job, settings.job_timeout)
        old_result = old_polled()
    return {
        "stop_ms": stopped * 1000 if stopped is not None else None,
        "found_process": pid is not None,
        "answer_ms": (answered - sent) * 1000,
        "old_job_outcome": old_result.outcome,
        "new_job_outcome": new_result.outcome,
        "new_job_ms": _ms(new_result),
    }


def _busy_once(server: Server, settings: Settings) -> Samples:
    """Every worker CPU-bound (two spinning jobs on two cores): how soon the server answers
    a poll and a cancel, and how soon the cancelled job stops."""
    with DashClient.open(server.url) as client:
        first, first_polled, first_pid = _spinning_job(client, server, settings)
        second, second_polled, _ = _spinning_job(client, server, settings, busy_now=True)
        time.sleep(0.3)
        with client.sibling() as prober:
            poll_ms = []
            for _ in range(5):
                sent = time.perf_counter()
                prober.poll(second)
                poll_ms.append((time.perf_counter() - sent) * 1000)
                time.sleep(0.05)
        sent = time.perf_counter()
        cancel_answered = _in_thread(_timed(lambda: client.cancel(first)))
        stopped = wait_until_idle(first_pid, sent) if first_pid is not None else None
        _status, answered = cancel_answered()
        first_polled()
        client.cancel(second)
        second_polled()
    return {
        "poll_ms": statistics.median(poll_ms),
        "answer_ms": (answered - sent) * 1000,
        "stop_ms": stopped * 1000 if stopped is not None else None,
        "found_process": first_pid is not None,
    }


cancel = _repeated(_cancel_once)
busy = _repeated(_busy_once)
refire = _repeated(_refire_once)


def memory(server: Server, settings: Settings) -> Samples:
    """PSS of the server and its workers (and Redis for Celery): idle, then with jobs running."""
    roots = [*server.roots(), *server.infrastructure]
    idle_processes = tree(roots)
    idle = pss_mib(idle_processes)
    tabs = [DashClient.open(server.url) for _ in range(settings.busy_jobs)]
    joins = []
    for k, tab in enumerate(tabs, 1):
        job = tab.submit("steady-out", {"steady-go": k, "steady-seconds": settings.busy_seconds})
        joins.append(_poll_in_thread(tab, job, settings.job_timeout))
    time.sleep(settings.busy_seconds / 2)
    busy_processes = tree(roots)
    busy = pss_mib(busy_processes)
    server.observe()
    outcomes = [join().outcome for join in joins]
    for tab in tabs:
        tab.close()
    return {
        "idle_mib": idle,
        "busy_mib": busy,
        "idle_processes": len(idle_processes),
        "idle_by_process": pss_by_process(idle_processes),
        "busy_processes": len(busy_processes),
        "outcomes": outcomes,
    }


def big_global(server: Server, settings: Settings) -> Samples:
    """A callback reading a 100 MB ``__main__`` global, against a no-op, alternating."""
    noop_ms, big_ms = [], []
    with DashClient.open(server.url) as client:
        for _ in range(settings.big_calls):
            noop_ms.append(_ms(_noop(client, settings.job_timeout)))
            result = client.run("big-out", {"big-go": client.click("big-go")}, settings.job_timeout)
            size = (output_value(result, "big-out") or {}).get("size")
            big_ms.append(_ms(result) if size == 100 * 2**20 else None)
    after_mib = pss_mib(tree([*server.roots(), *server.infrastructure]))
    return {"noop_ms": noop_ms, "big_ms": big_ms, "pss_after_mib": after_mib}


METRICS: dict[str, Callable[[Server, Settings], Samples]] = {
    "memory": memory,
    "turnaround": turnaround,
    "throughput": throughput,
    "throughput_calm": throughput_calm,
    "set_progress_cost": set_progress_cost,
    "progress_latency": progress_latency,
    "cancel": cancel,
    "refire": refire,
    "busy": busy,
}
"""Run in this order on each server of a repetition (``startup`` runs at its start)."""

INTERLEAVED: dict[str, Callable[[dict[str, Server], Settings], dict[str, Samples]]] = {
    "turnaround": turnaround_interleaved,
    "throughput": throughput_interleaved,
    "throughput_calm": throughput_calm_interleaved,
}
"""Metrics measured on all of a repetition's servers at once, job by job in turn."""

NOT_MEASURED: dict[str, frozenset[str]] = {
    "floor": frozenset({"cancel", "refire", "busy"}),
    "pfloor": frozenset({"cancel", "refire", "busy", "set_progress_cost", "progress_latency"}),
}
"""Metrics a manager cannot take part in: the floor's threads cannot be cancelled
(a spinning job would hold the server's GIL for its whole 20 s); the process floor
has no cancel either, and sends every ``set_progress`` down its pipe (it is there
for the job rows only: what crossing a process boundary costs)."""

STARTUP: dict[str, Callable[[Server, Settings], Samples]] = {
    "startup": startup,
    "startup_settled": startup_settled,
}
