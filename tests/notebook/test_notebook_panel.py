"""The jobs panel through a real kernel: what the front end sees, and its Cancel buttons.

Each test runs ``%load_ext nbbg`` and an app in an ipykernel, triggers the
background callback over HTTP as dash-renderer does, and reads the panel
from the widget messages the kernel publishes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from nbbg.client import BackgroundJob, DashClient
from tests.support.helpers import free_port, pid_gone, wait_until
from tests.support.kernel_helpers import KernelSession, PanelRow, kernel
from tests.support.notebook_apps import (
    STEPS,
    diskcache_app,
    fast_app,
    job_pid,
    release,
    run_app_cell,
    slow_app,
    update_rate,
)

WAIT = 60.0


@dataclass
class Notebook:
    session: KernelSession
    client: DashClient
    panel_id: str
    workdir: Path

    def rows(self) -> list[PanelRow]:
        return self.session.read(lambda: self.session.widgets.rows(self.panel_id))

    def row(self, n: int) -> PanelRow | None:
        """The row of the job started by click ``n`` (its label names the input)."""
        return next((r for r in self.rows() if r.title.endswith(f"go.n_clicks={n}")), None)

    def wait_row(self, n: int, what: str, check) -> PanelRow:
        def matching() -> PanelRow | None:
            row = self.session.widgets.rows(self.panel_id)
            found = next((r for r in row if r.title.endswith(f"go.n_clicks={n}")), None)
            return found if found is not None and check(found) else None

        return self.session.wait_for(matching, WAIT, f"job {n}: {what}")

    def start(self, n: int, old_jobs: tuple[BackgroundJob, ...] = ()) -> BackgroundJob:
        """Click ``go`` for the ``n``-th time; ``old_jobs`` go along as ``oldJob``."""
        return self.client.submit("out", {"go": n}, old_jobs)

    def wait_pid(self, n: int) -> int:
        return wait_until(lambda: job_pid(self.workdir, n), WAIT, f"job {n} to start")


AppCell = Callable[[int], str]
"""The source of an app cell, given the port to serve on."""


@pytest.fixture
def open_notebook(tmp_path: Path) -> Iterator[Callable[[AppCell], Notebook]]:
    """Start a kernel, ``%load_ext nbbg`` and run an app cell; stop the kernel afterwards."""
    with ExitStack() as stack:

        def open_(app_cell: AppCell) -> Notebook:
            session = stack.enter_context(kernel(tmp_path))
            session.run("%load_ext nbbg\n%nbbg workers 2")  # two jobs at once on any machine
            port = free_port()
            _result, panel_id, client = run_app_cell(session, app_cell(port), port)
            return Notebook(session, client, panel_id, tmp_path)

        yield open_


@pytest.fixture
def notebook(open_notebook: Callable[[AppCell], Notebook], tmp_path: Path) -> Notebook:
    return open_notebook(lambda port: slow_app(port, tmp_path))


def test_row_appears_running_progress_rises_and_ends_done(notebook: Notebook) -> None:
    call = notebook.start(1)
    first = notebook.wait_row(1, "running with progress", lambda r: r.state == "running" and r.bar)
    assert first.title == "slow_job · go.n_clicks=1"
    assert first.cancel_id is not None and first.bar_style == ""
    later = notebook.wait_row(
        1, "progress rising", lambda r: r.bar is not None and r.bar[0] >= first.bar[0] + 10
    )
    assert later.bar[1] == STEPS

    release(notebook.workdir, 1)
    done = notebook.wait_row(1, "done", lambda r: r.state == "done" and r.cancel_id is None)
    assert done.bar_style == "success" and done.state_color == "green"
    result = notebook.client.wait(call, WAIT)
    assert result.outcome == "done" and result.value == {"out": {"children": "done 1"}}


def test_cancel_from_widget_stops_only_that_job(notebook: Notebook) -> None:
    calls = {n: notebook.start(n) for n in (1, 2)}
    pids = {n: notebook.wait_pid(n) for n in (1, 2)}
    target = notebook.wait_row(1, "running with progress", lambda r: r.state == "running" and r.bar)

    sent = notebook.session.click(target.cancel_id)
    wait_until(lambda: pid_gone(pids[1]), WAIT, "the cancelled job's process to stop", 0.002)
    print(f"widget Cancel click -> worker process gone: {time.monotonic() - sent:.3f} s")

    cancelled = notebook.wait_row(
        1, "cancelled", lambda r: r.state == "cancelled" and r.cancel_id is None
    )
    assert cancelled.bar_style == "warning" and cancelled.state_color == "darkorange"
    assert notebook.client.poll(calls[1])[0] == 204, "the app's poll must end the job"

    assert not pid_gone(pids[2]), "the other job must keep running"
    assert notebook.row(2).state == "running"
    release(notebook.workdir, 2)
    assert notebook.client.wait(calls[2], WAIT).value == {"out": {"children": "done 2"}}
    notebook.wait_row(2, "done", lambda r: r.state == "done")


def test_cancel_from_app_shows_cancelled_in_panel(notebook: Notebook) -> None:
    # The app's cancel= input: a hidden callback request carrying cancelJob.
    call = notebook.start(1)
    pid = notebook.wait_pid(1)
    notebook.wait_row(1, "running", lambda r: r.state == "running")
    assert notebook.client.cancel(call) in (200, 204)
    notebook.wait_row(1, "cancelled", lambda r: r.state == "cancelled")
    wait_until(lambda: pid_gone(pid), WAIT, "the cancelled job's process to stop")
    assert notebook.client.poll(call)[0] == 204

    # Re-firing the callback while its job runs: the renderer sends oldJob.
    old = notebook.start(2)
    notebook.wait_row(2, "running", lambda r: r.state == "running")
    new = notebook.start(3, old_jobs=(old,))
    notebook.wait_row(2, "cancelled", lambda r: r.state == "cancelled")
    notebook.wait_row(3, "running", lambda r: r.state == "running")
    release(notebook.workdir, 3)
    assert notebook.client.wait(new, WAIT).value == {"out": {"children": "done 3"}}


def test_queued_jobs_show_their_place_and_cancel_all_stops_every_job(notebook: Notebook) -> None:
    for n in (1, 2, 3, 4):
        notebook.start(n)
    notebook.wait_row(4, "queued second", lambda r: r.state == "queued #2")
    notebook.wait_row(3, "queued first", lambda r: r.state == "queued #1")
    rows = notebook.rows()
    assert [r.title[-1] for r in rows] == ["4", "3", "2", "1"], "newest first"
    assert all(r.cancel_id for r in rows), "queued and running jobs can be cancelled"

    cancel_all = notebook.session.read(
        lambda: notebook.session.widgets.cancel_all_id(notebook.panel_id)
    )
    notebook.session.click(cancel_all)
    for n in (1, 2, 3, 4):
        notebook.wait_row(n, "cancelled", lambda r: r.state == "cancelled")
    notebook.session.wait_for(
        lambda: notebook.session.widgets.heading(notebook.panel_id).endswith(": 4 finished"),
        WAIT,
        "the heading to count 4 finished jobs",
    )


def test_app_with_its_own_diskcache_manager_keeps_it_and_gets_a_panel(
    open_notebook: Callable[[AppCell], Notebook], tmp_path: Path
) -> None:
    own_app = diskcache_app(tmp_path / "diskcache")
    notebook = open_notebook(lambda port: slow_app(port, tmp_path, own_app))
    kept = notebook.session.run("print(app._background_manager is own_manager)")
    assert kept.stdout.strip() == "True"

    call = notebook.start(1)
    notebook.wait_row(1, "running with progress", lambda r: r.state == "running" and r.bar)
    release(notebook.workdir, 1)
    assert notebook.client.wait(call, WAIT).value == {"out": {"children": "done 1"}}
    notebook.wait_row(1, "done", lambda r: r.state == "done")

    other = notebook.start(2)
    pid = notebook.wait_pid(2)
    row = notebook.wait_row(2, "running", lambda r: r.state == "running")
    notebook.session.click(row.cancel_id)
    notebook.wait_row(2, "cancelled", lambda r: r.state == "cancelled")
    wait_until(lambda: pid_gone(pid), WAIT, "the DiskcacheManager job's process to stop")
    assert notebook.client.poll(other)[0] == 204


def test_fast_progress_gives_about_ten_widget_updates_a_second(
    open_notebook: Callable[[AppCell], Notebook],
) -> None:
    notebook = open_notebook(fast_app)
    call = notebook.start(1)
    notebook.wait_row(1, "done", lambda r: r.state == "done" and r.cancel_id is None)
    result = notebook.client.wait(call, WAIT)
    calls, seconds = (float(x) for x in result.value["out"]["children"].split())
    rate = update_rate(notebook.session.read(lambda: list(notebook.session.widgets.updates)))

    print(f"{calls / seconds:.0f} set_progress/s -> {rate:.1f} widget updates/s")
    assert calls >= 300, "the job must really report fast for this test to mean anything"
    assert rate <= 12, "about 10 updates a second: one bar update per render, elapsed once a second"


TEXT_APP = """
import dash
from dash import html, Input, Output
app = dash.Dash(__name__)
app.layout = html.Div([html.Button(id="go"), html.Div(id="out"), html.Div(id="status")])

