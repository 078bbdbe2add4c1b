"""Dash's background-callback features on LokyManager and RayManager, checked in Chromium.

``manager`` is each manager in turn (``any_manager``: one local Ray on
127.0.0.1 for this module, started once); the tests that build their own
manager (a ``cache_by`` store, a second manager on the same directory) take
the manager's class from ``manager_class``, over the same two.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import diskcache
import pytest
from dash import ALL, MATCH, Dash, Input, Output, State, ctx, dcc, html, no_update, set_props
from dash.exceptions import PreventUpdate

import nbbg
from tests.conftest import wait_until


@pytest.fixture
def manager(any_manager: nbbg.LokyManager) -> nbbg.LokyManager:
    return any_manager


@pytest.fixture(params=["loky", "ray"])
def manager_class(request: pytest.FixtureRequest) -> Any:
    """``LokyManager``, then ``RayManager`` (on the module's local Ray)."""
    if request.param == "ray":
        request.getfixturevalue("local_ray")
        return nbbg.RayManager
    return nbbg.LokyManager


def _show_errors_in(element_id: str):
    def on_error(err):
        set_props(element_id, {"children": str(err)})

    return on_error


def test_refire_replaces_old_job(dash_duo, manager: nbbg.LokyManager) -> None:
    app = Dash(__name__, background_callback_manager=manager)
    app.layout = html.Div([html.Button("go", id="go"), html.Div("idle", id="out")])

    @app.callback(
        Output("out", "children"),
        Input("go", "n_clicks"),
        background=True,
        prevent_initial_call=True,
    )
    def slow(n):
        time.sleep(3 if n == 1 else 0.3)
        return f"run {n}"

    dash_duo.start_server(app)
    dash_duo.find_element("#go").click()
    wait_until(
        lambda: any(j.state is nbbg.JobState.RUNNING for j in manager.jobs()), what="first job"
    )
    dash_duo.find_element("#go").click()
    dash_duo.wait_for_text_to_equal("#out", "run 2", timeout=15)
    states = sorted(j.state.value for j in manager.jobs())
    assert states == ["cancelled", "done"], states


def test_set_props_between_two_polls_all_arrive(dash_duo, manager: nbbg.LokyManager) -> None:
    app = Dash(__name__, background_callback_manager=manager)
    app.layout = html.Div(
        [
            html.Button("go", id="go"),
            html.Div(id="a"),
            html.Div(id="b"),
            html.Div(id="c"),
            html.Div(id="out"),
        ]
    )

    @app.callback(
        Output("out", "children"),
        Input("go", "n_clicks"),
        background=True,
        interval=1500,
        prevent_initial_call=True,
    )
    def three_updates(n):
        set_props("a", {"children": "A"})
        set_props("b", {"children": "B"})
        set_props("c", {"children": "C"})
        time.sleep(2.5)
        return "done"

    dash_duo.start_server(app)
    dash_duo.find_element("#go").click()
    for element_id, text in (("a", "A"), ("b", "B"), ("c", "C")):
        dash_duo.wait_for_text_to_equal(f"#{element_id}", text, timeout=10)
    assert dash_duo.find_element("#out").text == ""  # arrived while the job still ran
    dash_duo.wait_for_text_to_equal("#out", "done", timeout=10)


def test_cache_by_answers_from_store_then_expires(
    dash_duo, tmp_path: Path, manager_class: Any
) -> None:
    runs = diskcache.Cache(str(tmp_path / "runs"))
    manager = manager_class(max_workers=1, cache=str(tmp_path / "store"), expire=5)
    manager.cache_by = lambda: "v1"  # Dash apps assign it after construction
    try:
        app = Dash(__name__, background_callback_manager=manager)
        app.layout = html.Div([dcc.Input(id="word", value="a"), html.Div(id="out")])
        runs_dir = runs.directory

        @app.callback(
            Output("out", "children"), Input("word", "value"), background=True, interval=100
        )
        def shout(word):
            import diskcache as dc

            with dc.Cache(runs_dir) as counter:
                counter.incr(word, default=0)
            time.sleep(0.3)
            return word.upper()

        dash_duo.start_server(app)
        dash_duo.wait_for_text_to_equal("#out", "A", timeout=15)
        word = dash_duo.find_element("#word")
        word.send_keys("b")
        dash_duo.wait_for_text_to_equal("#out", "AB", timeout=15)
        word.send_keys("\b")
        dash_duo.wait_for_text_to_equal("#out", "A", timeout=15)
        assert runs.get("a") == 1, "the second identical call came from the cache"
        assert any(j.cache_hit for j in manager.jobs())
        time.sleep(5.5)  # past `expire` since the entry was last used
        word.send_keys("b")
        dash_duo.wait_for_text_to_equal("#out", "AB", timeout=15)
        assert runs.get("ab") == 2, "after expire the callback ran again"
    finally:
        manager.shutdown()


def test_cache_entries_survive_a_new_manager_on_the_same_directory(
    tmp_path: Path, manager_class: Any
) -> None:
    store = str(tmp_path / "store")
    first = manager_class(max_workers=1, cache=store, cache_by=[lambda: 1])
    job_fn = first.make_job_fn(lambda x: x * 2, False)
    key = "k" * 64
    job = first.call_job_fn(key, job_fn, [21], {})
    first.wait(job, timeout=20)
    assert first.get_result(key, job) == 42
    first.shutdown()

    second = manager_class(max_workers=1, cache=store, cache_by=[lambda: 1], prewarm=False)
    try:
        hit = second.call_job_fn(key, job_fn, [21], {})
        assert second.job(hit).cache_hit and second.job(hit).state is nbbg.JobState.DONE
        assert second.get_result(key, hit) == 42
        assert second.workers() == [], "a cache hit starts no worker"
    finally:
        second.shutdown()


def test_errors_prevent_update_and_no_update(dash_duo, manager: nbbg.LokyManager) -> None:
    app = Dash(__name__, background_callback_manager=manager)
    app.layout = html.Div(
        [
            html.Button("boom", id="boom"),
            html.Button("prevent", id="prevent"),
            html.Button("noup", id="noup"),
            html.Div("untouched", id="out"),
            html.Div("keep", id="out2"),
            html.Div(id="err"),
        ]
    )

    @app.callback(
        Output("out", "children"),
        Input("boom", "n_clicks"),
        background=True,
        prevent_initial_call=True,
        on_error=_show_errors_in("err"),
        interval=100,
    )
    def boom(n):
        raise ValueError(f"bad input {n}")

    @app.callback(
        Output("out", "children", allow_duplicate=True),
        Input("prevent", "n_clicks"),
        background=True,
        prevent_initial_call=True,
        interval=100,
    )
    def prevent(n):
        raise PreventUpdate

    @app.callback(
        Output("out", "children", allow_duplicate=True),
        Output("out2", "children"),
        Input("noup", "n_clicks"),
        background=True,
        prevent_initial_call=True,
        interval=100,
    )
    def partial(n):
        return no_update, "changed"

    dash_duo.start_server(app)
    dash_duo.find_element("#boom").click()
    dash_duo.wait_for_contains_text("#err", "ValueError: bad input 1", timeout=15)
    assert dash_duo.find_element("#out").text == "untouched"
    dash_duo.find_element("#prevent").click()
    dash_duo.find_element("#noup").click()
    dash_duo.wait_for_text_to_equal("#out2", "changed", timeout=15)
    wait_until(lambda: all(not j.state.active for j in manager.jobs()), what="jobs to end")
    assert dash_duo.find_element("#out").text == "untouched"


def test_unpicklable_global_shows_clear_error(dash_duo, manager: nbbg.LokyManager) -> None:
    import threading

    app = Dash(__name__, background_callback_manager=manager)
    app.layout = html.Div([html.Button("go", id="go"), html.Div(id="out"), html.Div(id="err")])
    namespace = {"__name__": "__main__", "threading": threading}
    exec("LOCK = threading.Lock()\ndef locked(n):\n    return str(LOCK.locked())\n", namespace)
    app.callback(
        Output("out", "children"),
        Input("go", "n_clicks"),
        background=True,
        prevent_initial_call=True,
        on_error=_show_errors_in("err"),
        interval=100,
    )(namespace["locked"])

    dash_duo.start_server(app)
    dash_duo.find_element("#go").click()
    dash_duo.wait_for_contains_text(
        "#err", "uses global `LOCK`, which cannot be pickled", timeout=15
    )
    assert "pass what it needs as an argument" in dash_duo.find_element("#err").text
    assert [j.state for j in manager.jobs()] == [nbbg.JobState.ERROR]


def test_pattern_matching_triggered_id_and_state_order(dash_duo, manager: nbbg.LokyManager) -> None:
    app = Dash(__name__, background_callback_manager=manager)
    app.layout = html.Div(
        [
            *[html.Button(f"b{i}", id={"type": "btn", "index": i}) for i in range(3)],
            *[html.Div(id={"type": "out", "index": i}) for i in range(3)],
            dcc.Input(id="first", value="x"),
            dcc.Input(id="second", value="y"),
            html.Div(id="all"),
        ]
    )

    @app.callback(
        Output({"type": "out", "index": MATCH}, "children"),
        Input({"type": "btn", "index": MATCH}, "n_clicks"),
        State("first", "value"),
        State("second", "value"),
        background=True,
        prevent_initial_call=True,
        interval=100,
    )
    def match(n, first, second):
        return f"{ctx.triggered_id['index']}:{n}:{first}{second}"

    @app.callback(
        Output("all", "children"),
        Input({"type": "btn", "index": ALL}, "n_clicks"),
        background=True,
        prevent_initial_call=True,
        interval=100,
    )
    def total(clicks):
        return f"total {sum(c or 0 for c in clicks)}"

    dash_duo.start_server(app)
    dash_duo.find_element('#\\{\\"index\\"\\:2\\,\\"type\\"\\:\\"btn\\"\\}').click()
    dash_duo.wait_for_text_to_equal(
        '#\\{\\"index\\"\\:2\\,\\"type\\"\\:\\"out\\"\\}', "2:1:xy", timeout=15
    )
    dash_duo.wait_for_text_to_equal("#all", "total 1", timeout=15)


def test_async_background_callback(dash_duo, manager: nbbg.LokyManager) -> None:
    app = Dash(__name__, background_callback_manager=manager)
    app.layout = html.Div([html.Button("go", id="go"), html.Div(id="out")])

    @app.callback(
        Output("out", "children"),
        Input("go", "n_clicks"),
        background=True,
        prevent_initial_call=True,
        interval=100,
    )
    async def fetch(n):
        import asyncio

        await asyncio.sleep(0.2)
        return f"async {n}"

    dash_duo.start_server(app)
    dash_duo.find_element("#go").click()
    dash_duo.wait_for_text_to_equal("#out", "async 1", timeout=15)


def test_multi_page_app(dash_duo, manager: nbbg.LokyManager) -> None:
    import dash

    app = Dash(__name__, background_callback_manager=manager, use_pages=True, pages_folder="")
    dash.register_page(
        "home", path="/", layout=html.Div(dcc.Link("to work", href="/work", id="link"))
    )
    dash.register_page(
        "work", path="/work", layout=html.Div([html.Button("go", id="go"), html.Div(id="out")])
    )
    app.layout = html.Div([dash.page_container])

    @dash.callback(
        Output("out", "children"),
        Input("go", "n_clicks"),
        background=True,
        prevent_initial_call=True,
        interval=100,
    )
    def work(n):
        return f"worked {n}"

    try:
        dash_duo.start_server(app)
        dash_duo.find_element("#link").click()
        dash_duo.find_element("#go").click()
        dash_duo.wait_for_text_to_equal("#out", "worked 1", timeout=15)
    finally:
        dash.page_registry.clear()
