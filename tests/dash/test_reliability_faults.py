"""Faults: crashed workers, a killed or interrupted kernel, cancel storms, a 100 MB result.

Each fault is injected into real processes; the app (over HTTP), the jobs API
and the process table must all agree afterwards: the hit job reports what
happened, every other job finishes with its own value, and the pool is back
to its size with no process left over.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
from dash import Dash, Input, Output, State, dcc, html

import nbbg
from tests.conftest import pid_gone, wait_until, worker_pids
from tests.support.reliability_helpers import (
    DashClient,
    engine_id,
    error_text,
    kernel,
    kill_leftovers,
    loky_workers,
    run_in_threads,
    serve,
    shown,
    still_running,
)

MAX_JOB_SECONDS = 60.0
"""No job in these tests can run longer, even if a cancel were lost."""


def _work_app(manager: nbbg.LokyManager) -> Dash:
    """One background callback that sleeps, crashes or returns its token, with a cancel button."""
    app = Dash(__name__, background_callback_manager=manager)
    app.layout = html.Div(
        [
            html.Button(id="go"),
            html.Button(id="stop"),
            dcc.Input(id="how", value="sleep"),
            dcc.Input(id="seconds", value=0.2),
            html.Div(id="out"),
        ]
    )

    @app.callback(
        Output("out", "children"),
        Input("go", "n_clicks"),
        State("how", "value"),
        State("seconds", "value"),
        background=True,
        cancel=[Input("stop", "n_clicks")],
        interval=50,
        prevent_initial_call=True,
        on_error=error_text,
    )
    def work(token, how, seconds):
        import resource

        if how in ("exit", "segfault"):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the cwd
        if how == "exit":
            os._exit(3)
        if how == "segfault":
            import ctypes

            ctypes.string_at(0)
        deadline = time.monotonic() + min(float(seconds), MAX_JOB_SECONDS)
        while time.monotonic() < deadline:
            time.sleep(0.02)
        return {"token": token, "pid": os.getpid()}

    return app


def _values(how: str, token: int, seconds: float = 0.2) -> dict[str, object]:
    return {"go": token, "how": how, "seconds": seconds}


@pytest.mark.parametrize("how", ["sigkill", "exit", "segfault"])
def test_crashed_worker_fails_only_its_job_and_the_queue_goes_on(
    manager: nbbg.LokyManager, how: str
) -> None:
    pool_before = wait_until(
        lambda: worker_pids(manager) if len(worker_pids(manager)) == 2 else None,
        timeout=60,
        what="two warm workers",
    )
    other_workers = loky_workers() - pool_before  # other tests' managers, exiting
    with serve(_work_app(manager)) as url, DashClient.open(url) as client:
        crash_how = "sleep" if how == "sigkill" else how
        crashing = client.submit("out", _values(crash_how, 0, MAX_JOB_SECONDS))
        neighbour = client.submit("out", _values("sleep", 1, 2.0))
        queued = [client.submit("out", _values("sleep", k, 0.2)) for k in range(2, 6)]
        crash_id = engine_id(crashing.job)
        if how == "sigkill":
            victim_pid = wait_until(
                lambda: (
                    manager.job(crash_id).worker_pid
                    if manager.job(crash_id).state is nbbg.JobState.RUNNING
                    else None
                ),
                timeout=60,
                what="the job to run",
            )
            os.kill(victim_pid, signal.SIGKILL)

        crashed = client.wait(crashing, timeout=60)
        others = [client.sibling().wait(job, timeout=60) for job in [neighbour, *queued]]

    shown_error = shown(crashed)
    assert crashed.outcome == "done", crashed
    assert "worker process running `work` died" in shown_error, shown_error
    snapshot = manager.job(crash_id)
    assert snapshot.state is nbbg.JobState.ERROR
    assert "died" in snapshot.failure.message and "a fresh worker" in snapshot.failure.message
    assert [shown(r)["token"] for r in others] == [1, 2, 3, 4, 5]
    assert shown(others[0])["pid"] in pool_before, "the neighbour's worker was not touched"

    dead_pid = snapshot.worker_pid
    wait_until(lambda: pid_gone(dead_pid), timeout=30, what="the crashed worker to be gone")
    pool_after = wait_until(
        lambda: worker_pids(manager) if len(worker_pids(manager)) == 2 else None,
        timeout=60,
        what="the slot to get a fresh worker",
    )
    assert dead_pid not in pool_after
    wait_until(
        lambda: loky_workers() - other_workers == pool_after,
        timeout=30,
        what="no worker process beyond the pool",
    )
    print(
        f"\n{how}: the app showed {shown_error[:90]!r}...; "
        f"pool {sorted(pool_before)} -> {sorted(pool_after)}"
    )


@pytest.mark.parametrize("moment", ["workers starting", "jobs running"])
def test_killed_kernel_leaves_no_process_behind(tmp_path: Path, moment: str) -> None:
    """SIGKILL the ipykernel that owns a manager: just created, or with jobs running and queued."""
    marks = tmp_path / "started"
    marks.mkdir()
    with kernel(tmp_path) as session:
        session.run(
            "import os, time, nbbg\n"
            "def long_job(mark):\n"
            "    open(mark, 'w').close()\n"
            "    time.sleep(60)\n"
            f"m = nbbg.LokyManager(max_workers=2, cache={str(tmp_path / 'store')!r})\n"
            f"jobs = [m.submit(long_job, os.path.join({str(marks)!r}, str(k))) for k in range(3)]\n"
        )
        if moment == "jobs running":
            wait_until(lambda: len(list(marks.iterdir())) == 2, timeout=60, what="two jobs")
        spawned, workers = session.descendants(), session.workers()
        try:
            assert len(workers) == 2, spawned
            killed_at = time.monotonic()
            os.kill(session.pid, signal.SIGKILL)
            wait_until(
                lambda: not still_running(spawned),
                timeout=15,
                interval=0.02,
                what=f"the kernel's processes {still_running(spawned)} to exit",
            )
            gone_after = time.monotonic() - killed_at
        finally:
            kill_leftovers(spawned)
    print(
        f"\nkernel SIGKILLed with {moment}: all {len(spawned)} of its processes "
        f"({len(workers)} workers) gone after {gone_after:.2f} s"
    )


def test_interrupting_the_kernel_leaves_jobs_running_to_the_end(tmp_path: Path) -> None:
    """SIGINT to the kernel's process group, repeatedly, while jobs run and wait in the queue."""
    with kernel(tmp_path) as session:
        session.run(
            "import time, nbbg\n"
            "def step(k, seconds):\n"
            "    time.sleep(seconds)\n"
            "    return k\n"
            f"m = nbbg.LokyManager(max_workers=2, cache={str(tmp_path / 'store')!r})\n"
            "jobs = [m.submit(step, k, 1.0) for k in range(6)]\n"
            "deadline = time.monotonic() + 60\n"
            "while time.monotonic() < deadline and m.job(jobs[1]).state.value != 'running':\n"
            "    time.sleep(0.05)\n"
        )
        processes = session.descendants()
        group = os.getpgid(session.pid)
        assert group != os.getpgrp(), "the kernel runs in its own process group"
        started = tmp_path / "busy-cell-started"
        busy_cell = session.start(
            f"import time\nopen({str(started)!r}, 'w').close()\ntime.sleep(60)"
        )
        wait_until(started.exists, timeout=60, what="the busy cell to start")
        interrupts = 0
        for _ in range(6):  # spread over the ~3 s the six jobs take on two workers
            os.killpg(group, signal.SIGINT)
            interrupts += 1
            time.sleep(0.4)
        reply = session.reply(busy_cell, timeout=30)
        assert reply.get("ename") == "KeyboardInterrupt", reply
        out = session.run(
            "import json\n"
            "print(json.dumps([[m.wait(j, timeout=60) for j in jobs],\n"
            "                  sorted({m.job(j).worker_pid for j in jobs}),\n"
            "                  sorted(w.pid for w in m.workers())]))\n"
        )
        results, used, pool = json.loads(out)
        assert results == [0, 1, 2, 3, 4, 5]
        assert used == pool, "every job ran on the original workers: none was killed"
        assert still_running(processes) == sorted(processes), "no kernel child died"
        session.run("m.shutdown()")
    print(f"\n{interrupts} SIGINTs to the kernel's group: 6/6 jobs finished on workers {pool}")


