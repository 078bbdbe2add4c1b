"""nbbg: Dash background callbacks that run well in Jupyter notebooks."""

from __future__ import annotations

from ._engine import Engine, WorkerInfo
from ._errors import (
    BadProgressError,
    JobCancelledError,
    JobFailedError,
    NbbgError,
    ShutdownError,
    StoreError,
    UnknownJobError,
    UnpicklableArgumentsError,
    UnpicklableCallbackError,
    UnpicklableResultError,
    WorkerDiedError,
)
from ._jobs import JobEvent, JobFailure, JobSnapshot, JobState
from ._manager import LokyManager

__version__ = "0.1.0"

__all__ = [
    "BadProgressError",
    "Engine",
    "JobCancelledError",
    "JobEvent",
    "JobFailedError",
    "JobFailure",
    "JobSnapshot",
    "JobState",
    "LokyManager",
    "NbbgError",
    "ShutdownError",
    "StoreError",
    "UnknownJobError",
    "UnpicklableArgumentsError",
    "UnpicklableCallbackError",
    "UnpicklableResultError",
    "WorkerDiedError",
    "WorkerInfo",
    "__version__",
]
