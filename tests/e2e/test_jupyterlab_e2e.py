"""The product end to end: the tour notebook in a real JupyterLab, clicked in headless Chromium.

A person opens ``00_tour.ipynb``, runs the cells up to the app, clicks **Run**
in the app, watches the progress in the app and in the jobs panel under it,
cancels from the panel, and then sees a one-worker pool queue a second job.
Screenshots of those steps go to ``<tmp_path>/screenshots``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.support.helpers import REPO, free_port, pid_gone, wait_until
from tests.support.jupyterlab_helpers import (
    AppView,
    JobsPanel,
    JupyterLab,
    NotebookView,
    RowView,
    TourApp,
    copy_tour,
    jupyter_lab,
    kernel_workers,
    screenshot_on_failure,
    wait_in_browser,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

NOTEBOOKS = REPO / "notebooks"
TOUR = "00_tour.ipynb"
LOAD_EXT_CELL, APP_CELL = 1, 3
"""``%load_ext nbbg``, a markdown cell, then the app cell (its outputs: iframe and panel)."""

STEP_SECONDS = 1.0
"""One of the ten steps of the tour's job, in this test's copy (see ``copy_tour``)."""
STARTUP = 90.0
"""Opening JupyterLab and starting the kernel, the workers and the app."""
CHANGE = 15.0
"""One visible change: a row appears, a bar moves, a job ends after a cancel."""
WHOLE_JOB = CHANGE + 10 * STEP_SECONDS


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[JupyterLab, str]]:
    app_port = free_port()
    copy_tour(NOTEBOOKS, tmp_path / "notebooks", app_port, STEP_SECONDS)
    with jupyter_lab(tmp_path / "notebooks", tmp_path / "jupyter") as server:
        yield server, f"http://127.0.0.1:{app_port}/"


def wait_both_bars_rise(app: TourApp, panel: JobsPanel, job: str) -> tuple[AppView, RowView]:
    """The app's bar and the job's row both show progress, then both move on."""

    def both() -> tuple[AppView, RowView] | None:
        view, row = app.read(), panel.row(job)
        return (view, row) if view is not None and row is not None else None

    def started() -> tuple[AppView, RowView] | None:
        seen = both()
        if seen is None:
            return None
        view, row = seen
        progressing = view.bar >= 1 and not view.run_enabled
        return seen if progressing and row.state == "running" and row.bar else None

    what = "progress in the app and the row `running` with a bar"
    first_view, first_row = wait_in_browser(started, CHANGE, what, both)
    assert first_row.bar is not None

    def risen() -> tuple[AppView, RowView] | None:
        seen = both()
        if seen is None:
            return None
        view, row = seen
        app_moved = view.bar > first_view.bar
        row_moved = row.state == "running" and row.bar and row.bar[0] > first_row.bar[0]
        return seen if app_moved and row_moved else None

    what = f"the app's bar to rise above {first_view.bar:g} and the row's above {first_row.bar}"
    return wait_in_browser(risen, CHANGE, what, both)


def test_tour_progress_cancel_from_panel_and_queue(
    lab: tuple[JupyterLab, str], page: Page, tmp_path: Path
) -> None:
    server, app_url = lab
    shots = tmp_path / "screenshots"
    notebook = NotebookView(page)
    with screenshot_on_failure(page, shots / "failure.png"):
        # Open the tour, run the cells up to the app, wait for the app's iframe.
        app = TourApp(
            notebook.open_and_run_to_app(
                server.url(f"lab/tree/{TOUR}"), LOAD_EXT_CELL, APP_CELL, app_url, STARTUP
            )
        )
        panel = JobsPanel(page, APP_CELL)
        panel.wait_shown(STARTUP)
        fresh = app.wait(lambda v: v.run_enabled, STARTUP, "its Run button")
        assert (fresh.bar, fresh.status) == (0, "Not run yet")

        # Run in the app: the app's bar and the panel row's bar both rise.
        app.click_run()
        job = panel.wait_new_row(set(), CHANGE, "the job started by Run").job_id
        wait_both_bars_rise(app, panel, job)
        worker = kernel_workers(server.kernel_connection_file(TOUR)).get(job)
        assert worker is not None, f"job {job[:8]} runs on no worker of the kernel"
        kernel = server.kernel_process(TOUR)
        assert worker in {child.pid for child in kernel.children(recursive=True)}
        notebook.screenshot(shots / "3-running.png", APP_CELL)

        # Cancel in the panel: the app ends the job and keeps its output, the
        # row says cancelled, the job's worker process is gone.
        panel.click_cancel(job)
        # (A row's widgets update one message each: wait for the state text and
        # the Cancel button's removal together.)
        cancelled = panel.wait_row(
            job, lambda r: r.state != "running" and not r.cancel_button, CHANGE, "an end"
        )
        assert cancelled.state == "cancelled", f"the job ended as {cancelled.state!r}"
        ended = app.wait(lambda v: v.run_enabled, CHANGE, "the job ended (Run enabled again)")
        assert ended.status == "Not run yet", "the cancelled job replaced the app's output"
        assert 1 <= ended.bar < ended.bar_max, "the bar was reset or ran to the end"
        wait_until(lambda: pid_gone(worker), CHANGE, f"the job's worker (pid {worker}) to exit")
        notebook.screenshot(shots / "4-cancelled.png", APP_CELL)

        # One worker: a second job (the app in another tab) waits as `queued #1`.
        workers_cell = notebook.add_cell_below(APP_CELL, "%nbbg workers 1")
        notebook.wait_output(workers_cell, "nbbg: 1 worker", CHANGE)
        tab = page.context.new_page()
        tab.goto(app_url)
        other = TourApp(tab.main_frame)
        other.wait(lambda v: v.run_enabled, CHANGE, "its Run button (second tab)")
        page.bring_to_front()  # a background tab does not paint the app's iframe

        app.click_run()
        first = panel.wait_new_row({job}, CHANGE, "the iframe's second Run").job_id
        panel.wait_row(first, lambda r: r.state == "running" and r.bar, CHANGE, "progress")
        other.click_run()
        second = panel.wait_new_row({job, first}, CHANGE, "the second tab's Run").job_id
        queued = panel.wait_row(second, lambda r: r.state not in ("", "queued"), CHANGE, "#k")
        assert queued.state == "queued #1", f"the second job shows {queued.state!r}"
        panel.wait_row(first, lambda r: r.bar and r.bar[0] >= 3, CHANGE, "3/10 or more")
        assert panel.row(second) == queued, "the second job left the queue while #1 ran"
        notebook.screenshot(shots / "5-queued.png", APP_CELL)

        # The app's own Cancel ends the first job; the queued one runs and finishes.
        app.click_cancel()
        panel.wait_row(first, lambda r: r.state == "cancelled", CHANGE, "cancelled (app)")
        panel.wait_row(second, lambda r: r.state == "running", CHANGE, "running after #1")
        assert app.wait(lambda v: v.run_enabled, CHANGE, "Run enabled").status == "Not run yet"
        done = other.wait(lambda v: v.run_enabled, WHOLE_JOB, "the second job's result")
        assert done.status == "Run 1 finished"
        assert panel.wait_row(second, lambda r: r.state != "running", CHANGE, "done").state == (
            "done"
        )
