"""The five examples of Dash's background-callbacks page, on Loky- and RayManager, in Chromium.

Each test builds the example as the page does (only the manager line differs)
and asserts what a person sees in the browser. ``manager`` is each of the two
managers in turn (``any_manager``: Ray starts once for this module).
"""

from __future__ import annotations

import time

import plotly.graph_objects as go
import pytest
from dash import Dash, Input, Output, dcc, html

import nbbg
from tests.support.helpers import wait_until


@pytest.fixture
def manager(any_manager: nbbg.LokyManager) -> nbbg.LokyManager:
    return any_manager


def _buttons_layout(*extra):
    return html.Div(
        [
            html.Div([html.P(id="paragraph_id", children=["Button not clicked"]), *extra]),
            html.Button(id="button_id", children="Run Job!"),
            html.Button(id="cancel_button_id", children="Cancel Running Job!"),
        ]
    )


def _disabled(dash_duo, selector: str) -> bool:
    return dash_duo.find_element(selector).get_attribute("disabled") is not None


def test_example1_simple_shows_result(dash_duo, manager: nbbg.LokyManager) -> None:
    app = Dash(__name__)
    app.layout = html.Div(
        [
            html.Div([html.P(id="paragraph_id", children=["Button not clicked"])]),
            html.Button(id="button_id", children="Run Job!"),
        ]
    )

    @app.callback(
        output=Output("paragraph_id", "children"),
        inputs=Input("button_id", "n_clicks"),
        background=True,
        manager=manager,
    )
    def update_clicks(n_clicks):
        time.sleep(0.5)
        return [f"Clicked {n_clicks} times"]

    dash_duo.start_server(app)
    dash_duo.wait_for_text_to_equal("#paragraph_id", "Clicked None times", timeout=15)
    dash_duo.find_element("#button_id").click()
    dash_duo.wait_for_text_to_equal("#paragraph_id", "Clicked 1 times", timeout=15)
    assert dash_duo.get_logs() == []


def test_example2_button_disabled_while_running(dash_duo, manager: nbbg.LokyManager) -> None:
    app = Dash(__name__, background_callback_manager=manager)
    app.layout = _buttons_layout()

    @app.callback(
        output=Output("paragraph_id", "children"),
        inputs=Input("button_id", "n_clicks"),
        background=True,
        running=[(Output("button_id", "disabled"), True, False)],
        prevent_initial_call=True,
    )
    def update_clicks(n_clicks):
        time.sleep(1.5)
        return [f"Clicked {n_clicks} times"]

    dash_duo.start_server(app)
    dash_duo.find_element("#button_id").click()
    dash_duo.wait_for_element("#button_id[disabled]", timeout=10)
    dash_duo.wait_for_text_to_equal("#paragraph_id", "Clicked 1 times", timeout=15)
    dash_duo.wait_for_element("#button_id:not([disabled])", timeout=10)


def test_example3_cancel_keeps_old_output(dash_duo, manager: nbbg.LokyManager) -> None:
    app = Dash(__name__, background_callback_manager=manager)
    app.layout = _buttons_layout()

    @app.callback(
        output=Output("paragraph_id", "children"),
        inputs=Input("button_id", "n_clicks"),
        background=True,
        running=[
            (Output("button_id", "disabled"), True, False),
            (Output("cancel_button_id", "disabled"), False, True),
        ],
        cancel=[Input("cancel_button_id", "n_clicks")],
        prevent_initial_call=True,
    )
    def update_clicks(n_clicks):
        time.sleep(30)
        return [f"Clicked {n_clicks} times"]

    dash_duo.start_server(app)
    dash_duo.wait_for_element("#cancel_button_id", timeout=10)
    dash_duo.find_element("#button_id").click()
    dash_duo.wait_for_element("#cancel_button_id:not([disabled])", timeout=10)
    # The renderer enables Cancel as it sends the request: wait for the job itself.
    running = wait_until(
        lambda: [job for job in manager.jobs() if job.state is nbbg.JobState.RUNNING],
        what="the job to run",
    )
    assert len(running) == 1
    dash_duo.find_element("#cancel_button_id").click()
    # The job ends: the button comes back, the old text stays, the job is cancelled.
    dash_duo.wait_for_element("#button_id:not([disabled])", timeout=10)
    dash_duo.wait_for_element("#cancel_button_id[disabled]", timeout=10)
    assert dash_duo.find_element("#paragraph_id").text == "Button not clicked"
    assert manager.job(running[0].id).state is nbbg.JobState.CANCELLED


