"""RayManager keeps LokyManager's Dash semantics, over HTTP through a real Dash server.

Each test runs on both managers (``any_manager``): a two-worker LokyManager,
then a RayManager on a real local Ray (127.0.0.1, ``num_cpus=2``, started once
for this module). Then Ray's own faults: a Ray worker killed mid-job, an
unreachable address, an unpicklable global.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest
from dash import Dash, Input, Output, State, dcc, html, set_props

import nbbg
from nbbg.client import DashClient
from tests.support.helpers import free_port, pid_gone, wait_until
from tests.support.reliability_helpers import engine_id, error_text, serve, shown


def _app(manager: Any, cache_by: bool = False) -> Dash:
    app = Dash(__name__, background_callback_manager=manager)
    app.layout = html.Div(
        [
            html.Button(id="go"),
            html.Button(id="stop"),
            dcc.Input(id="how", value="ok"),
            dcc.Input(id="seconds", value=0.2),
            html.Div(id="out"),
            html.Div(id="status"),
            html.Div(id="side"),
        ]
    )

    @app.callback(
        Output("out", "children"),
        Input("go", "n_clicks"),
        State("how", "value"),
        State("seconds", "value"),
        background=True,
        progress=[Output("status", "children")],
        cancel=[Input("stop", "n_clicks")],
        interval=50,
        prevent_initial_call=True,
        on_error=error_text,
    )
    def work(set_progress, token, how, seconds):
        if how == "fail":
            raise ValueError(f"bad input {token}")
        deadline = time.monotonic() + float(seconds)
        step = 0
        while time.monotonic() < deadline:
            step += 1
            set_progress(f"step {step}")
            time.sleep(0.02)
        set_props("side", {"children": f"side {token}"})
        return {"token": token, "pid": os.getpid(), "steps": step}

    return app


def _poll_to_end(client: DashClient, job: Any, timeout: float) -> tuple[Any, list[Any]]:
    """Poll as the browser does; return the final response and every ``sideUpdate`` seen."""
    sides: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        status, data = client.poll(job)
        assert status == 200, (status, data)
        if "sideUpdate" in data:
            sides.append(data["sideUpdate"])
        if "response" in data:
            return data["response"], sides
    raise AssertionError("the job did not answer in time")


def test_progress_set_props_and_result(any_manager: Any) -> None:
    with serve(_app(any_manager)) as url, DashClient.open(url) as client:
        job = client.submit("out", {"go": 1, "how": "ok", "seconds": 1.0})
        response, sides = _poll_to_end(client, job, timeout=60)
    value = response["out"]["children"]
    assert value["token"] == 1 and value["steps"] > 5
    seen = [progress for _at, progress in job.progress]
    assert seen and all(str(p).startswith("step ") for p in seen), seen
    assert {"side": {"children": "side 1"}} in sides, sides
    print(f"{type(any_manager).__name__}: {len(seen)} progress values over {job.polls} polls")


def test_error_reaches_the_app(any_manager: Any) -> None:
    with serve(_app(any_manager)) as url, DashClient.open(url) as client:
        result = client.run("out", {"go": 7, "how": "fail", "seconds": 0}, timeout=60)
    assert result.outcome == "done", result
    assert "ValueError: bad input 7" in shown(result), shown(result)


def test_cancel_stops_only_that_jobs_process_and_the_queue_goes_on(any_manager: Any) -> None:
    with serve(_app(any_manager)) as url, DashClient.open(url) as client:
        long = client.submit("out", {"go": 1, "how": "ok", "seconds": 60})
        neighbour = client.sibling().submit("out", {"go": 2, "how": "ok", "seconds": 1.5})
        queued = client.sibling().submit("out", {"go": 3, "how": "ok", "seconds": 0.1})
        long_id = engine_id(long.job)
        pid = wait_until(
            lambda: any_manager.job(long_id).worker_pid, timeout=60, what="the long job to run"
        )
        started = time.perf_counter()
        client.cancel(long)
        wait_until(lambda: pid_gone(pid), timeout=10, what="the cancelled job's process to end")
        gone_after = time.perf_counter() - started
        done = [client.sibling().wait(job, timeout=60) for job in (neighbour, queued)]
    assert any_manager.job(long_id).state is nbbg.JobState.CANCELLED
    assert [shown(r)["token"] for r in done] == [2, 3]
    assert shown(done[0])["pid"] != pid
    print(f"{type(any_manager).__name__}: cancel -> process gone in {gone_after * 1000:.0f} ms")


def test_cache_by_answers_from_the_kernels_store(any_manager: Any) -> None:
    version = {"v": 1}
    any_manager.cache_by = [lambda: version["v"]]
    with serve(_app(any_manager)) as url, DashClient.open(url) as client:
        first = client.run("out", {"go": 1, "how": "ok", "seconds": 0}, timeout=60)
        second = client.run("out", {"go": 1, "how": "ok", "seconds": 0}, timeout=60)
        version["v"] = 2
        third = client.run("out", {"go": 1, "how": "ok", "seconds": 0}, timeout=60)
    runs = [shown(r) for r in (first, second, third)]
    assert runs[0] == runs[1], "the second identical call came from the store"
    ran = [job for job in any_manager.jobs() if job.name == "work"]
    assert len(ran) == 3
    assert [job.worker_pid is None for job in ran] == [False, True, False], ran
    assert len(any_manager.handle) >= 2  # both versions' results, in the kernel's store


def test_unpicklable_global_gives_a_clear_error(any_manager: Any) -> None:
    lock = threading.Lock()

    def uses_lock() -> str:
        return str(lock)

    with pytest.raises(nbbg.UnpicklableCallbackError, match="lock"):
        any_manager.submit(uses_lock)
    job = any_manager.submit(lambda: 41 + 1)
    assert any_manager.wait(job, 60) == 42, "the manager keeps serving"


# ---------------------------------------------------------------- Ray's own faults
@pytest.fixture
def ray_manager(local_ray: None, store_dir: Any) -> Any:
    manager = nbbg.RayManager(max_workers=2, cache=str(store_dir))
    yield manager
    manager.shutdown()


def test_a_ray_worker_killed_mid_job_fails_only_that_job(ray_manager: Any) -> None:
    with serve(_app(ray_manager)) as url, DashClient.open(url) as client:
        victim = client.submit("out", {"go": 1, "how": "ok", "seconds": 60})
        victim_id = engine_id(victim.job)
        pid = wait_until(
            lambda: ray_manager.job(victim_id).worker_pid, timeout=60, what="the job to run"
        )
        os.kill(pid, signal.SIGKILL)
        crashed = client.wait(victim, timeout=60)
        after = client.run("out", {"go": 2, "how": "ok", "seconds": 0.1}, timeout=60)
    message = shown(crashed)
    assert "Ray lost the task running `work` before the job finished" in message, message
    assert ray_manager.job(victim_id).state is nbbg.JobState.ERROR
    assert shown(after)["token"] == 2 and shown(after)["pid"] != pid


def test_a_job_names_its_own_process_not_the_previous_jobs(local_ray: None, store_dir: Any) -> None:
    """Ray picks a process per task: a job's pid is unknown until its task starts.

    The slot's previous job ran in some process; the next job may run in
    another, so showing that pid before the task says where it runs would name
    a process that is not running the job (a user watching it after a cancel
    would see it live on). Here every CPU of the cluster is held by other
    tasks, so the second job is certainly waiting for Ray when it is looked at.
    """
    import ray

    manager = nbbg.RayManager(max_workers=1, cache=str(store_dir))
    try:
        first = manager.submit(os.getpid)
        first_pid = manager.wait(first, timeout=60)
        assert manager.job(first).worker_pid == first_pid

        def hold(seconds: float) -> None:
            time.sleep(seconds)

        cpus = int(ray.cluster_resources()["CPU"])
        holders = [ray.remote(num_cpus=1)(hold).remote(3) for _ in range(cpus)]
        wait_until(
            lambda: ray.available_resources().get("CPU", 0) == 0, timeout=30, what="CPUs held"
        )
        second = manager.submit(os.getpid)
        shown_while_waiting = manager.job(second).worker_pid
        ran_in = manager.wait(second, timeout=60)
        ray.get(holders)
    finally:
        manager.shutdown()
    assert shown_while_waiting is None, (shown_while_waiting, first_pid, ran_in)
    assert manager.job(second).worker_pid == ran_in


def test_an_unreachable_address_names_it(local_ray: None) -> None:
    import ray

    ray.shutdown()  # a kernel not yet connected
    try:
        address = f"127.0.0.1:{free_port()}"
        started = time.perf_counter()
        with pytest.raises(nbbg.RayUnreachableError, match=address.replace(".", r"\.")):
            nbbg.RayManager(address=address)
        assert time.perf_counter() - started < 10
        assert not ray.is_initialized()
    finally:
        from tests.support.ray_helpers import start_local_ray

        start_local_ray()


def test_ray_manager_without_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # "import ray" raises ImportError
    with pytest.raises(nbbg.RayNotInstalledError, match=r'pip install "nbbg\[ray\]"'):
        nbbg.RayManager()


def test_a_job_sees_a_large_global_as_at_submit(any_manager: Any) -> None:
    import numpy as np

    table = np.arange(1_000_000, dtype=np.int64)  # 8 MB: shipped by digest, apart from the code

    def total() -> int:
        return int(table.sum())

    first = any_manager.submit(total)
    assert any_manager.wait(first, 60) == int(np.arange(1_000_000).sum())
    table[:] = 1  # an edit in place, as a later cell would make it
    second = any_manager.submit(total)
    table[:] = 2  # after the submit: the job must not see it
    assert any_manager.wait(second, 60) == 1_000_000
