"""The per-job memory limit, with real workers: a runaway job is stopped, the rest go on."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import nbbg
from nbbg._engine import memory_guard
from nbbg._engine.memory_guard import (
    MemoryLimit,
    default_memory_limit,
    parse_memory_limit,
    usable_memory,
)
from nbbg._notebook.rows import row_view
from tests.support.helpers import pid_gone, wait_until
from tests.support.kernel_helpers import kernel

MiB = 2**20
LIMIT = 300 * MiB
KERNEL_RSS_MARGIN = 30 * MiB


def grow_in_steps(step: int, steps: int, log: str) -> int:
    """Allocate ``steps`` blocks of ``step`` bytes (each touched), logging when each
    step starts and the RSS before it."""
    blocks = []
    with open(log, "a") as out:
        for _ in range(steps):
            rss = psutil.Process().memory_info().rss
            out.write(json.dumps({"time": time.time(), "rss": rss}) + "\n")
            out.flush()
            blocks.append(b"x" * step)  # filled, so every page is resident
            time.sleep(0.05)
    return len(blocks)


def stay_under(limit: int, margin: int, hold: float) -> int:
    """Grow the worker to ``limit - margin`` and hold it there for ``hold`` s; return the RSS."""
    blocks = []
    while psutil.Process().memory_info().rss + 20 * MiB < limit - margin:
        blocks.append(b"x" * (20 * MiB))
    time.sleep(hold)
    return int(psutil.Process().memory_info().rss)


def rss_of_this_process() -> int:
    return int(psutil.Process().memory_info().rss)


@pytest.fixture
def limited(store_dir: Path) -> Iterator[nbbg.LokyManager]:
    mgr = nbbg.LokyManager(max_workers=2, cache=str(store_dir), memory_limit="300MiB")
    yield mgr
    mgr.shutdown()


def test_a_job_over_the_limit_is_stopped_and_the_next_job_runs(
    limited: nbbg.LokyManager, tmp_path: Path
) -> None:
    log = tmp_path / "rss.log"
    kernel_before = rss_of_this_process()
    survivor = limited.submit(time.sleep, 3)
    runaway = limited.submit(grow_in_steps, 50 * MiB, 40, str(log))
    wait_until(lambda: limited.job(runaway).worker_pid, what="the runaway job to start")
    runaway_pid = limited.job(runaway).worker_pid

    with pytest.raises(nbbg.JobFailedError) as failed:
        limited.wait(runaway, timeout=60)
    message = str(failed.value)
    match = re.search(r"`grow_in_steps` stopped: used ([\d.]+) MiB, limit 300 MiB; raise", message)
    assert match, message
    assert "memory_limit=" in message and "use less memory" in message
    used = float(match.group(1)) * MiB
    assert LIMIT < used < LIMIT + 4 * 50 * MiB, "stopped within a few steps of crossing"

    wait_until(lambda: pid_gone(runaway_pid), timeout=5, what="the runaway worker to end")
    steps = [json.loads(line) for line in log.read_text().splitlines()]
    # The step that crossed the limit began at ``crossing``: the stop came at most
    # this long after the crossing (the step's own allocation time included).
    crossing = next(s["time"] for s in steps if s["rss"] + 50 * MiB > LIMIT)
    stopped = limited.job(runaway).finished_at
    assert stopped is not None and stopped > crossing
    print(f"\nthe step over the limit began -> job stopped: {(stopped - crossing) * 1000:.0f} ms")
    assert max(step["rss"] for step in steps) < 2 * LIMIT, "it never grew far past the limit"

    assert limited.wait(survivor, timeout=10) is None, "the other job went on"
    assert limited.wait(limited.submit(sum, [1, 2, 3]), timeout=30) == 6
    wait_until(lambda: len([w for w in limited.workers() if w.pid]) == 2, what="two workers")
    assert runaway_pid not in {w.pid for w in limited.workers()}, "its worker was replaced"
    grown = rss_of_this_process() - kernel_before
    assert grown < KERNEL_RSS_MARGIN, f"the kernel's own memory grew by {grown / MiB:.0f} MiB"

    shown = row_view(limited.job(runaway))
    assert shown.state_text == "error" and "stopped: used" in shown.tooltip, "the panel says why"


def test_a_job_just_under_the_limit_finishes(limited: nbbg.LokyManager) -> None:
    peak = limited.wait(limited.submit(stay_under, LIMIT, 40 * MiB, 0.5), timeout=60)
    assert LIMIT - 80 * MiB < peak < LIMIT, f"the job held {peak / MiB:.0f} MiB"


def test_a_job_started_after_a_quiet_spell_is_held_to_the_limit_too(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sampler sleeps once no job ran for ``KEEP_BEAT``: the next start must wake it."""
    monkeypatch.setattr(memory_guard, "KEEP_BEAT", 0.2)
    mgr = nbbg.LokyManager(max_workers=1, cache=str(store_dir), memory_limit=LIMIT)
    try:
        assert mgr.wait(mgr.submit(sum, [1, 2]), timeout=30) == 3
        time.sleep(1.0)  # quiet: the sampler now waits for a job to start
        with pytest.raises(nbbg.JobFailedError, match="limit 300 MiB"):
            mgr.wait(mgr.submit(stay_under, 2 * LIMIT, 0, 3.0), timeout=60)
    finally:
        mgr.shutdown()