@app.callback(Output("out", "children"), Input("go", "n_clicks"), background=True,
              progress=Output("status", "children"), prevent_initial_call=True, interval=100)
def text_job(set_progress, n):
    set_progress(f"step {{n}} of {{n}}")
    return n
app.run(port={port})
"""


def test_older_finished_jobs_fold_into_a_count_and_text_progress_shows_as_text(
    open_notebook: Callable[[AppCell], Notebook],
) -> None:
    notebook = open_notebook(lambda port: TEXT_APP.format(port=port))
    session = notebook.session
    small = session.run("import nbbg\nnbbg.panel(app, max_rows=2)")
    small_id = small.widget_ids()[0]
    for n in (1, 2, 3, 4):
        result = notebook.client.wait(notebook.start(n), WAIT)
        assert result.value == {"out": {"children": n}}

    expected = [
        ("text_job · go.n_clicks=4", "done", "step 4 of 4", None),
        ("text_job · go.n_clicks=3", "done", "step 3 of 3", None),
    ]

    def folded() -> bool:
        rows = [(r.title, r.state, r.text, r.bar) for r in session.widgets.rows(small_id)]
        footer = session.widgets.children(session.widgets.models[small_id])[-1]
        return rows == expected and footer.state.get("value") == "+ 2 older finished jobs"

    session.wait_for(folded, WAIT, "the two newest rows, and two older jobs folded")
