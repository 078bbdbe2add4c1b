"""What Dash hands a manager for one job, and how nbbg names where a job came from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DashJobFunction:
    """What ``make_job_fn`` returns: the user's callback and whether it reports progress."""

    fn: Callable[..., Any]
    has_progress: bool

    @property
    def name(self) -> str:
        return getattr(self.fn, "__name__", type(self.fn).__name__)


@dataclass(frozen=True)
class AppOrigin:
    """The ``origin`` of a job a Dash app started: ``id()`` of the app's Flask server.

    ``server_id`` is None when the request's app could not be told apart.
    """

    server_id: int | None


def trigger_label(context: Any) -> str:
    """The triggering inputs, e.g. ``button.n_clicks=3``."""
    triggered = (context or {}).get("triggered_inputs") or []
    parts = []
    for item in triggered:
        try:
            parts.append(f"{item['prop_id']}={item.get('value')!r}")
        except (TypeError, KeyError):
            continue
    return ", ".join(parts)
