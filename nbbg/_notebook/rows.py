"""What one job looks like in the notebook: the jobs panel, its text repr and ``%nbbg``.

A :class:`RowView` is plain data computed from a :class:`JobSnapshot`; the
widget panel copies it into widgets and the text views print it, so both
always agree. :func:`choose_rows` decides which jobs get a row: every active
job first (they need their Cancel button), then the newest finished ones;
the older finished jobs fold into a count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._engine.jobs import JobSnapshot, JobState

TITLE_WIDTH = 60
PROGRESS_TEXT_WIDTH = 40
BAR_RESOLUTION = 1000
"""Fractional progress (floats) is shown as an integer bar out of this many steps."""

TONES: dict[JobState, str] = {
    JobState.QUEUED: "",
    JobState.RUNNING: "",
    JobState.DONE: "success",
    JobState.ERROR: "danger",
    JobState.CANCELLED: "warning",
}
"""``bar_style`` per state, as ``tqdm.notebook`` colours a finished or failed bar."""


@dataclass(frozen=True)
class RowView:
    """The text and numbers of one job's row."""

    job_id: str
    title: str
    tooltip: str
    state_text: str
    tone: str
    bar: tuple[int, int] | None
    bar_text: str
    progress_text: str
    elapsed_text: str
    usage_text: str
    cancellable: bool


@dataclass(frozen=True)
class RowChoice:
    """The jobs that get a row (newest first) and what is folded away."""

    shown: list[JobSnapshot]
    folded_finished: int
    hidden_active: int


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def progress_numbers(progress: Any) -> tuple[float, float] | None:
    """``(value, max)`` as reported, when the job reported two numbers with ``max > 0``."""
    if not isinstance(progress, (list, tuple)) or len(progress) != 2:
        return None
    value, maximum = _number(progress[0]), _number(progress[1])
    if value is None or maximum is None or maximum <= 0:
        return None
    return min(max(value, 0.0), maximum), maximum


def progress_bar(progress: Any) -> tuple[int, int] | None:
    """``(value, max)`` for a bar when the job reported two numbers, else None.

    Dash apps commonly report ``set_progress((i, n))`` for a ``value``/``max``
    pair of outputs, often as strings; both forms give a bar.
    """
    numbers = progress_numbers(progress)
    if numbers is None:
        return None
    value, maximum = numbers
    if value.is_integer() and maximum.is_integer():
        return int(value), int(maximum)
    return round(value / maximum * BAR_RESOLUTION), BAR_RESOLUTION


def progress_text(progress: Any) -> str:
    """The latest progress value as short text (a single value without brackets)."""
    if progress is None:
        return ""
    if isinstance(progress, (list, tuple)):
        text = ", ".join(str(item) for item in progress)
    else:
        text = str(progress)
    return _shorten(text, PROGRESS_TEXT_WIDTH)


