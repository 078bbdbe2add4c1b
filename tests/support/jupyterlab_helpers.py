"""Drive a real JupyterLab in headless Chromium: the server, the notebook, the app and the panel.

::

    test ──Playwright──► Chromium ──► JupyterLab (jupyter lab, 127.0.0.1, token)
      │                    │              └─► ipykernel (runs the cells, serves the Dash app)
      │                    │                      └─► loky workers (nbbg's slots)
      │                    └── iframe ──► the Dash app, straight from the kernel's server
      └── jupyter_client ──► the same kernel, silently: which worker runs which job

Every wait is a condition wait with a deadline and a message naming what was
not seen; nothing sleeps a fixed time to synchronise. Only processes started
here are stopped, by PID.
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import psutil
import requests
from jupyter_client.blocking import BlockingKernelClient
from playwright.sync_api import Browser, Frame, Locator, Page, Playwright, ViewportSize
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.support.browser import CHROMIUM, CHROMIUM_FLAGS
from tests.support.helpers import free_port, wait_until

CHROMIUM_ARGS = list(CHROMIUM_FLAGS)
VIEWPORT: ViewportSize = {"width": 1280, "height": 1000}
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

PAGE_CONFIG = {
    # No "build recommended" dialog, no news prompt: nothing may cover the notebook.
    "buildCheck": False,
    "buildAvailable": False,
    "disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True},
}
NOTIFICATION_SETTINGS = {"fetchNews": "false", "checkForUpdates": False}
KERNEL_IDLE = re.compile(r"^Python 3 \(ipykernel\) \| Idle$")

TOUR_PORT = "8060"
TOUR_STEP = "time.sleep(0.3)"
"""The tour's app: ten steps of 0.3 s, served on port 8060."""


def copy_tour(source: Path, target: Path, app_port: int, step_seconds: float) -> Path:
    """Copy the notebooks; in the copy of the tour, a private port and slower steps.

    The port keeps this test apart from anything else on the machine that runs
    the tour (nbval, a person). The tour's job lasts 3 s; a browser on a busy
    machine needs up to that long to see both bars rise before it clicks
    Cancel, so the copy's job takes ``10 * step_seconds`` instead and the
    cancel never races the job's end. Nothing else changes.
    """
    shutil.copytree(source, target)
    tour = target / "00_tour.ipynb"
    notebook = nbformat.read(tour, as_version=4)
    replaced = {TOUR_PORT: 0, TOUR_STEP: 0}
    for cell in notebook.cells:
        if cell.cell_type == "code":
            replaced[TOUR_PORT] += cell.source.count(TOUR_PORT)
            replaced[TOUR_STEP] += cell.source.count(TOUR_STEP)
            cell.source = cell.source.replace(TOUR_PORT, str(app_port)).replace(
                TOUR_STEP, f"time.sleep({step_seconds})"
            )
    missing = [text for text, count in replaced.items() if not count]
    assert not missing, f"the tour no longer contains {missing}: update this test's copy"
    nbformat.write(notebook, tour)
    return tour


