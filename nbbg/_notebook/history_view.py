"""Past jobs: ``%nbbg history`` (text) and the panel's history view (HTML).

One line per :class:`JobRecord`, newest first: id, callback, final state,
when it ended, how long it ran, peak memory and CPU, and what it was called
with or why it failed.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence

from .._engine.records import JobRecord
from .rows import format_bytes, format_elapsed

NAME_WIDTH = 24
DETAIL_WIDTH = 60


def _when(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "-"
    if now - timestamp < 20 * 3600:
        return time.strftime("%H:%M:%S", time.localtime(timestamp))
    return time.strftime("%Y-%m-%d", time.localtime(timestamp))


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def record_line(record: JobRecord, now: float) -> str:
    """One record as a fixed-width line."""
    duration = "-" if record.duration is None else format_elapsed(record.duration)
    peak = format_bytes(record.peak_memory) if record.peak_memory else "-"
    cpu = "-" if record.cpu_time is None else f"{record.cpu_time:.1f}s"
    state = record.state.value + (" (cached)" if record.cache_hit else "")
    detail = record.error or record.arguments or record.label
    return (
        f"{record.id[:8]:<8}  {_cut(record.name, NAME_WIDTH):<{NAME_WIDTH}}  {state:<9}  "
        f"{_when(record.finished_at, now):<10}  {duration:>7}  {peak:>8}  {cpu:>6}  "
        f"{_cut(detail, DETAIL_WIDTH)}"
    ).rstrip()


def history_table(records: Sequence[JobRecord], title: str = "past jobs") -> str:
    """The records as a text table, newest first."""
    if not records:
        return f"{title}: none recorded"
    now = time.time()
    header = (
        f"{'id':<8}  {'callback':<{NAME_WIDTH}}  {'state':<9}  {'ended':<10}  "
        f"{'ran':>7}  {'peak':>8}  {'CPU':>6}  arguments / error"
    )
    return "\n".join(
        [f"{title}: {len(records)} newest first", header]
        + [record_line(record, now) for record in records]
    )


HISTORY_STYLE = (
    "margin:2px 0 4px 0;font-size:12px;border-collapse:collapse;"
    "font-family:var(--jp-code-font-family,monospace)"
)
STATE_COLOURS = {"done": "green", "error": "#b91c1c", "cancelled": "darkorange"}


def history_html(records: Sequence[JobRecord], title: str) -> str:
    """The panel's compact history view: one table row per record, newest first."""
    if not records:
        return f"<div><b>{html.escape(title)}</b>: none recorded yet</div>"
    now = time.time()
    rows = []
    for record in records:
        colour = STATE_COLOURS.get(record.state.value, "inherit")
        duration = "-" if record.duration is None else format_elapsed(record.duration)
        usage = " · ".join(
            part
            for part in (
                format_bytes(record.peak_memory) if record.peak_memory else "",
                f"{record.cpu_time:.1f} s CPU" if record.cpu_time is not None else "",
            )
            if part
        )
        detail = _cut(record.error or record.arguments or record.label, DETAIL_WIDTH)
        cells = [
            _when(record.finished_at, now),
            record.name,
            f'<span style="color:{colour}">{record.state.value}</span>',
            duration,
            usage,
            html.escape(detail),
        ]
        escaped = [html.escape(cells[0]), html.escape(cells[1]), *cells[2:]]
        rows.append(
            '<tr class="nbbg-history-row">'
            + "".join(f'<td style="padding:0 10px 0 0">{cell}</td>' for cell in escaped)
            + "</tr>"
        )
    return (
        f"<div><b>{html.escape(title)}</b> (newest first; nbbg.history() for the records)</div>"
        f'<table style="{HISTORY_STYLE}">' + "".join(rows) + "</table>"
    )
