"""Collecting a job's outcome: ``wait`` and ``result``, and marking the outcome handed over.

A job whose outcome has been collected may be forgotten by the job table
(``table.py``); one not collected yet is kept, so nothing computed is thrown
away before someone reads it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import diskcache

from .._errors import JobCancelledError, JobFailedError, NbbgError, UnknownJobError
from .jobs import JobFailure, JobState
from .store import MISSING, read_result
from .table import JobTable


class Collector:
    def __init__(
        self,
        changed: threading.Condition,
        table: JobTable,
        store: diskcache.Cache,
        fail: Callable[[str, JobFailure], None],
    ) -> None:
        self._changed = changed
        self._table = table
        self._store = store
        self._fail = fail

    def mark(self, job_id: str) -> None:
        with self._changed:
            job = self._table.get(job_id)
            if job is not None:
                job.collected = True

    def result(self, job_id: str) -> Any:
        """The stored result of a done job, or ``MISSING``; the job counts as collected.

        A result that cannot be read fails the job (so the panel agrees with
        the app) and raises ``StoreError`` or ``UnreadableResultError``.
        """
        with self._changed:
            job = self._table.get(job_id)
            if job is None or not job.result_key:
                return MISSING
            key, name = job.result_key, job.name
        try:
            value = read_result(self._store, key, name)
        except NbbgError as exc:
            self._fail(job_id, JobFailure(str(exc)))
            raise
        finally:
            self.mark(job_id)
        return value

    def wait(self, job_id: str, timeout: float | None) -> Any:
        """Block until the job ends; return its result or raise why it did not."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            job = self._table.get(job_id)
            if job is None:
                raise UnknownJobError(job_id)
            while job.state.active:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"job {job_id} ({job.name}) still {job.state.value} after {timeout} s"
                    )
                self._changed.wait(remaining)
            state, failure = job.state, job.failure
            if state is not JobState.DONE:
                job.collected = True
        if state is JobState.CANCELLED:
            raise JobCancelledError(job_id)
        if state is JobState.ERROR:
            assert failure is not None
            raise JobFailedError(job_id, failure.message, failure.traceback)
        try:
            value = self.result(job_id)
        except NbbgError as exc:
            raise JobFailedError(job_id, str(exc)) from exc
        if value is MISSING:
            raise JobFailedError(
                job_id, "the result is no longer in the store (expired or evicted)"
            )
        return value