# ---------------------------------------------------------------- the server
class JupyterLab:
    """``jupyter lab --no-browser`` on a free 127.0.0.1 port with a random token.

    Its configuration, runtime and settings directories are private (under
    ``home``), so the user's JupyterLab state neither leaks in nor is changed.
    """

    def __init__(self, root: Path, home: Path) -> None:
        self.root = root
        self.home = home
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.runtime_dir = home / "runtime"
        self.log_path = home / "jupyterlab.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}?token={self.token}"

    def _environment(self) -> dict[str, str]:
        config_dir = self.home / "config"
        settings_dir = self.home / "settings"
        (config_dir / "labconfig").mkdir(parents=True)
        (config_dir / "labconfig" / "page_config.json").write_text(json.dumps(PAGE_CONFIG))
        notification = settings_dir / "@jupyterlab" / "apputils-extension"
        notification.mkdir(parents=True)
        (notification / "notification.jupyterlab-settings").write_text(
            json.dumps(NOTIFICATION_SETTINGS)
        )
        return {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(config_dir),
            "JUPYTER_DATA_DIR": str(self.home / "data"),
            "JUPYTER_RUNTIME_DIR": str(self.runtime_dir),
            "JUPYTERLAB_SETTINGS_DIR": str(settings_dir),
            "JUPYTERLAB_WORKSPACES_DIR": str(self.home / "workspaces"),
        }

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",  # CI runs as root
            f"--ServerApp.token={self.token}",
            "--ServerApp.ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={self.root}",
            "--LabApp.news_url=None",
        ]
        environment = self._environment()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, env=environment, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_until(self._ready, START_TIMEOUT, f"JupyterLab to answer on {self.base_url}")
        except AssertionError as error:
            raise AssertionError(f"{error}; its log ends with:\n{self.log_tail()}") from None

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"jupyter lab exited with {self.process.returncode}")
        try:
            return self.api("api/status").ok
        except requests.ConnectionError:
            return False

    def api(self, path: str) -> requests.Response:
        return requests.get(
            f"{self.base_url}/{path}", headers={"Authorization": f"token {self.token}"}, timeout=5
        )

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kernel_connection_file(self, notebook: str) -> Path:
        """The connection file of the kernel of ``notebook`` (its session must exist)."""
        sessions = self.api("api/sessions").json()
        ids = [s["kernel"]["id"] for s in sessions if s["path"].endswith(notebook)]
        assert len(ids) == 1, f"expected one kernel session for {notebook}, got {sessions}"
        return self.runtime_dir / f"kernel-{ids[0]}.json"

    def kernel_process(self, notebook: str) -> psutil.Process:
        connection_file = str(self.kernel_connection_file(notebook))
        assert self.process is not None
        for child in psutil.Process(self.process.pid).children():
            if connection_file in child.cmdline():
                return child
        raise AssertionError(f"no kernel process of {notebook} under jupyter lab")

    def stop(self) -> None:
        """SIGTERM (the server shuts its kernels down), then kill what is left of our tree."""
        if self.process is None:
            return
        try:
            started = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            started = []
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
        _gone, alive = psutil.wait_procs(started, timeout=STOP_TIMEOUT)
        for process in alive:  # psutil checks these are still the processes we saw
            process.kill()
        psutil.wait_procs(alive, timeout=STOP_TIMEOUT)
        self.process = None


@contextmanager
def jupyter_lab(root: Path, home: Path) -> Iterator[JupyterLab]:
    lab = JupyterLab(root, home)
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


def kernel_workers(connection_file: Path, timeout: float = 30.0) -> dict[str, int]:
    """``{job_id: worker pid}`` of the jobs running now, asked of the kernel silently.

    A second client on the notebook's kernel evaluates a user expression; the
    cell outputs in the browser are untouched.
    """
    client = BlockingKernelClient(connection_file=str(connection_file))
    client.load_connection_file()
    client.start_channels()
    try:
        expression = (
            "{w.job_id: w.pid for w in __import__('nbbg').kernel_manager().workers() if w.job_id}"
        )
        msg_id = client.execute(
            "", silent=True, store_history=False, user_expressions={"workers": expression}
        )
        while True:
            reply = client.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        result = reply["content"]["user_expressions"]["workers"]
        assert result["status"] == "ok", f"the kernel could not list its workers: {result}"
        return ast.literal_eval(result["data"]["text/plain"])
    finally:
        client.stop_channels()


# ---------------------------------------------------------------- the browser
def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's Chromium (Playwright's own browsers cannot be downloaded here)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def wait_in_browser(check: Any, timeout: float, what: str, last_seen: Any = None) -> Any:
    """``wait_until`` whose failure also says what was seen last."""
    seen: list[Any] = []

    def condition() -> Any:
        value = check()
        seen[:] = [value]
        return value

    try:
        return wait_until(condition, timeout, what, interval=0.05)
    except AssertionError as error:
        detail = last_seen() if last_seen is not None else (seen[0] if seen else None)
        raise AssertionError(f"{error}; last seen: {detail}") from None


@dataclass(frozen=True)
class AppView:
    """The tour app as the person sees it: the progress bar, the buttons, the status line."""

    bar: float
    bar_max: float
    run_enabled: bool
    status: str


APP_READ = """() => {
  const bar = document.querySelector('#bar'), run = document.querySelector('#run');
  const status = document.querySelector('#status');
  if (!bar || !run || !status) return null;
  return {bar: Number(bar.value), bar_max: Number(bar.max), run_enabled: !run.disabled,
          status: status.textContent};
}"""


