r"""What ``manager.history()`` returns: :class:`JobRecord`\ s in a :class:`JobHistory`.

A record is a finished job as ``history.py`` stored it. Its summary fields
come with it; its output tail and traceback are read from the history's
database when asked for, and ``result()`` / ``rerun()`` go through the history
that listed it (the store it reads results from, the manager it submits to).
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from .._errors import JobCancelledError, JobFailedError, ResultEvictedError
from .jobs import JobState
from .output import OutputLine
from .store import MISSING, read_result

ARGUMENTS_WIDTH = 200
"""Characters of a ``submit()`` job's argument repr kept in its record."""


class RecordSource(Protocol):
    """What a record reads through (``history.History``)."""

    store: Any

    def output_of(self, job_id: str) -> tuple[OutputLine, ...]: ...

    def traceback_of(self, job_id: str) -> str: ...

    def rerun(self, record: JobRecord) -> str: ...


def _short_repr() -> reprlib.Repr:
    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = 60
    shortener.maxlist = shortener.maxtuple = shortener.maxdict = shortener.maxset = 6
    return shortener


_SHORTENER = _short_repr()


def describe_call(args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """``(3, 'a', x=[1, 2, ...])``, short, even when an argument's ``repr`` raises."""
    parts = [_safe_repr(value) for value in args]
    parts += [f"{key}={_safe_repr(value)}" for key, value in kwargs.items()]
    text = f"({', '.join(parts)})"
    return text if len(text) <= ARGUMENTS_WIDTH else text[: ARGUMENTS_WIDTH - 1] + "…"


def _safe_repr(value: Any) -> str:
    try:
        return _SHORTENER.repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not lose the record
        return f"<{type(value).__name__}: repr() failed>"


@dataclass(frozen=True)
class JobRecord:
    """A finished job as the history keeps it (``manager.history()``)."""

    id: str
    name: str
    label: str
    arguments: str
    state: JobState
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    output_lines: int
    output_dropped: int
    peak_memory: int | None
    cpu_time: float | None
    cache_hit: bool
    result_key: str
    rerunnable: bool
    _history: RecordSource | None = field(default=None, repr=False, compare=False)

    @property
    def duration(self) -> float | None:
        """Seconds from start to end (None for a job cancelled before it started)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)

    @property
    def output(self) -> tuple[OutputLine, ...]:
        """The job's output tail (loaded from the database on each read)."""
        return self._need_history().output_of(self.id)

    @property
    def traceback(self) -> str:
        """The traceback of a failed job ("" otherwise)."""
        return self._need_history().traceback_of(self.id)

    def result(self) -> Any:
        """The job's result, while the store still holds it.

        Raises ``JobFailedError`` / ``JobCancelledError`` for a job that did
        not end done, ``ResultEvictedError`` once its result is gone.
        """
        if self.state is JobState.CANCELLED:
            raise JobCancelledError(self.id)
        if self.state is JobState.ERROR:
            raise JobFailedError(self.id, self.error or "", self.traceback)
        value = read_result(self._need_history().store, self.result_key, self.name)
        if value is MISSING:
            raise ResultEvictedError(self.id, self.name)
        return value

    def rerun(self) -> str:
        """Submit the same call again to the manager that lists this record; return the new id."""
        return self._need_history().rerun(self)

    def summary(self) -> dict[str, Any]:
        """The record's fields as a plain dict (one row of ``to_pandas()``)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_history"}
        data["state"] = self.state.value
        data["duration"] = self.duration
        return data

    def _need_history(self) -> RecordSource:
        if self._history is None:
            raise RuntimeError("this record is not attached to a history")
        return self._history


class JobHistory(list[JobRecord]):
    """``manager.history()``: records newest first, and ``to_pandas()``."""

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` of the records (pandas is optional: install it for this)."""
        try:
            import pandas as pd  # type: ignore[import-untyped,unused-ignore]
        except ImportError as exc:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from exc
        frame = pd.DataFrame([record.summary() for record in self])
        for column in ("submitted_at", "started_at", "finished_at"):
            if column in frame:
                frame[column] = pd.to_datetime(frame[column], unit="s")
        return frame
