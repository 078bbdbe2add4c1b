"""What runs inside a Ray worker process: one job as a streaming generator task.

A remote worker cannot reach the kernel's socket, so a job's reports travel
back the way Ray returns values: the task is a generator that yields them as
they come. The job runs in a thread of the task; ``set_progress`` writes to the
same :class:`~nbbg._engine.channel.JobReporter` as under loky (an attribute
store, ~0.1 us), and the task's loop takes the latest value and merged
``set_props`` at most every ``FLUSH_INTERVAL`` s and yields them. The last item
is the job's outcome with its pickled result: the kernel writes it to its own
store, which a node elsewhere cannot reach.

Every item is pickled here (so a value that cannot be pickled becomes a
``BAD_PROGRESS`` report, as under loky) and yielded as bytes. This module
imports no Ray: ``ray_backend`` wraps :func:`run_streaming` in ``ray.remote``.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import cloudpickle

from . import worker
from .channel import FLUSH_INTERVAL, JobReporter, Report, ReportKind
from .jobs import JobFailure
from .worker import JobSpec, WorkerOutcome

POLL = 0.05
"""Seconds the task's loop waits for a report before it checks whether the job ended."""


class StreamSender:
    """A Ray worker's :class:`~nbbg._engine.worker.Sender`: reports wait for the task's loop."""

    def __init__(self) -> None:
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._active: JobReporter | None = None
        self._pending: list[Report] = []

    def begin(self, job_id: str) -> JobReporter:
        self._pending = []
        self._active = reporter = JobReporter(job_id, self.wake)
        return reporter

    def end(self, reporter: JobReporter) -> int:
        self._active = None
        self._collect(reporter)
        return reporter.messages_sent

    def take(self) -> list[Report]:
        """The reports gathered since the last call (the active job's latest included)."""
        reporter = self._active
        if reporter is not None:
            self._collect(reporter)
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def _collect(self, reporter: JobReporter) -> None:
        with self._lock:
            reports = reporter._take()
            reporter.messages_sent += len(reports)
            self._pending += reports


class RayHeld:
    """A large value the kernel put in Ray's object store once per version.

    Each job gets it from the store afresh (numpy arrays come back read-only,
    mapped from the object store; other values are rebuilt).
    """

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def value(self) -> Any:
        import ray

        return ray.get(self.ref)


def _state() -> worker._WorkerState:
    if worker._state is None:
        worker._state = worker._WorkerState(StreamSender())
    return worker._state


def _encode(report: Report) -> bytes:
    try:
        data: bytes = cloudpickle.dumps(report, protocol=pickle.HIGHEST_PROTOCOL)
        return data
    except Exception as exc:  # noqa: BLE001 - a value that cannot be pickled
        reason = f"{report.kind.value} value: {type(exc).__name__}: {exc}"
        return pickle.dumps(Report(ReportKind.BAD_PROGRESS, report.job_id, reason))


def warm_up(modules: tuple[str, ...]) -> int:
    """Import what jobs need in this worker process; return its pid."""
    worker.warm_up(modules, "")
    return os.getpid()


def run_streaming(
    spec: JobSpec, payload: bytes | None, objects: dict[bytes, tuple[int, Any]]
) -> Iterator[bytes]:
    """Run one job; yield ``("started", pid, host)``, its reports, then ``("done", outcome, data)``.

    ``payload`` (the callable's pickle, resolved by Ray from the object the
    kernel put once per version) and ``objects`` (digest -> size and object
    ref of each large value) are what ``spec`` left out.
    """
    state = _state()
    sender = state.sender
    assert isinstance(sender, StreamSender), "a loky worker cannot run a Ray task"
    yield pickle.dumps(("started", os.getpid(), socket.gethostname()))
    held = ((digest, size, RayHeld(ref)) for digest, (size, ref) in objects.items())
    state.objects.use(held)  # type: ignore[arg-type]  # RayHeld has Received's value()
    spec = replace(spec, payload=payload)
    result: list[bytes] = []

    def keep(_state: Any, job: JobSpec, value: Any) -> JobFailure | None:
        data = worker.pickle_result(job, value)
        if isinstance(data, JobFailure):
            return data
        result.append(data)
        return None

    box: list[WorkerOutcome] = []

    def run() -> None:
        try:
            box.append(worker.run_job(spec, keep))
        finally:
            sender.wake.set()  # the loop yields the outcome now, not after its poll

    thread = threading.Thread(target=run, name="nbbg-job", daemon=True)
    thread.start()
    while True:
        ended = not thread.is_alive()
        for report in sender.take():
            yield _encode(report)
        if ended:
            break
        sender.wake.wait(POLL)
        sender.wake.clear()
        thread.join(FLUSH_INTERVAL)  # coalesce: the job's next values replace this one
    outcome = box[0] if box else WorkerOutcome("error", 0, JobFailure("the job's thread died"))
    yield pickle.dumps(("done", outcome, result[0] if result else None))