def test_no_limit_lets_a_job_grow_and_a_new_limit_holds_for_the_next_job(
    store_dir: Path,
) -> None:
    mgr = nbbg.LokyManager(max_workers=1, cache=str(store_dir), memory_limit=None)
    try:
        assert mgr.memory_limit is None
        peak = mgr.wait(mgr.submit(stay_under, 2 * LIMIT, 0, 0.3), timeout=60)
        assert peak > LIMIT
        mgr.memory_limit = "300MiB"  # a new limit holds for the next job at once
        with pytest.raises(nbbg.JobFailedError, match="limit 300 MiB"):
            mgr.wait(mgr.submit(stay_under, 2 * LIMIT, 0, 0.3), timeout=60)
    finally:
        mgr.shutdown()


def echo_after_growing(n_clicks):
    return stay_under(2 * LIMIT, 0, 0.3)


def test_dash_shows_the_stop_as_the_callback_error(limited: nbbg.LokyManager) -> None:
    """What a poll hands Dash once the job is stopped: its ``background_callback_error``."""
    key = "m" * 64
    job = limited.call_job_fn(key, limited.make_job_fn(echo_after_growing, False), [1], {})
    outcome = wait_until(
        lambda: (value := limited.get_result(key, job)) is not limited.UNDEFINED and value,
        timeout=60,
        what="the job's outcome",
    )
    message = outcome["background_callback_error"]["msg"]
    assert message.startswith("`echo_after_growing` stopped: used ") and "limit 300 MiB" in message
    assert limited.job_running(job) is False, "the error was handed over: polling stops"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (4 * 2**30, MemoryLimit(4 * 2**30)),
        ("4GiB", MemoryLimit(4 * 2**30)),
        ("300MB", MemoryLimit(300 * 10**6, decimal=True)),
        ("1.5 GB", MemoryLimit(1_500_000_000, decimal=True)),
        (" 512 mib ", MemoryLimit(512 * MiB)),
        (None, None),
        ("none", None),
    ],
)
def test_memory_limit_forms(given: object, expected: MemoryLimit | None) -> None:
    assert parse_memory_limit(given) == expected


@pytest.mark.parametrize("given", ["4 parsecs", "", "-1GB", 0, -5, 2.5, True, "GiB", [1]])
def test_a_bad_memory_limit_names_the_accepted_forms(given: object, store_dir: Path) -> None:
    with pytest.raises(ValueError, match=r'memory_limit takes .*"4GiB", "300MB" or "1.5 GB"'):
        nbbg.LokyManager(cache=str(store_dir), memory_limit=given, prewarm=False)  # type: ignore[arg-type]


def test_the_default_is_half_the_memory_and_is_shown_in_both_units() -> None:
    default = default_memory_limit()
    assert default.bytes == max(256 * MiB, usable_memory() // 2)
    assert usable_memory() <= psutil.virtual_memory().total
    assert str(MemoryLimit(int(4.3 * 2**30))) == "4.3 GiB"
    assert str(MemoryLimit(300 * 10**6, decimal=True)) == "300 MB"


def test_on_a_2_gb_binder_the_default_is_1_gib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Binder's container is killed at 2 GB while psutil reports the host's RAM."""
    memory_max = tmp_path / "memory.max"  # what cgroup v2 shows inside the container
    memory_max.write_text(f"{2 * 2**30}\n")
    monkeypatch.setattr(memory_guard, "CGROUP_LIMIT_FILES", ("/nonexistent", str(memory_max)))
    assert usable_memory() == min(2 * 2**30, psutil.virtual_memory().total)
    assert str(default_memory_limit()) == "1 GiB"
    memory_max.write_text("max\n")  # no container limit: the RAM counts
    assert usable_memory() == psutil.virtual_memory().total


def test_percent_nbbg_shows_and_changes_the_limit(tmp_path: Path) -> None:
    with kernel(tmp_path) as session:
        session.run("%load_ext nbbg")
        shown = session.run("%nbbg").stdout
        assert f"memory limit per job: {default_memory_limit()}" in shown
        assert session.run("%nbbg memory 300MiB").stdout.strip() == (
            "nbbg: memory limit per job: 300 MiB"
        )
        bad = session.run("%nbbg memory lots").stdout
        assert bad.startswith("`%nbbg memory` takes a size such as 4GiB") and "usage:" in bad
        kernel_rss = psutil.Process(session.pid).memory_info().rss
        cell = session.run(
            "from nbbg import kernel_manager\n"
            "m = kernel_manager()\n"
            "job = m.submit(lambda: [b'x' * 2**20 for _ in range(2000)])\n"
            "try:\n    m.wait(job, timeout=60)\nexcept Exception as e:\n    print(e)\n"
        )
        assert "stopped: used" in cell.stdout and "limit 300 MiB" in cell.stdout
        grown = psutil.Process(session.pid).memory_info().rss - kernel_rss
        assert grown < KERNEL_RSS_MARGIN, f"the kernel grew by {grown / MiB:.0f} MiB"
        assert session.run("%nbbg memory none").stdout.strip() == (
            "nbbg: memory limit per job: none"
        )
