"""The job console in a real JupyterLab: the app and its panel as one unit, a row opened.

A person opens ``09_job_console.ipynb`` and runs the app cell: the app's iframe
is as tall as the app (not Dash's 650 px) and the jobs panel starts right under
it. They click the app's button, open the job's row with ▸ and read the job's
output there while it runs. The screenshot of that is the README's
``docs/console.png`` (copied by hand from ``<tmp_path>/screenshots``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import Page

from tests.support.helpers import REPO, free_port
from tests.support.jupyterlab_helpers import (
    JobsPanel,
    JupyterLab,
    NotebookView,
    jupyter_lab,
    screenshot_on_failure,
    wait_in_browser,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

NOTEBOOK = "09_job_console.ipynb"
NOTEBOOK_PORT = "PORT = 8069"
LOAD_EXT_CELL, APP_CELL = 1, 2
STARTUP = 90.0
CHANGE = 15.0
DASH_HEIGHT = 650


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[JupyterLab, str]]:
    app_port = free_port()
    target = tmp_path / "notebooks"
    target.mkdir()
    notebook = nbformat.read(REPO / "notebooks" / NOTEBOOK, as_version=4)
    cell = notebook.cells[LOAD_EXT_CELL]
    assert NOTEBOOK_PORT in cell.source, "the notebook's port moved: update this test"
    cell.source = cell.source.replace(NOTEBOOK_PORT, f"PORT = {app_port}")
    nbformat.write(notebook, target / NOTEBOOK)
    with jupyter_lab(target, tmp_path / "jupyter") as server:
        yield server, f"http://127.0.0.1:{app_port}/"


def test_app_and_panel_read_as_one_and_a_row_opens_on_its_output(
    lab: tuple[JupyterLab, str], page: Page, tmp_path: Path
) -> None:
    server, app_url = lab
    shots = tmp_path / "screenshots"
    notebook = NotebookView(page)
    with screenshot_on_failure(page, shots / "failure.png"):
        frame = notebook.open_and_run_to_app(
            server.url(f"lab/tree/{NOTEBOOK}"), LOAD_EXT_CELL, APP_CELL, app_url, STARTUP
        )
        panel = JobsPanel(page, APP_CELL)
        panel.wait_shown(STARTUP)
        frame.locator("#go").wait_for(timeout=STARTUP * 1000)

        # The iframe fits the app: a button, a bar and a line, far less than 650 px.
        iframe = notebook.cell(APP_CELL).locator(f'iframe[src="{app_url}"]')
        content = frame.evaluate(
            "() => document.getElementById('react-entry-point').getBoundingClientRect().bottom"
        )

        def fitted() -> dict[str, float] | None:
            box, under = iframe.bounding_box(), panel.locator.bounding_box()
            if box is None or under is None or box["height"] >= DASH_HEIGHT:
                return None
            return {"frame": box["height"], "gap": under["y"] - (box["y"] + box["height"])}

        sizes = wait_in_browser(fitted, CHANGE, "the app's iframe to fit its content")
        print(
            f"app content {content:.0f} px, iframe {sizes['frame']:.0f} px, gap {sizes['gap']:.0f}"
        )
        assert content <= sizes["frame"] <= max(content + 40, 160)
        assert 0 <= sizes["gap"] < 40, "the panel starts right under the app"

        # Click the app's button; open the job's row: its output arrives while it runs.
        frame.locator("#go").click()
        job = panel.wait_new_row(set(), CHANGE, "the click").job_id
        row = panel.locator.locator(f".nbbg-job-{job}")
        row.get_by_role("button", name="▸").click()
        details = panel.locator.locator(f".nbbg-job-details-{job}")
        wait_in_browser(
            lambda: "click 1: step 2 of 5" in details.inner_text(),
            CHANGE,
            "the job's output in its opened row",
            details.inner_text,
        )
        running = panel.row(job)
        assert running is not None and running.state == "running"
        notebook.screenshot(shots / "console.png", APP_CELL)
        wait_in_browser(
            lambda: "WARNING summary: click 1: 4 rows" in details.inner_text(),
            CHANGE,
            "the job's log record",
            details.inner_text,
        )
        warning = details.locator(".nbbg-prominent").first
        assert warning.inner_text() == "WARNING summary: click 1: 4 rows"
        assert warning.evaluate("(el) => getComputedStyle(el).color") != details.evaluate(
            "(el) => getComputedStyle(el).color"
        ), "the warning stands out"
        assert panel.wait_row(job, lambda r: r.state == "done", CHANGE, "done").state == "done"
        notebook.screenshot(shots / "console-done.png", APP_CELL)
