"""The job model: states, snapshots and events (read by every layer), and the engine's record.

A job moves ``queued -> running -> done | error | cancelled`` (a cancelled or
failed job may skip ``running``). Snapshots are immutable copies handed to
callers and subscribers, so nothing outside the engine holds its lock.
"""

from __future__ import annotations

import enum
import inspect
import re
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .output import OutputLine, OutputTail

ENGINE_TAG = uuid.uuid4().hex[:6]
"""Ends every job id made in this process: a poll can tell a job of another process."""

_JOB_ID = re.compile(r"[0-9a-f]{32}([0-9a-f]{6})")


def new_job_id() -> str:
    return uuid.uuid4().hex + ENGINE_TAG


def made_elsewhere(job_id: str) -> bool:
    """Whether ``job_id`` is an nbbg job id made in another process (another server
    process, or this kernel before a restart)."""
    match = _JOB_ID.fullmatch(job_id)
    return match is not None and match.group(1) != ENGINE_TAG


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
    """The process that runs the job; None until then (on Ray, until its task starts) or if
    it never runs (a cache hit, a job cancelled in the queue)."""
    cache_hit: bool = False
    origin: Any = None
    """Who submitted the job, as the submitter described it (the Dash adapter: which app)."""
    output: tuple[OutputLine, ...] = ()
    """The newest lines the job wrote (stdout, stderr, log records, warnings), oldest first."""
    output_dropped: int = 0
    """Lines of output not kept (beyond ``output.MAX_LINES`` / ``MAX_BYTES``)."""
    peak_memory: int | None = None
    """The most resident memory (bytes) its worker was seen using while it ran (sampled,
    and at its end)."""
    cpu_time: float | None = None
    """CPU seconds its worker spent on it (sampled while it ran; counted by the worker once
    it ended)."""
    progress_at: float | None = None
    """When the latest progress value arrived (``time.time()``): rates are measured up to it."""
    result_key: str = ""
    """Where its result is (or will be) in the store ("" for a job that never ran)."""

    @property
    def elapsed(self) -> float:
        """Seconds spent running (so far, or in total once finished)."""
        if self.started_at is None:
            return 0.0
        end = self.finished_at if self.finished_at is not None else time.time()
        return max(0.0, end - self.started_at)


EventKind = Literal["state", "progress", "output"]


@dataclass(frozen=True)
class JobEvent:
    """Sent to subscribers when a job changes state, reports progress or writes output."""

    kind: EventKind
    job: JobSnapshot


@dataclass
class Job:
    """The engine's mutable record of one job (guarded by the engine lock)."""

    id: str
    name: str
    label: str
    result_key: str
    """Where the worker stores the result ("" for a job that never runs)."""
    owns_result: bool = False
    """The result key is the job's own (deleted with the job), not a ``cache_by`` entry."""
    origin: Any = None
    submitted_at: float = field(default_factory=time.time)
    state: JobState = JobState.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    failure: JobFailure | None = None
    progress: Any = None
    progress_at: float | None = None
    collected: bool = False
    """Whether the job's outcome (result or error) has been handed to a reader."""
    worker_pid: int | None = None
    cache_hit: bool = False
    messages_received: int = 0
    messages_expected: int | None = None
    worker_outcome: Any = None
    cargo: Any = None  # what it ships (nbbg._shipping.Cargo), let go when the job ends
    output: OutputTail = field(default_factory=OutputTail)
    code: Callable[[], Any] = field(default=lambda: None)
    """The job's callable (a weak reference when it allows one): names its traceback's frames."""
    peak_memory: int | None = None
    cpu_time: float | None = None

    @classmethod
    def ended(
        cls,
        name: str,
        label: str,
        result_key: str,
        state: JobState,
        failure: JobFailure | None = None,
        origin: Any = None,
    ) -> Job:
        """A job that ended the moment it was recorded (a cache hit, or bad input)."""
        now = time.time()
        return cls(
            new_job_id(),
            name,
            label,
            result_key,
            origin=origin,
            state=state,
            started_at=now,
            finished_at=now,
            failure=failure,
            cache_hit=state is JobState.DONE,
        )

    def remember_code(self, fn: Any) -> None:
        """Keep a reference to the job's callable without keeping it alive when possible."""
        try:
            # A bound method is made anew at each access: hold it as WeakMethod does.
            self.code = weakref.WeakMethod(fn) if inspect.ismethod(fn) else weakref.ref(fn)
        except TypeError:
            self.code = lambda: fn

    @property
    def awaits_collection(self) -> bool:
        """Active, or ended with an outcome (done, error) nobody has collected yet."""
        if self.state.active:
            return True
        return self.state in (JobState.DONE, JobState.ERROR) and not self.collected

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
            origin=self.origin,
            output=tuple(self.output.lines),
            output_dropped=self.output.dropped,
            peak_memory=self.peak_memory,
            cpu_time=self.cpu_time,
            progress_at=self.progress_at,
            result_key=self.result_key,
        )
