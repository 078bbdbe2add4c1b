"""What an expanded row of the jobs panel shows: the job's output tail and its traceback.

Plain functions of a :class:`JobSnapshot`, as ``rows`` is: the panel puts
:func:`details_html` in an ``HTML`` widget (monospace; stderr, warnings and
log records of WARNING or more stand out; the traceback in red), and
:func:`details_text` is the same for text front ends and ``%nbbg``.
"""

from __future__ import annotations

import html

from .._engine.jobs import JobSnapshot
from .._engine.output import output_text
from .rows import usage_text

PROMINENT_STYLE = "color:#b45309"
ERROR_STYLE = "color:#b91c1c"
BOX_STYLE = (
    "margin:0 0 6px 2em;padding:4px 8px;max-height:24em;overflow:auto;"
    "background:rgba(127,127,127,0.08);border-left:3px solid rgba(127,127,127,0.4);"
    "font-family:var(--jp-code-font-family,monospace);font-size:12px;white-space:pre-wrap;"
    "line-height:1.35"
)


def _summary(job: JobSnapshot) -> str:
    parts = [f"job {job.id[:8]}"]
    usage = usage_text(job)
    if usage:
        parts.append(f"peak memory / CPU: {usage}")
    lines = len(job.output)
    parts.append(f"{lines} line{'s' if lines != 1 else ''} of output")
    if job.output_dropped:
        parts.append(f"{job.output_dropped} earlier lines not kept")
    return " · ".join(parts)


def details_html(job: JobSnapshot) -> str:
    """The expanded row: a summary line, the output tail, the traceback of a failure."""
    body = []
    for line in job.output:
        text = html.escape(line.text)
        if line.prominent:
            text = f'<span class="nbbg-prominent" style="{PROMINENT_STYLE}">{text}</span>'
        body.append(text)
    failure = job.failure
    if failure is not None:
        trace = failure.traceback.rstrip() or failure.message
        trace_html = html.escape(trace)
        body.append(f'<span class="nbbg-traceback" style="{ERROR_STYLE}">{trace_html}</span>')
    if not body:
        body.append("<i>no output yet</i>" if job.state.active else "<i>no output</i>")
    summary = f'<div style="opacity:0.7">{html.escape(_summary(job))}</div>'
    return f'<div class="nbbg-details" style="{BOX_STYLE}">{summary}' + "\n".join(body) + "</div>"


def details_text(job: JobSnapshot) -> str:
    """The expanded row as plain text."""
    parts = [_summary(job)]
    if job.output:
        parts.append(output_text(job.output))  # the summary counts dropped lines
    if job.failure is not None:
        parts.append(job.failure.traceback.rstrip() or job.failure.message)
    return "\n".join(parts)