class TourApp:
    """The Dash app of the tour, in its iframe under the cell (or in a tab of its own)."""

    def __init__(self, frame: Frame) -> None:
        self.frame = frame

    def read(self) -> AppView | None:
        data = self.frame.evaluate(APP_READ)
        return None if data is None else AppView(**data)

    def click_run(self) -> None:
        self.frame.locator("#run").click()

    def click_cancel(self) -> None:
        self.frame.locator("#cancel").click()

    def wait(self, check: Any, timeout: float, what: str) -> AppView:
        def matching() -> AppView | None:
            view = self.read()
            return view if view is not None and check(view) else None

        return wait_in_browser(matching, timeout, f"the app to show {what}", self.read)


@dataclass(frozen=True)
class RowView:
    """One job's row of the jobs panel: its state text and its bar (``k/n``)."""

    job_id: str
    title: str
    state: str
    bar: tuple[int, int] | None
    cancel_button: bool


PANEL_READ = """(panel) => [...panel.querySelectorAll('.nbbg-job')].map((row) => {
  const job = [...row.classList].find((c) => c.startsWith('nbbg-job-')).slice(9);
  const labels = [...row.children].filter((c) => c.classList.contains('widget-label'));
  const bar = row.querySelector('.widget-hprogress label');
  return {job_id: job, title: labels[0].textContent, state: labels[1].textContent,
          bar: bar ? bar.textContent : '',
          cancel_button: [...row.querySelectorAll('button')].some(
            (b) => b.textContent.trim() === 'Cancel')};
})"""


def _bar(text: str) -> tuple[int, int] | None:
    """``(3, 10)`` from the bar's label ``3/10 [00:03<00:07, 1.0 it/s]``."""
    match = re.match(r"(\d+)/(\d+)", text.strip())
    return (int(match[1]), int(match[2])) if match else None


class JobsPanel:
    """The nbbg jobs panel under the app, rows newest first."""

    def __init__(self, page: Page, cell_index: int) -> None:
        self.locator = page.locator(
            f'.jp-Cell[data-windowed-list-index="{cell_index}"] .nbbg-panel'
        )

    def wait_shown(self, timeout: float) -> None:
        try:
            self.locator.wait_for(timeout=timeout * 1000)
        except PlaywrightTimeout:
            raise AssertionError(
                f"timed out after {timeout} s waiting for the jobs panel under the app"
            ) from None

    def rows(self) -> list[RowView]:
        if not self.locator.count():
            return []
        raw = self.locator.evaluate(PANEL_READ)
        return [RowView(**{**row, "bar": _bar(row["bar"])}) for row in raw]

    def row(self, job_id: str) -> RowView | None:
        return next((row for row in self.rows() if row.job_id == job_id), None)

    def wait_row(self, job_id: str, check: Any, timeout: float, what: str) -> RowView:
        def matching() -> RowView | None:
            row = self.row(job_id)
            return row if row is not None and check(row) else None

        return wait_in_browser(
            matching, timeout, f"the panel row of job {job_id[:8]} to show {what}", self.rows
        )

    def wait_new_row(self, known: set[str], timeout: float, what: str) -> RowView:
        def new_row() -> RowView | None:
            return next((row for row in self.rows() if row.job_id not in known), None)

        return wait_in_browser(new_row, timeout, f"a new panel row for {what}", self.rows)

    def click_cancel(self, job_id: str) -> None:
        self.locator.locator(f".nbbg-job-{job_id}").get_by_role("button", name="Cancel").click()


