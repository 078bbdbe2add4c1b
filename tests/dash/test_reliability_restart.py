"""Restart and coexistence: shutdown() then a new manager; two managers in one kernel."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
from dash import Dash, Input, Output, html

import nbbg
from tests.conftest import pid_gone, wait_until, worker_pids
from tests.support.reliability_helpers import (
    DashClient,
    engine_id,
    error_text,
    loky_workers,
    serve,
    shown,
)


def _pid_app(manager: nbbg.LokyManager, seconds: float = 0.0) -> Dash:
    """A fresh app per "cell", as the notebook docs recommend."""
    app = Dash(__name__, background_callback_manager=manager)
    app.layout = html.Div([html.Button(id="go"), html.Button(id="stop"), html.Div(id="out")])

    @app.callback(
        Output("out", "children"),
        Input("go", "n_clicks"),
        background=True,
        cancel=[Input("stop", "n_clicks")],
        interval=50,
        prevent_initial_call=True,
        on_error=error_text,
    )
    def whose(n):
        time.sleep(seconds)
        return {"n": n, "pid": os.getpid()}

    return app


def _pool(manager: nbbg.LokyManager, size: int) -> set[int]:
    return wait_until(
        lambda: worker_pids(manager) if len(worker_pids(manager)) == size else None,
        timeout=60,
        what=f"{size} workers",
    )


def test_shutdown_then_a_new_manager_in_the_same_process_works(tmp_path: Path) -> None:
    others = loky_workers()
    store = str(tmp_path / "store")
    for cycle in range(3):
        manager = nbbg.LokyManager(max_workers=2, cache=store)
        pool = _pool(manager, 2)
        app = _pid_app(manager)
        with serve(app) as url, DashClient.open(url) as tab:
            answers = [shown(tab.run("out", {"go": n}, timeout=60)) for n in range(3)]
            assert [a["n"] for a in answers] == [0, 1, 2]
            assert {a["pid"] for a in answers} <= pool
            assert manager.wait(manager.submit(sum, [cycle, 1]), timeout=60) == cycle + 1
            manager.shutdown()
            # The old app still served: a click now gets a clear error, not a 500.
            late = tab.run("out", {"go": 9}, timeout=60)
        assert "this nbbg manager was shut down" in shown(late)
        wait_until(lambda p=pool: all(map(pid_gone, p)), timeout=30, what="old workers gone")
        with pytest.raises(nbbg.ShutdownError):
            manager.submit(sum, [1])
    wait_until(lambda: not (loky_workers() - others), timeout=30, what="no worker left")
    print("\n3 shutdown/new-manager cycles in one process: all served, 0 workers left")


def test_two_managers_in_one_kernel_keep_their_own_jobs(tmp_path: Path) -> None:
    """Same store directory (so Dash shares one signing secret), same callback, same inputs."""
    store = str(tmp_path / "store")
    first = nbbg.LokyManager(max_workers=1, cache=store)
    second = nbbg.LokyManager(max_workers=1, cache=store)
    try:
        first_pool, second_pool = _pool(first, 1), _pool(second, 1)
        with (
            serve(_pid_app(first, seconds=1.0)) as first_url,
            serve(_pid_app(second, seconds=1.0)) as second_url,
            DashClient.open(first_url) as first_tab,
            DashClient.open(second_url) as second_tab,
        ):
            first_job = first_tab.submit("out", {"go": 1})  # same callback, same inputs:
            second_job = second_tab.submit("out", {"go": 1})  # the same Dash cache key
            assert first_job.cache_key.partition("~")[0] == second_job.cache_key.partition("~")[0]
            first_id, second_id = engine_id(first_job.job), engine_id(second_job.job)

            # Each manager ignores the other's ids, through every door.
            assert first.job(second_id) is None and second.job(first_id) is None
            assert first.cancel(second_id) is False
            first.terminate_job(second_id)
            assert first.job_running(second_id) is False
            with pytest.raises(nbbg.UnknownJobError):
                first.wait(second_id, timeout=0.1)
            # The second page's handles sent to the first server (they verify there:
            # the signing secret lives in the shared store) reach `first`, which
            # does not know that job.
            stray = DashClient(dataclasses.replace(second_tab.page, port=first_tab.page.port))
            assert stray.poll(second_job)[0] == 204
            stray.cancel(second_job)  # the cancel button, on the wrong server
            stray.close()
            assert second.job(second_id).state.active

            first_answer = first_tab.wait(first_job, timeout=60)
            first.shutdown()  # the second manager keeps serving
            second_answer = second_tab.wait(second_job, timeout=60)
            again = second_tab.run("out", {"go": 2}, timeout=60)
        assert shown(first_answer)["pid"] in first_pool
        assert shown(second_answer)["pid"] in second_pool
        assert shown(again)["pid"] in second_pool
        assert {j.id for j in first.jobs()}.isdisjoint({j.id for j in second.jobs()})
        assert second.job(second_id).state is nbbg.JobState.DONE
        print("\ntwo managers, one store: no job seen, cancelled or answered by the other")
    finally:
        first.shutdown()
        second.shutdown()