def test_cancel_storm_stops_only_the_targeted_jobs(manager: nbbg.LokyManager) -> None:
    """100 cancels and re-fires, mixed with new jobs, from one tab as fast as it can send."""
    rng = random.Random(6)
    other_workers = loky_workers() - worker_pids(manager)
    victims, survivors = [], []  # (token, BackgroundJob)
    token = 0
    running_when_hit = 0
    with serve(_work_app(manager)) as url, DashClient.open(url) as client:
        for op in range(100):
            victim = client.submit("out", _values("sleep", token, MAX_JOB_SECONDS))
            victims.append((token, victim))
            token += 1
            if rng.random() < 0.5:
                survivors.append((token, client.submit("out", _values("sleep", token, 0.3))))
                token += 1
            if rng.random() < 0.5:  # sometimes let it reach a worker first
                wait_until(
                    lambda v=victim: manager.job(engine_id(v.job)).state.value != "queued",
                    timeout=30,
                    what="the victim to start",
                )
            running_when_hit += manager.job(engine_id(victim.job)).state is nbbg.JobState.RUNNING
            if op % 2 == 0:
                client.cancel(victim)  # the cancel button: &cancelJob=
            else:  # re-fire: the renderer sends &oldJob= with the new request
                refire = client.submit("out", _values("sleep", token, 0.3), old_jobs=(victim,))
                survivors.append((token, refire))
                token += 1

        outcomes: dict[int, tuple[str, object]] = {}

        def poll(k: int) -> None:
            with client.sibling() as tab:
                for number, job in (victims + survivors)[k::8]:
                    result = tab.wait(job, timeout=120)
                    outcomes[number] = (result.outcome, shown(result))

        errors = run_in_threads(8, poll, timeout=240)
    assert errors == [], errors[:3]
    assert {outcomes[n][0] for n, _ in victims} == {"ended"}, "every victim ended without output"
    wrong = [
        (n, outcomes[n])
        for n, _ in survivors
        if outcomes[n][0] != "done" or outcomes[n][1].get("token") != n
    ]
    assert wrong == [], "a job that was not targeted did not finish with its own value"
    states = {manager.job(engine_id(job.job)).state for _, job in victims}
    assert states == {nbbg.JobState.CANCELLED}
    survivor_states = {manager.job(engine_id(job.job)).state for _, job in survivors}
    assert survivor_states == {nbbg.JobState.DONE}

    pool = wait_until(
        lambda: worker_pids(manager) if len(worker_pids(manager)) == 2 else None,
        timeout=60,
        what="two workers",
    )
    wait_until(
        lambda: loky_workers() - other_workers == pool,
        timeout=60,
        what="the process count back to the pool size",
    )
    print(
        f"\ncancel storm: 100 cancels/re-fires ({running_when_hit} hit running jobs, "
        f"{100 - running_when_hit} queued ones), {len(survivors)} other jobs all done, "
        f"worker processes now {len(loky_workers() - other_workers)}"
    )