def test_example4_progress_bar_moves_and_ends(dash_duo, manager: nbbg.LokyManager) -> None:
    app = Dash(__name__, background_callback_manager=manager)
    app.layout = _buttons_layout(html.Progress(id="progress_bar", value="0"))

    @app.callback(
        output=Output("paragraph_id", "children"),
        inputs=Input("button_id", "n_clicks"),
        background=True,
        running=[
            (Output("button_id", "disabled"), True, False),
            (Output("cancel_button_id", "disabled"), False, True),
            (Output("paragraph_id", "style"), {"visibility": "hidden"}, {"visibility": "visible"}),
            (Output("progress_bar", "style"), {"visibility": "visible"}, {"visibility": "hidden"}),
        ],
        cancel=Input("cancel_button_id", "n_clicks"),
        progress=[Output("progress_bar", "value"), Output("progress_bar", "max")],
        interval=100,
        prevent_initial_call=True,
    )
    def update_progress(set_progress, n_clicks):
        total = 5
        for i in range(total + 1):
            set_progress((str(i), str(total)))
            time.sleep(0.4)
        return f"Clicked {n_clicks} times"

    dash_duo.start_server(app)
    dash_duo.find_element("#button_id").click()
    seen = set()
    deadline = time.monotonic() + 20
    while (
        time.monotonic() < deadline
        and "Clicked 1 times" not in dash_duo.find_element("#paragraph_id").text
    ):
        bar = dash_duo.find_element("#progress_bar")
        if bar.get_attribute("max") == "5":
            seen.add(bar.get_attribute("value"))
        time.sleep(0.05)
    dash_duo.wait_for_text_to_equal("#paragraph_id", "Clicked 1 times", timeout=5)
    assert len(seen) >= 3, f"progress bar values seen: {sorted(seen)}"
    assert {"4", "5"} & seen
    assert dash_duo.find_element("#progress_bar").get_attribute("style") == "visibility: hidden;"
    dash_duo.wait_for_element("#button_id:not([disabled])", timeout=10)


def make_progress_graph(progress, total):
    return (
        go.Figure(data=[go.Bar(x=[progress])])
        .update_xaxes(range=[0, total])
        .update_yaxes(showticklabels=False)
        .update_layout(height=100, margin=dict(t=20, b=40))
    )


def test_example5_progress_figure_and_default(dash_duo, manager: nbbg.LokyManager) -> None:
    app = Dash(__name__, background_callback_manager=manager)
    app.layout = _buttons_layout(
        dcc.Graph(id="progress_bar_graph", figure=make_progress_graph(0, 10))
    )
    bar_widths: list[float] = []

    @app.callback(
        output=Output("paragraph_id", "children"),
        inputs=Input("button_id", "n_clicks"),
        background=True,
        running=[
            (Output("button_id", "disabled"), True, False),
            (Output("cancel_button_id", "disabled"), False, True),
            (Output("paragraph_id", "style"), {"visibility": "hidden"}, {"visibility": "visible"}),
            (
                Output("progress_bar_graph", "style"),
                {"visibility": "visible"},
                {"visibility": "hidden"},
            ),
        ],
        cancel=[Input("cancel_button_id", "n_clicks")],
        progress=Output("progress_bar_graph", "figure"),
        progress_default=make_progress_graph(0, 10),
        interval=100,
        prevent_initial_call=True,
    )
    def update_progress(set_progress, n_clicks):
        total = 10
        for i in range(total):
            time.sleep(0.25)
            set_progress(make_progress_graph(i, 10))
        return [f"Clicked {n_clicks} times"]

    def bar_x():
        return dash_duo.driver.execute_script(
            "const g = document.querySelector('#progress_bar_graph .js-plotly-plot');"
            "return g && g.data ? g.data[0].x[0] : null;"
        )

    dash_duo.start_server(app)
    dash_duo.wait_for_element("#progress_bar_graph .js-plotly-plot", timeout=15)
    dash_duo.find_element("#button_id").click()
    deadline = time.monotonic() + 20
    while (
        time.monotonic() < deadline
        and "Clicked 1 times" not in dash_duo.find_element("#paragraph_id").text
    ):
        value = bar_x()
        if value is not None and (not bar_widths or bar_widths[-1] != value):
            bar_widths.append(value)
        time.sleep(0.05)
    dash_duo.wait_for_text_to_equal("#paragraph_id", "Clicked 1 times", timeout=5)
    assert max(bar_widths) >= 7, f"bar widths seen: {bar_widths}"
    assert len(set(bar_widths)) >= 4, f"bar widths seen: {bar_widths}"
    # After the job, progress_default puts the zero-width bar back.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and bar_x() != 0:
        time.sleep(0.05)
    assert bar_x() == 0