class NotebookView:
    """A notebook open in JupyterLab, driven with the mouse and keyboard as a person does."""

    def __init__(self, page: Page) -> None:
        self.page = page

    def cell(self, index: int) -> Locator:
        return self.page.locator(f'.jp-Notebook .jp-Cell[data-windowed-list-index="{index}"]')

    def wait_kernel_idle(self, timeout: float) -> None:
        """Wait until the status bar shows the kernel connected and idle.

        Not the toolbar's execution indicator: it says ``idle`` while the
        kernel is still starting, and cells run then are silently dropped.
        """
        status = self.page.locator(".jp-StatusBar-TextItem", has_text=KERNEL_IDLE)
        try:
            status.wait_for(timeout=timeout * 1000)
        except PlaywrightTimeout:
            shown = self.page.locator(".jp-StatusBar-TextItem").all_inner_texts()
            raise AssertionError(
                f"timed out after {timeout} s waiting for the status bar to show the kernel "
                f"idle; it shows {shown}"
            ) from None

    def hide_file_browser(self) -> None:
        """Collapse the left sidebar, as a person does to give the notebook room."""
        sidebar = self.page.locator("#jp-left-stack")
        if sidebar.is_visible():
            self.page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").click()
            sidebar.wait_for(state="hidden")

    def select(self, index: int) -> None:
        """Select cell ``index`` in command mode (keys act on cells, not in an editor)."""
        self.cell(index).locator(".jp-InputPrompt").click()
        self.page.keyboard.press("Escape")

    def run_cells(self, first: int, count: int) -> None:
        """Select cell ``first`` and press Shift+Enter ``count`` times."""
        self.select(first)
        for _ in range(count):
            self.page.keyboard.press("Shift+Enter")

    def add_cell_below(self, index: int, code: str) -> int:
        """Insert a code cell under cell ``index``, type ``code``, run it; return its index."""
        self.select(index)
        self.page.keyboard.press("b")
        new_index = index + 1
        self.cell(new_index).locator(".jp-InputArea-editor").click()
        self.page.keyboard.type(code)
        self.page.keyboard.press("Shift+Enter")
        return new_index

    def errors(self) -> list[str]:
        """Error outputs shown in the notebook (for failure messages)."""
        selector = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
        return self.page.locator(selector).all_inner_texts()

    def cell_output(self, index: int) -> str:
        return " ".join(self.cell(index).locator(".jp-OutputArea-output").all_inner_texts())

    def wait_output(self, index: int, text: str, timeout: float) -> None:
        wait_in_browser(
            lambda: text in self.cell_output(index),
            timeout,
            f"cell {index} to print {text!r}",
            lambda: {"output": self.cell_output(index), "errors": self.errors()},
        )

    def open_and_run_to_app(
        self, url: str, first_cell: int, app_cell: int, app_url: str, timeout: float
    ) -> Frame:
        """Open the notebook at ``url``, run cells ``first_cell``..``app_cell``; the app's frame."""
        self.page.goto(url, timeout=timeout * 1000)
        self.wait_kernel_idle(timeout)
        self.hide_file_browser()
        self.run_cells(first_cell, app_cell - first_cell + 1)
        return self.app_frame(app_cell, app_url, timeout)

    def app_frame(self, cell_index: int, app_url: str, timeout: float) -> Frame:
        """The frame of the app's iframe in the outputs of cell ``cell_index``."""
        iframe = self.cell(cell_index).locator(f'iframe[src="{app_url}"]')
        try:
            iframe.wait_for(timeout=timeout * 1000)
        except PlaywrightTimeout:
            raise AssertionError(
                f"timed out after {timeout} s waiting for the app's iframe ({app_url}) "
                f"under cell {cell_index}; its prompt and output: "
                f"{self.cell(cell_index).locator('.jp-InputPrompt').inner_text()} "
                f"{self.cell_output(cell_index)!r}; errors in the notebook: {self.errors()}"
            ) from None
        frame = iframe.element_handle().content_frame()
        assert frame is not None, "the app's iframe has no frame"
        return frame

    def show_output(self, cell_index: int) -> None:
        """Scroll the notebook so the cell's outputs (app and panel) end at its bottom edge.

        (Aligned at the top, the app would slide under the notebook's toolbar.)
        """
        self.cell(cell_index).locator(".jp-Cell-outputArea").evaluate(
            "(el) => el.scrollIntoView({block: 'end'})"
        )

    def screenshot(self, path: Path, cell_index: int) -> None:
        """Save what the window shows, scrolled to the cell's outputs as they are now."""
        self.show_output(cell_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))


@contextmanager
def screenshot_on_failure(page: Page, path: Path) -> Iterator[None]:
    """Keep what the browser showed when a step failed."""
    try:
        yield
    except BaseException:
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path))
        raise
