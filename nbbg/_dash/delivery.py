"""Dash's view of each job: its cache key, and what the polls have not taken yet.

Dash asks for progress and ``set_props`` updates by cache key (one per
callback and inputs), so the latest job of each key is remembered.

Dash delivers each progress value and each ``set_props`` update once: a poll
takes what arrived since the previous poll. The engine hands every report
of a running job to :meth:`Deliveries.reported` before the job can end, so a
poll that finds the job done has already taken (or can still take) all of
it. ``set_props`` calls between two polls are merged per component (Dash's
``DiskcacheManager`` keeps only the last one: dash issue #3104).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._engine.channel import Report, ReportKind

Props = dict[str, dict[str, Any]]


@dataclass
class _Pending:
    progress: tuple[Any] | None = None
    """The latest progress value not yet taken, wrapped (a bare None is a value too)."""
    props: Props = field(default_factory=dict)


class Deliveries:
    """Per job: its cache key, and the progress and ``set_props`` updates no poll has taken yet.

    It is the engine's :class:`~nbbg._engine.events.EngineHooks`: told of
    every report, and of the jobs the engine forgets (whose entries go too).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._job_by_key: dict[str, str] = {}
        self._key_by_job: dict[str, str] = {}

    def record(self, key: str, job_id: str) -> None:
        """``job_id`` is now the job of cache key ``key``."""
        with self._lock:
            self._job_by_key[key] = job_id
            self._key_by_job[job_id] = key

    def job_for(self, key: str | None) -> str | None:
        if key is None:
            return None
        with self._lock:
            return self._job_by_key.get(key)

    def reported(self, report: Report) -> None:
        with self._lock:
            pending = self._pending.setdefault(report.job_id, _Pending())
            if report.kind is ReportKind.PROGRESS:
                pending.progress = (report.payload,)
            elif report.kind is ReportKind.PROPS:
                for component_id, props in report.payload.items():
                    merged = pending.props.get(component_id, {})
                    pending.props[component_id] = {**merged, **props}

    def take_progress(self, job_id: str) -> tuple[Any] | None:
        """The progress value not yet taken, wrapped in a 1-tuple, at most once."""
        with self._lock:
            pending = self._pending.get(job_id)
            if pending is None or pending.progress is None:
                return None
            value, pending.progress = pending.progress, None
            return value

    def take_props(self, job_id: str) -> Props:
        """Every ``set_props`` update not yet taken, merged, at most once."""
        with self._lock:
            pending = self._pending.get(job_id)
            if pending is None or not pending.props:
                return {}
            props, pending.props = pending.props, {}
            return props

    def forgotten(self, job_ids: Sequence[str]) -> None:
        with self._lock:
            for job_id in job_ids:
                self._pending.pop(job_id, None)
                key = self._key_by_job.pop(job_id, None)
                if key is not None and self._job_by_key.get(key) == job_id:
                    del self._job_by_key[key]