def make_blob(megabytes: int) -> bytes:
    return bytes(range(256)) * (megabytes * 2**20 // 256)


def test_100_mb_result_is_delivered_and_the_slot_serves_the_next_job(
    manager: nbbg.LokyManager,
) -> None:
    t0 = time.perf_counter()
    blob = manager.wait(manager.submit(make_blob, 100), timeout=120)
    api_seconds = time.perf_counter() - t0
    assert len(blob) == 100 * 2**20 and blob[:3] == b"\x00\x01\x02"
    del blob

    app = Dash(__name__, background_callback_manager=manager)
    app.layout = html.Div([html.Button(id="go"), html.Div(id="out")])

    @app.callback(
        Output("out", "children"),
        Input("go", "n_clicks"),
        background=True,
        interval=100,
        prevent_initial_call=True,
        on_error=error_text,
    )
    def big_text(n):
        return "x" * (100 * 2**20)

    with serve(app) as url, DashClient.open(url, timeout=120) as client:
        t0 = time.perf_counter()
        result = client.run("out", {"go": 1}, timeout=120)
        http_seconds = time.perf_counter() - t0
    text = shown(result)
    assert result.outcome == "done" and len(text) == 100 * 2**20, (result.outcome, text[:200])
    del text, result

    assert manager.wait(manager.submit(make_blob, 1), timeout=60)[:1] == b"\x00"
    assert len(worker_pids(manager)) == 2
    print(f"\n100 MB result: jobs API {api_seconds:.1f} s, over HTTP {http_seconds:.1f} s")
