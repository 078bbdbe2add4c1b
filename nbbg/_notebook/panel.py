"""The jobs panel: one ipywidgets row per background job, refreshed at most ~10 times a second.

::

    engine events, manager watches ──► panel.mark_dirty() ──► refresher thread
        (any thread, any rate)                    at most one render per REFRESH_INTERVAL,
                                                  each widget's changes in one hold_sync
    Cancel / Cancel all (kernel main thread) ──► source.cancel(job_id)
    ▸ (kernel main thread) ──► expand the row: its output tail and traceback (details.py),
                               re-rendered with the row, so live while the job runs
    History (kernel main thread) ──► the last HISTORY_ROWS records of the panel's managers'
                               store (this app's callbacks), read at most once a second

A job reporting progress 200 times a second costs one bar update per
render, never one comm message per ``set_progress``. Rendering happens on a
background thread because widget traits can be set from any thread on
ipykernel >= 7.0.1; nothing there prints (output from a background thread
lands in whichever cell runs), a failure shows in the panel's footer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from .._dash.loky_manager import LokyManager
from .._engine.jobs import JobSnapshot
from .._engine.records import JobRecord
from .history_view import history_html
from .row_widgets import Columns, JobRow, close_widget, update_widget
from .rows import choose_rows, footer_text, row_view, summary, text_table
from .sources import JobSource, app_callback_names, app_managers, kernel_managers, source_for

REFRESH_INTERVAL = 0.1
"""Seconds between two renders of a panel: at most ~10 widget updates a second."""

MAX_ROWS = 10
HISTORY_ROWS = 10
HISTORY_REFRESH = 1.0
"""Seconds between two reads of the history while its view is open."""

Managers = Callable[[], list[Any]]
CallbackNames = Callable[[], set[str]]


class JobsPanel(widgets.VBox):  # type: ignore[misc]  # ipywidgets is untyped
    """Background jobs of one Dash app (or of the whole kernel), newest first.

    Create it with :func:`nbbg.panel`. ``close()`` removes it and stops its updates.
    """

    def __init__(
        self,
        managers: Managers,
        owner: int | None,
        title: str,
        max_rows: int = MAX_ROWS,
        callback_names: CallbackNames | None = None,
    ) -> None:
        super().__init__()
        self._callback_names = callback_names
        self._show_history = False
        self._history_read_at = 0.0
        self.title = title
        self.max_rows = max_rows
        self._managers = managers
        self._owner = owner
        self._lock = threading.RLock()
        self._dirty = True
        self._active = False
        self._closed = False
        self._problem = ""
        self._sources: dict[int, tuple[JobSource, Callable[[], None]]] = {}
        self._source_of: dict[str, JobSource] = {}
        self._rows: dict[str, JobRow] = {}
        self._expanded: set[str] = set()
        self._columns = Columns.create()
        self._heading = widgets.Label()
        self._cancel_all = widgets.Button(description="Cancel all", tooltip="Stop every job listed")
        self._cancel_all.on_click(lambda _button: self._cancel_every_job())
        self._history_button = widgets.Button(
            description="History", tooltip="Past jobs, also from earlier kernels"
        )
        self._history_button.on_click(lambda _button: self._toggle_history())
        self._history = widgets.HTML()
        self._history.add_class("nbbg-history")
        self._header = widgets.HBox([self._heading, self._cancel_all, self._history_button])
        self._footer = widgets.Label()
        self.add_class("nbbg-panel")
        self.render()
        _refresher.add(self)

    # ------------------------------------------------------------ updates
    def mark_dirty(self) -> None:
        """Ask for a render (cheap, from any thread)."""
        self._dirty = True
        _refresher.poke()

    @property
    def wants_render(self) -> bool:
        """Something changed, or jobs are active (elapsed time, polled managers)."""
        return not self._closed and (self._dirty or self._active)

    def render(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._dirty = False
            try:
                self._render()
            except Exception as exc:  # noqa: BLE001 - shown in the panel, never printed
                problem = f"panel update failed: {type(exc).__name__}: {exc}"
                update_widget(
                    self._footer, value=" · ".join(p for p in (problem, self._problem) if p)
                )
                if self._footer not in self.children:
                    update_widget(self, children=(*self.children, self._footer))

    def _render(self) -> None:
        jobs = self._collect()
        choice = choose_rows(jobs, self.max_rows)
        rows: dict[str, JobRow] = {}
        boxes: list[widgets.Widget] = []
        for job in choice.shown:
            row = self._rows.pop(job.id, None) or JobRow(
                job.id, self._cancel, self._toggle, self._rerun, self._columns
            )
            expanded = job.id in self._expanded
            source = self._source_of.get(job.id)
            rerunnable = source is not None and source.can_rerun(job)
            row.show(row_view(job), job, expanded, rerunnable)
            rows[job.id] = row
            boxes.append(row.box)
            if expanded and row.details is not None:
                boxes.append(row.details)
        for gone in self._rows.values():
            gone.close()
        self._rows = rows
        self._expanded &= set(rows)
        self._active = any(job.state.active for job in jobs)
        update_widget(self._heading, value=f"{self.title}: {summary(jobs)}")
        update_widget(self._cancel_all, disabled=not self._active)
        footer = " · ".join(part for part in (footer_text(choice), self._problem) if part)
        update_widget(self._footer, value=footer)
        children = [self._header, *boxes]
        if footer:
            children.append(self._footer)
        if self._show_history:
            self._render_history()
            children.append(self._history)
        update_widget(self, children=tuple(children))

    def _collect(self) -> list[JobSnapshot]:
        self._sync_sources()
        jobs: list[JobSnapshot] = []
        source_of: dict[str, JobSource] = {}
        for source, _unsubscribe in self._sources.values():
            for job in source.jobs():
                jobs.append(job)
                source_of[job.id] = source
        self._source_of = source_of
        return jobs

    def _sync_sources(self) -> None:
        """Follow the managers in use (an app can gain per-callback managers)."""
        current = {id(manager): manager for manager in self._managers()}
        for key in list(self._sources):
            if key not in current:
                self._sources.pop(key)[1]()
        for key, manager in current.items():
            if key not in self._sources:
                source = source_for(manager, self._owner)
                self._sources[key] = (source, source.subscribe(self.mark_dirty))

    def _render_history(self) -> None:
        if time.monotonic() - self._history_read_at < HISTORY_REFRESH:
            self._dirty = True  # read it at a later render: a job may just have ended
            return
        self._history_read_at = time.monotonic()
        names = self._callback_names() if self._callback_names is not None else None
        records: list[JobRecord] = []
        for manager in self._managers():
            if isinstance(manager, LokyManager):
                records += manager.history(limit=None if names else HISTORY_ROWS)
        if names is not None:
            records = [record for record in records if record.name in names]
        unique = {record.id: record for record in records}.values()
        newest = sorted(unique, key=lambda record: record.submitted_at, reverse=True)
        update_widget(self._history, value=history_html(newest[:HISTORY_ROWS], "Past jobs"))

    # ------------------------------------------------------------ buttons
    def _toggle_history(self) -> None:
        """The History button (kernel main thread): show or hide past jobs."""
        with self._lock:
            self._show_history = not self._show_history
            self._history_read_at = 0.0
        update_widget(self._history_button, button_style="info" if self._show_history else "")
        self.mark_dirty()

    def _toggle(self, job_id: str) -> None:
        """A row's ▸ button (kernel main thread): show or hide its output."""
        with self._lock:
            self._expanded ^= {job_id}
        self.mark_dirty()

    def _rerun(self, job_id: str) -> None:
        """A finished jobs-API row's Re-run button (kernel main thread)."""
        source = self._source_of.get(job_id)
        if source is not None:
            self._act("re-run", lambda: source.rerun(job_id))

    def _cancel(self, job_id: str) -> None:
        """A row's Cancel button (runs on the kernel's main thread: keep it short)."""
        source = self._source_of.get(job_id)
        if source is not None:
            self._cancel_on(source, job_id)

    def _cancel_every_job(self) -> None:
        with self._lock:
            sources = [source for source, _unsubscribe in self._sources.values()]
        for source in sources:
            for job in source.jobs():
                if job.state.active:
                    self._cancel_on(source, job.id)

    def _cancel_on(self, source: JobSource, job_id: str) -> None:
        self._act("cancel", lambda: source.cancel(job_id))

    def _act(self, what: str, action: Callable[[], object]) -> None:
        """Run a button's action; a failure shows in the panel's footer, not as a traceback."""
        try:
            action()
            self._problem = ""
        except Exception as exc:  # noqa: BLE001 - shown in the panel
            self._problem = f"{what} failed: {type(exc).__name__}: {exc}"
        self.mark_dirty()

    # ------------------------------------------------------------ text and life
    def text(self) -> str:
        """The panel as plain text."""
        with self._lock:
            jobs = [] if self._closed else self._collect()
        return text_table(self.title, jobs, self.max_rows)

    def __repr__(self) -> str:
        return self.text()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        data: dict[str, Any] | None = super()._repr_mimebundle_(**kwargs)
        if data is not None:
            data["text/plain"] = self.text()  # ipywidgets would cut it at 110 characters
        return data

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _source, unsubscribe in self._sources.values():
                unsubscribe()
            self._sources.clear()
            for row in self._rows.values():
                row.close()
            self._rows.clear()
            parts = (self._heading, self._footer, self._cancel_all, self._history_button)
            for part in (*parts, self._history, self._header):
                close_widget(part)
            self._columns.close()
            self.layout.close()
        _refresher.remove(self)
        super().close()


