"""The widgets of one job's row in the jobs panel, and the layouts the rows share.

:class:`JobRow` copies a :class:`~nbbg._notebook.rows.RowView` into its
widgets, sending only the traits that changed, one message per widget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets

from .._engine.jobs import JobSnapshot
from .details import details_html
from .rows import RowView

STATE_COLOURS = {"success": "green", "danger": "red", "warning": "darkorange", "": None}


def update_widget(widget: widgets.Widget, **traits: Any) -> None:
    """Set the traits that changed, sent to the front end as one message."""
    with widget.hold_sync():
        for name, value in traits.items():
            if getattr(widget, name) != value:
                setattr(widget, name, value)


def close_widget(widget: widgets.Widget, *, own_layout: bool = True) -> None:
    """Close a widget with its style and (unless shared) its layout models."""
    style = getattr(widget, "style", None)
    if isinstance(style, widgets.Widget):
        style.close()
    if own_layout:
        widget.layout.close()
    widget.close()


@dataclass
class Columns:
    """Layouts shared by every row (one model each, not one per row)."""

    row: widgets.Layout
    toggle: widgets.Layout
    title: widgets.Layout
    state: widgets.Layout
    progress: widgets.Layout
    elapsed: widgets.Layout
    usage: widgets.Layout
    button: widgets.Layout
    details: widgets.Layout

    @classmethod
    def create(cls) -> Columns:
        return cls(
            row=widgets.Layout(width="100%", align_items="center"),
            toggle=widgets.Layout(width="2.4em", padding="0"),
            title=widgets.Layout(width="26%"),
            state=widgets.Layout(width="9%"),
            progress=widgets.Layout(width="30%"),
            elapsed=widgets.Layout(width="5%"),
            usage=widgets.Layout(width="14%"),
            button=widgets.Layout(width="auto"),
            details=widgets.Layout(width="100%"),
        )

    def close(self) -> None:
        for layout in vars(self).values():
            layout.close()


class JobRow:
    """The widgets of one job's row; its buttons are bound to that job for good.

    The ▸ button expands the row: an ``HTML`` widget under it, made on first use,
    shows the job's output tail and traceback.
    """

    def __init__(
        self,
        job_id: str,
        on_cancel: Callable[[str], None],
        on_toggle: Callable[[str], None],
        on_rerun: Callable[[str], None],
        columns: Columns,
    ) -> None:
        self.job_id = job_id
        self._columns = columns
        self.toggle = widgets.Button(
            description="▸", tooltip="Show output and traceback", layout=columns.toggle
        )
        self.toggle.on_click(lambda _button: on_toggle(job_id))
        self.details: widgets.HTML | None = None
        self.title = widgets.Label(layout=columns.title)
        self.state = widgets.Label(layout=columns.state)
        self.text = widgets.Label(layout=columns.progress)
        self.bar: widgets.IntProgress | None = None
        self.elapsed = widgets.Label(layout=columns.elapsed)
        self.usage = widgets.Label(layout=columns.usage)
        self.cancel = widgets.Button(
            description="Cancel", tooltip="Stop this job", layout=columns.button
        )
        self.cancel.on_click(lambda _button: on_cancel(job_id))
        self.rerun = widgets.Button(
            description="Re-run", tooltip="Submit the same call again", layout=columns.button
        )
        self.rerun.on_click(lambda _button: on_rerun(job_id))
        self.box = widgets.HBox(layout=columns.row)
        self.box.add_class("nbbg-job")
        self.box.add_class(f"nbbg-job-{job_id}")

    def show(self, view: RowView, job: JobSnapshot, expanded: bool, rerunnable: bool) -> None:
        update_widget(self.toggle, description="▾" if expanded else "▸")
        if expanded:
            update_widget(self._details(), value=details_html(job))
        update_widget(self.title, value=view.title, tooltip=view.tooltip)
        update_widget(self.state, value=view.state_text)
        update_widget(self.state.style, text_color=STATE_COLOURS[view.tone])
        progress: widgets.Widget
        if view.bar is not None:
            progress = self._bar()
            value, maximum = view.bar
            # max before value: IntProgress clamps value to the current max.
            update_widget(
                progress, max=maximum, value=value, bar_style=view.tone, description=view.bar_text
            )
        else:
            progress = self.text
            update_widget(self.text, value=view.progress_text)
        update_widget(self.elapsed, value=view.elapsed_text)
        update_widget(self.usage, value=view.usage_text, tooltip="peak memory · CPU time")
        children = [self.toggle, self.title, self.state, progress, self.elapsed, self.usage]
        if view.cancellable:
            children.append(self.cancel)
        elif rerunnable:
            children.append(self.rerun)
        update_widget(self.box, children=tuple(children))

    def _details(self) -> widgets.HTML:
        if self.details is None:
            self.details = widgets.HTML(layout=self._columns.details)
            self.details.add_class("nbbg-job-details")
            self.details.add_class(f"nbbg-job-details-{self.job_id}")
        return self.details

    def _bar(self) -> widgets.IntProgress:
        if self.bar is None:
            self.bar = widgets.IntProgress(
                layout=self._columns.progress, style={"description_width": "initial"}
            )
        return self.bar

    def close(self) -> None:
        parts: list[widgets.Widget] = [self.box, self.title, self.state, self.text, self.elapsed]
        parts += [self.usage, self.toggle, self.cancel, self.rerun]
        if self.bar is not None:
            parts.append(self.bar)
        if self.details is not None:
            parts.append(self.details)
        for part in parts:
            close_widget(part, own_layout=False)
