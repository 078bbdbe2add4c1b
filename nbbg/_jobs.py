"""The job model shared by the engine, the Dash adapter and the notebook layer.

A job moves ``queued -> running -> done | error | cancelled`` (a cancelled or
failed job may skip ``running``). Snapshots are immutable copies handed to
callers and subscribers, so nothing outside the engine holds its lock.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, Literal


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        """True while the job waits or runs (Dash calls that "running")."""
        return self in (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True)
class JobFailure:
    """Why a job ended in ``error``: a message for people and a traceback."""

    message: str
    traceback: str = ""


@dataclass(frozen=True)
class JobSnapshot:
    """What a job looks like at one moment."""

    id: str
    name: str
    label: str
    state: JobState
    progress: Any
    queue_position: int | None
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    failure: JobFailure | None
    worker_pid: int | None
    cache_hit: bool = False

    @property
    def elapsed(self) -> float:
        """Seconds spent running (so far, or in total once finished)."""
        if self.started_at is None:
            return 0.0
        end = self.finished_at if self.finished_at is not None else time.time()
        return max(0.0, end - self.started_at)


EventKind = Literal["state", "progress"]


@dataclass(frozen=True)
class JobEvent:
    """Sent to subscribers when a job changes state or reports progress."""

    kind: EventKind
    job: JobSnapshot


@dataclass
class Job:
    """The engine's mutable record of one job (guarded by the engine lock)."""

    id: str
    name: str
    label: str
    result_key: str
    submitted_at: float = field(default_factory=time.time)
    state: JobState = JobState.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    failure: JobFailure | None = None
    progress: Any = None
    undelivered_progress: Any = None
    has_undelivered_progress: bool = False
    undelivered_props: dict[str, dict[str, Any]] = field(default_factory=dict)
    outcome_delivered: bool = False
    worker_pid: int | None = None
    slot_index: int | None = None
    cache_hit: bool = False
    messages_received: int = 0
    messages_expected: int | None = None
    worker_outcome: Any = None
    cargo: Any = None  # what it ships (nbbg._shipping.Cargo), let go when the job ends

    def snapshot(self, queue_position: int | None = None) -> JobSnapshot:
        return JobSnapshot(
            id=self.id,
            name=self.name,
            label=self.label,
            state=self.state,
            progress=self.progress,
            queue_position=queue_position,
            submitted_at=self.submitted_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            failure=self.failure,
            worker_pid=self.worker_pid,
            cache_hit=self.cache_hit,
        )
