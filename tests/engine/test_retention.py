"""Nothing computed is thrown away before it is collected: sweeps larger than the history."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dash import Dash, Input, Output, html

import nbbg
from tests.support.helpers import wait_until
from tests.support.reliability_helpers import DashClient, run_in_threads, serve, shown

SWEEP = 5000
DASH_JOBS = 2000
CLIENTS = 8


def square(x: int) -> int:
    return x * x


@pytest.mark.slow
@pytest.mark.timeout(280)
def test_a_5000_job_sweep_waited_in_submit_order_returns_every_result(tmp_path: Path) -> None:
    manager = nbbg.LokyManager(max_workers=2, cache=str(tmp_path / "store"))
    try:
        ids = []
        for x in range(SWEEP):
            ids.append(manager.submit(square, x))
            if x % 50 == 0:
                time.sleep(0.002)  # jobs finish while others are still being submitted
        results = [manager.wait(job_id, timeout=120) for job_id in ids]
        assert results == [x * x for x in range(SWEEP)]
        first_key = manager.job(ids[0]).result_key
        assert first_key in manager.handle
        # Collected jobs beyond the history are forgotten again, their results deleted.
        for x in range(SWEEP, SWEEP + 300):
            manager.wait(manager.submit(square, x), timeout=60)
        remembered = {job.id for job in manager.jobs()}
        assert ids[0] not in remembered
        assert len(remembered) <= 1000 + 1000 // 4 + 1
        with pytest.raises(nbbg.UnknownJobError):
            manager.wait(ids[0])
        wait_until(lambda: first_key not in manager.handle, what="the result to be deleted")
    finally:
        manager.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(280)
def test_2000_dash_jobs_submitted_before_any_poll_are_all_delivered(tmp_path: Path) -> None:
    manager = nbbg.LokyManager(max_workers=2, cache=str(tmp_path / "store"))
    app = Dash(__name__, background_callback_manager=manager)
    app.layout = html.Div([html.Button(id="go"), html.Div(id="out")])

    @app.callback(
        Output("out", "children"),
        Input("go", "n_clicks"),
        background=True,
        interval=20,
        prevent_initial_call=True,
    )
    def echo(token):
        return {"token": token}

    delivered: dict[int, object] = {}
    try:
        with serve(app) as url:
            clients = [DashClient.open(url) for _ in range(CLIENTS)]
            jobs = {}

            def submit(k: int) -> None:
                for token in range(k, DASH_JOBS, CLIENTS):
                    jobs[token] = clients[k].submit("out", {"go": token})

            assert run_in_threads(CLIENTS, submit, timeout=200) == []
            # Every job has run (and its result waits) before the first poll.
            deadline = time.monotonic() + 120
            while any(job.state.active for job in manager.jobs()):
                assert time.monotonic() < deadline, "jobs still running after 120 s"
                time.sleep(0.1)

            def collect(k: int) -> None:
                for token in range(k, DASH_JOBS, CLIENTS):
                    result = clients[k].wait(jobs[token], timeout=60)
                    delivered[token] = shown(result) if result.outcome == "done" else result

            assert run_in_threads(CLIENTS, collect, timeout=200) == []
            for client in clients:
                client.close()
        wrong = {t: v for t, v in delivered.items() if v != {"token": t}}
        assert len(delivered) == DASH_JOBS and not wrong, list(wrong.items())[:5]
    finally:
        manager.shutdown()