class _Refresher:
    """One daemon thread that renders every open panel that wants it, throttled."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._panels: list[JobsPanel] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, panel: JobsPanel) -> None:
        with self._lock:
            self._panels.append(panel)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="nbbg-panel", daemon=True)
                self._thread.start()
        self.poke()

    def remove(self, panel: JobsPanel) -> None:
        with self._lock:
            if panel in self._panels:
                self._panels.remove(panel)
        self.poke()

    def open_panels(self) -> list[JobsPanel]:
        with self._lock:
            return list(self._panels)

    def poke(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            with self._lock:
                panels = list(self._panels)
                if not panels:
                    self._thread = None
                    return
            busy = any(panel.wants_render for panel in panels)
            self._wake.wait(self.interval if busy else None)
            self._wake.clear()
            for panel in panels:
                if panel.wants_render:
                    panel.render()
            time.sleep(self.interval)  # the throttle: at most one render per interval


_refresher = _Refresher(REFRESH_INTERVAL)


def panel(app: Any = None, *, max_rows: int = MAX_ROWS) -> JobsPanel:
    """The jobs panel of ``app``'s background callbacks, or of every job in the kernel.

    Works with nbbg's ``LokyManager`` and with Dash's ``DiskcacheManager`` and
    ``CeleryManager``. Display it (last expression of a cell, or
    ``display(...)``); Cancel buttons work while no cell is running.
    """
    if app is None:
        return JobsPanel(kernel_managers, None, "Background jobs in this kernel", max_rows)
    return JobsPanel(
        lambda: app_managers(app),
        id(app.server),
        "Background jobs of this app",
        max_rows,
        callback_names=lambda: app_callback_names(app),
    )


def close_all_panels() -> None:
    for open_panel in _refresher.open_panels():
        open_panel.close()
