"""How a job's outcome looks to the browser: Dash's error result, and JSON checks.

A failed job becomes ``{"background_callback_error": {"msg", "tb"}}``, which
Dash shows as the callback's error (and passes to ``on_error``). A value the
browser cannot receive (not JSON-serialisable) must end the job with an error
that says so: otherwise every poll of the app would answer 500.
"""

from __future__ import annotations

from typing import Any

from .._engine.jobs import JobSnapshot
from .._errors import BadProgressError
from .private import to_json

PLAIN_CHECK_LIMIT = 64
"""Values (atoms, lists, dicts) looked at before a result is handed to the full encoder."""

_INT_RANGE = range(-(2**63), 2**64)  # what orjson encodes; a larger int makes Dash answer 500


def json_problem(value: Any) -> str | None:
    """Why ``value`` cannot go to the browser as JSON, or None when it can.

    A small value of plain JSON types is answered without encoding it: Dash
    encodes every answer anyway, and plotly's encoder (module lookups before
    orjson starts) costs ~4 us a small value against < 1 us for this walk.
    """
    if _plain_json(value):
        return None
    try:
        to_json(value)
    except Exception as exc:  # noqa: BLE001 - plotly's encoder raises several types
        return f"{type(exc).__name__}: {exc}"
    return None


def _plain_json(value: Any) -> bool:
    """Whether ``value`` is, within ``PLAIN_CHECK_LIMIT`` values, made of JSON's own types."""
    pending = [value]
    for _ in range(PLAIN_CHECK_LIMIT):
        if not pending:
            return True
        item = pending.pop()
        kind = type(item)
        if kind is str or kind is float or kind is bool or item is None:
            continue
        if kind is int:
            if item not in _INT_RANGE:
                return False
        elif kind is list or kind is tuple:
            pending.extend(item)
        elif kind is dict:
            if any(type(key) is not str for key in item):
                return False
            pending.extend(item.values())
        else:
            return False
    return not pending


def bad_update_error(name: str, problem: str) -> BadProgressError:
    """A progress or ``set_props`` update the browser cannot receive."""
    return BadProgressError(name, f"not JSON-serialisable: {problem}")


def unsendable_result_message(name: str, problem: str) -> str:
    return (
        f"`{name}` returned a value that cannot be sent to the browser "
        f"({problem}): return plain data (numbers, strings, lists, dicts, figures)"
    )


def missing_result_message(name: str) -> str:
    return (
        f"the result of `{name}` is no longer in the store (its directory "
        "was deleted, or it expired or was evicted): run the callback again"
    )


def other_process_message() -> str:
    return (
        "this job was started by another server process (or by this kernel before it "
        "restarted), and LokyManager keeps its jobs in the process that starts them: serve "
        "the app from one process with threads (e.g. gunicorn -w 1 --threads 8), or use "
        "CeleryManager or RayManager for several processes"
    )


def error_result(snapshot: JobSnapshot, message: str | None = None) -> dict[str, Any]:
    """Dash's error answer for a failed job (``message`` overrides the job's own)."""
    failure = snapshot.failure
    return {
        "background_callback_error": {
            "msg": message or (failure.message if failure else "the job failed"),
            "tb": (failure.traceback if failure and not message else "") or "",
        }
    }


def warm_json_encoder() -> None:
    """Encode one component now, on this thread, before any request thread does.

    Dash's encoder (plotly's, with orjson) meets its first object orjson
    cannot encode (a child component) and orjson then sets up its numpy
    support; with orjson 3.8 two request threads doing that at once abort the
    process (SIGILL): 16 tabs loading the page together killed the kernel.
    """
    from dash import html

    to_json(html.Div(html.Div()))
