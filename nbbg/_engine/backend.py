"""What a slot needs from whatever runs its jobs: the slot backend protocol.

The engine (queue, ``max_workers``, cancel, events) never changes with the
backend; only a slot's *worker* does. A backend starts workers; a worker
takes one job at a time (``submit`` -> a ``concurrent.futures.Future`` of the
job's :class:`~nbbg._engine.worker.WorkerOutcome`), is stopped at once by
``kill`` (the job's process only), and says where it runs. Jobs report
progress through the ``on_report`` callback the engine hands the backend.

Two backends exist: ``loky_backend`` (one warm single-worker process per slot,
on this machine) and ``ray_backend`` (each job a Ray task, anywhere on a
cluster). A worker that ``keeps_state`` holds the callables, large values and
environment earlier jobs sent it, so the kernel's mirror of it (``packing``)
saves resending them; one that does not gets everything with every job.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

import diskcache

from .channel import Report
from .worker import JobSpec, WorkerOutcome

OnReport = Callable[[Report], None]


class WorkerHandle(Protocol):
    """One slot's worker."""

    warming: Future[Any]
    """Done once the worker can take a job at warm speed."""

    keeps_state: bool
    """Whether what one job sent stays for the next (see ``packing``)."""

    def submit(self, spec: JobSpec) -> Future[WorkerOutcome]:
        """Start the job; the future fails if the worker dies under it."""

    def pid(self) -> int | None:
        """The process running (or ready to run) the job, when known."""

    def node(self) -> str | None:
        """Where that process runs (None: this machine)."""

    def kill(self) -> int | None:
        """Stop the worker (and its job) at once; return its pid when known."""


class Backend(Protocol):
    """Starts workers for an engine's slots."""

    result_inline_limit: int
    """Bytes of a pickled result a worker hands back with the job's outcome, for the
    backend to store (``JobSpec.result_inline_limit``); larger ones the worker stores."""

    def start_worker(self) -> WorkerHandle:
        """A new worker (never called under the engine's lock: it may take time)."""

    def close(self) -> None:
        """Release what the backend holds (after every worker is killed)."""


BackendFactory = Callable[[OnReport, tuple[str, ...], diskcache.Cache], Backend]
"""``factory(on_report, warm_modules, store)``: how an engine builds its backend."""