def format_interval(seconds: float) -> str:
    """``mm:ss`` or ``h:mm:ss``, as tqdm writes elapsed and remaining time."""
    minutes, secs = divmod(int(max(0.0, seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def format_rate(per_second: float) -> str:
    """``2.5 it/s``, or ``4.0 s/it`` when slower than one a second (as tqdm does)."""
    if per_second <= 0:
        return "? it/s"
    return f"{per_second:.1f} it/s" if per_second >= 1 else f"{1 / per_second:.1f} s/it"


def eta_text(job: JobSnapshot) -> str:
    """``00:03<00:07, 1.0 it/s`` for ``(value, max)`` progress: elapsed, time left, rate.

    The rate is the average from the job's start to its latest progress value
    (tqdm's ``smoothing=0``); the time left is what that rate gives at that
    moment, minus the time since, so it counts down between two values. A
    finished job shows its elapsed time and average rate only.
    """
    numbers = progress_numbers(job.progress)
    if numbers is None or job.started_at is None:
        return ""
    value, maximum = numbers
    elapsed = job.elapsed
    measured_at = job.progress_at if job.progress_at is not None else time.time()
    measured = max(0.0, measured_at - job.started_at)
    rate = value / measured if measured > 0 else 0.0
    if not job.state.active:
        return f"{format_interval(elapsed)}, {format_rate(value / elapsed if elapsed else 0.0)}"
    if rate <= 0:
        return f"{format_interval(elapsed)}<?, {format_rate(rate)}"
    left = max(0.0, (maximum - value) / rate - (elapsed - measured))
    return f"{format_interval(elapsed)}<{format_interval(left)}, {format_rate(rate)}"


def format_bytes(amount: int) -> str:
    """``257 MiB``, ``1.2 GiB``."""
    value, unit = float(amount), "B"
    for name in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, name
    return f"{value:.0f} {unit}" if unit in ("B", "KiB", "MiB") else f"{value:.1f} {unit}"


def usage_text(job: JobSnapshot) -> str:
    """``257 MiB · 1.1 s CPU``: the peak memory and CPU time sampled from its worker."""
    parts = []
    if job.peak_memory:
        parts.append(format_bytes(job.peak_memory))
    if job.cpu_time is not None:
        parts.append(f"{job.cpu_time:.1f} s CPU")
    return " · ".join(parts)


def format_elapsed(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``, like tqdm's elapsed time."""
    whole = int(max(0.0, seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def state_text(job: JobSnapshot) -> str:
    if job.state is JobState.QUEUED and job.queue_position is not None:
        return f"queued #{job.queue_position}"
    return job.state.value


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def row_view(job: JobSnapshot) -> RowView:
    full_title = f"{job.name} · {job.label}" if job.label else job.name
    bar = progress_bar(job.progress)
    tooltip = full_title
    text = "" if bar else progress_text(job.progress)
    if job.failure is not None:
        tooltip = f"{full_title}\n{job.failure.message}"
        bar, text = None, _shorten(job.failure.message, PROGRESS_TEXT_WIDTH)  # why, in the row
    bar_text = f"{bar[0]}/{bar[1]}" if bar else ""
    eta = eta_text(job) if bar else ""
    return RowView(
        job_id=job.id,
        title=_shorten(full_title, TITLE_WIDTH),
        tooltip=tooltip,
        state_text=state_text(job),
        tone=TONES[job.state],
        bar=bar,
        bar_text=f"{bar_text} [{eta}]" if eta else bar_text,
        progress_text=text,
        elapsed_text="" if job.started_at is None else format_elapsed(job.elapsed),
        usage_text=usage_text(job),
        cancellable=job.state.active,
    )


def choose_rows(jobs: Sequence[JobSnapshot], max_rows: int) -> RowChoice:
    """Active jobs first, then the newest finished; shown newest first."""
    newest_first = sorted(jobs, key=lambda job: job.submitted_at, reverse=True)
    active = [job for job in newest_first if job.state.active]
    finished = [job for job in newest_first if not job.state.active]
    shown_active = active[:max_rows]
    shown_finished = finished[: max(0, max_rows - len(shown_active))]
    shown = sorted(shown_active + shown_finished, key=lambda job: job.submitted_at, reverse=True)
    return RowChoice(
        shown=shown,
        folded_finished=len(finished) - len(shown_finished),
        hidden_active=len(active) - len(shown_active),
    )


def summary(jobs: Sequence[JobSnapshot]) -> str:
    """``1 running, 2 queued, 5 finished`` (only the non-zero counts)."""
    counts = {"running": 0, "queued": 0, "finished": 0}
    for job in jobs:
        if job.state is JobState.RUNNING:
            counts["running"] += 1
        elif job.state is JobState.QUEUED:
            counts["queued"] += 1
        else:
            counts["finished"] += 1
    parts = [f"{n} {what}" for what, n in counts.items() if n]
    return ", ".join(parts) if parts else "no jobs yet"


def footer_text(choice: RowChoice) -> str:
    parts = []
    if choice.hidden_active:
        parts.append(f"+ {choice.hidden_active} more queued or running (Cancel all stops them)")
    if choice.folded_finished:
        plural = "s" if choice.folded_finished != 1 else ""
        parts.append(f"+ {choice.folded_finished} older finished job{plural}")
    return " · ".join(parts)


def text_table(title: str, jobs: Sequence[JobSnapshot], max_rows: int) -> str:
    """The panel as plain text, for front ends without widgets and for ``%nbbg``."""
    choice = choose_rows(jobs, max_rows)
    lines = [f"{title}: {summary(jobs)}"]
    for job in choice.shown:
        row = row_view(job)
        progress = row.bar_text or row.progress_text
        lines.append(
            f"  {job.id[:8]:<8}  {row.title:<40}  {row.state_text:<10}  "
            f"{progress:<12}  {row.elapsed_text:<7}  {row.usage_text}".rstrip()
        )
    footer = footer_text(choice)
    if footer:
        lines.append(f"  {footer}")
    return "\n".join(lines)
