"""The benchmark's Dash app: the same callbacks served by each manager.

Run as a script (``python bench/apps.py``), so its callbacks live in
``__main__`` exactly as they do in a notebook: cloudpickle then sends them by
value, with the globals they read. A Celery worker imports the same file as
``bench.apps`` and registers the same task names (Dash names a task after the
callback's source and id).

Configuration comes from the environment, so that the server and a Celery
worker built from this file agree:

``BENCH_MANAGER``   ``loky`` | ``diskcache`` | ``celery`` | ``floor`` | ``pfloor`` (the two floors)
``BENCH_STORE``     a private directory for the manager's store
``BENCH_REDIS_URL`` broker and result backend (Celery only)
``BENCH_BIG``       ``1``: hold a 100 MB global that ``read_big`` reads
``BENCH_PORT``      the port to serve on (server only; 127.0.0.1)

Callbacks, one per measurement (all ``prevent_initial_call``):

``noop``       returns its input                     (turnaround, throughput, prewarm)
``noop_calm``  the same, polled every 100 ms          (throughput at a realistic polling rate)
``progress``   stamps ``time.time()`` into set_progress (progress latency)
``cost``       set_progress in a hot loop for 0.5 s, timed in-job (set_progress cost,
               progress delivered)
``spin``       burns CPU until cancelled or a time limit (cancel, oldJob)
``steady``     sleeps in small steps, returns a checksum (concurrent job, memory)
``read_big``   reads the 100 MB global               (100 MB global overhead)
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from dash import Dash, Input, Output, State, dcc, html

NOOP_INTERVAL_MS = 2
CALM_INTERVAL_MS = 100
PROGRESS_INTERVAL_MS = 20
SLOW_INTERVAL_MS = 20
SPIN_LIMIT_S = 30.0
COST_SECONDS = 0.5
"""Long enough for ~25 polls at 20 ms: the client counts the updates that reach it."""
COST_MAX_CALLS = 50_000_000
"""A bound only: at 10 ns or more per call the time limit ends the loop first."""
BIG_BYTES = 100 * 2**20

MANAGER_KIND = os.environ.get("BENCH_MANAGER", "loky")
STORE = os.environ.get("BENCH_STORE", "")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "")

# Real, distinct pages (a zero-filled buffer would be mapped lazily and cost
# nothing to hold): the notebook's "I loaded a big table" global.
BIG = bytes(range(256)) * (BIG_BYTES // 256) if os.environ.get("BENCH_BIG") == "1" else b""


def make_manager() -> Any:
    if MANAGER_KIND == "loky":
        import nbbg

        return nbbg.LokyManager(cache=STORE or None)
    if MANAGER_KIND == "ray":
        import nbbg

        # A local Ray on 127.0.0.1, no dashboard (its defaults), as many CPUs as loky workers.
        return nbbg.RayManager(cache=STORE or None, num_cpus=os.cpu_count() or 1)
    if MANAGER_KIND == "diskcache":
        import diskcache
        from dash import DiskcacheManager

        return DiskcacheManager(diskcache.Cache(STORE or None))
    if MANAGER_KIND == "celery":
        from dash import CeleryManager

        return CeleryManager(celery_app)
    if MANAGER_KIND == "floor":
        from bench.floor import ThreadFloorManager

        return ThreadFloorManager()
    if MANAGER_KIND == "pfloor":
        from bench.process_floor import ProcessFloorManager

        return ProcessFloorManager()
    raise SystemExit(
        f"BENCH_MANAGER must be loky, ray, diskcache, celery, floor or pfloor, not {MANAGER_KIND!r}"
    )


def make_celery() -> Any:
    from celery import Celery

    app = Celery("bench_apps", broker=REDIS_URL, backend=REDIS_URL)
    app.conf.update(
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


celery_app = make_celery() if MANAGER_KIND == "celery" else None
manager = make_manager()

app = Dash(__name__, background_callback_manager=manager)
app.layout = html.Div(
    [
        html.Button(id="noop-go"),
        html.Div(id="noop-out"),
        html.Button(id="calm-go"),
        html.Div(id="calm-out"),
        html.Button(id="progress-go"),
        dcc.Input(id="progress-updates", value=200),
        dcc.Input(id="progress-period", value=0.005),
        html.Progress(id="progress-bar"),
        html.Div(id="progress-out"),
        html.Button(id="cost-go"),
        html.Progress(id="cost-bar"),
        html.Div(id="cost-out"),
        html.Button(id="spin-go"),
        dcc.Input(id="spin-seconds", value=SPIN_LIMIT_S),
        html.Button(id="spin-cancel"),
        html.Div(id="spin-out"),
        html.Button(id="steady-go"),
        dcc.Input(id="steady-seconds", value=1.0),
        html.Div(id="steady-out"),
        html.Button(id="big-go"),
        html.Div(id="big-out"),
    ]
)


@app.callback(
    Output("noop-out", "children"),
    Input("noop-go", "n_clicks"),
    background=True,
    interval=NOOP_INTERVAL_MS,
    prevent_initial_call=True,
)
def noop(n_clicks: int) -> int:
    return n_clicks


@app.callback(
    Output("calm-out", "children"),
    Input("calm-go", "n_clicks"),
    background=True,
    interval=CALM_INTERVAL_MS,
    prevent_initial_call=True,
)
def noop_calm(n_clicks: int) -> int:
    return n_clicks


@app.callback(
    Output("progress-out", "children"),
    Input("progress-go", "n_clicks"),
    State("progress-updates", "value"),
    State("progress-period", "value"),
    background=True,
    progress=Output("progress-bar", "value"),
    interval=PROGRESS_INTERVAL_MS,
    prevent_initial_call=True,
)
def progress(set_progress: Any, n_clicks: int, updates: str, period: str) -> int:
    for _ in range(int(updates)):
        set_progress(time.time())
        time.sleep(float(period))
    return int(updates)


@app.callback(
    Output("cost-out", "children"),
    Input("cost-go", "n_clicks"),
    background=True,
    progress=Output("cost-bar", "value"),
    interval=SLOW_INTERVAL_MS,
    prevent_initial_call=True,
)
def cost(set_progress: Any, n_clicks: int) -> dict[str, float]:
    # Calls in batches of 100 so the clock is read rarely; bounded in calls and time.
    calls = 0
    start = time.perf_counter()
    deadline = start + COST_SECONDS
    while calls < COST_MAX_CALLS and time.perf_counter() < deadline:
        for i in range(100):
            set_progress(i)
        calls += 100
    elapsed = time.perf_counter() - start
    return {"calls": calls, "seconds": elapsed}


@app.callback(
    Output("spin-out", "children"),
    Input("spin-go", "n_clicks"),
    State("spin-seconds", "value"),
    background=True,
    cancel=Input("spin-cancel", "n_clicks"),
    interval=SLOW_INTERVAL_MS,
    prevent_initial_call=True,
)
def spin(n_clicks: int, seconds: str) -> int:
    deadline = time.monotonic() + min(float(seconds), SPIN_LIMIT_S)
    turns = 0
    while time.monotonic() < deadline:
        turns += 1
    return turns


@app.callback(
    Output("steady-out", "children"),
    Input("steady-go", "n_clicks"),
    State("steady-seconds", "value"),
    background=True,
    interval=SLOW_INTERVAL_MS,
    prevent_initial_call=True,
)
def steady(n_clicks: int, seconds: str) -> dict[str, int]:
    total = 0
    steps = max(1, int(float(seconds) / 0.01))
    for step in range(steps):
        time.sleep(0.01)
        total += step
    return {"n_clicks": n_clicks, "checksum": total, "steps": steps}


@app.callback(
    Output("big-out", "children"),
    Input("big-go", "n_clicks"),
    background=True,
    interval=NOOP_INTERVAL_MS,
    prevent_initial_call=True,
)
def read_big(n_clicks: int) -> dict[str, int]:
    return {"n_clicks": n_clicks, "size": len(BIG), "byte": BIG[n_clicks % len(BIG)] if BIG else 0}


if __name__ == "__main__":
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no log line per request
    try:
        app.run(host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), debug=False)
    finally:
        shutdown = getattr(manager, "shutdown", None)
        if shutdown is not None:
            shutdown()
