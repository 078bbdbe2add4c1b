"""Job history that outlives the kernel: one record per finished job, in the store's directory.

::

    engine ── terminal "state" events ──► HistoryWriter.on_event ──► queue (never blocks)
                                                                        │ writer thread:
    manager.history() ◄── JobRecord rows ◄── history.db (SQLite, WAL) ◄─┘ batches, then prunes

Every job that ends (done, error, cancelled; cache hits too) leaves a
:class:`JobRecord`: id, callback name, label (a Dash job's triggering inputs),
a short repr of a ``submit()`` job's arguments (never the data itself),
submitted / started / finished times, final state, error and traceback,
output tail, peak memory, CPU time, whether it was a ``cache_by`` hit, and the
key of its result in the store (``record.result()`` loads it while it is
there). A ``submit()`` job also keeps its call, pickled (up to
``MAX_CALL_BYTES``), so ``record.rerun()`` can submit it again, also from
another kernel.

The records live in ``history.db`` next to the diskcache database: a second
kernel on the same store (the default store is the same for every kernel of
one user) sees the first one's jobs. SQLite, not diskcache entries: listing
10 000 records newest first, filtered by name or state, is one indexed query.
The output tail and traceback are loaded only when a record's ``output`` /
``traceback`` is read, so ``history()`` stays fast. Retention: at most
``MAX_RECORDS`` records, none older than ``MAX_AGE`` seconds, and the database
under ``MAX_DB_BYTES``; the oldest go first.

Records wait up to ``WRITE_DELAY`` in memory and are written in one
transaction per batch, retention applied at most every ``PRUNE_INTERVAL``:
one transaction per job cost the kernel ~0.2 ms of CPU for each no-op job
(a third of what nbbg added to the server's time per job). Every read in
this process (``records()``, ``record()``) writes what waits and applies
retention first, so it never misses a record; a kernel killed outright
loses at most the last ``WRITE_DELAY`` of records.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import pickle
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cloudpickle

from .._errors import NotRerunnableError
from .jobs import JobSnapshot, JobState
from .output import OutputLine
from .records import JobHistory, JobRecord, describe_call
from .row_chunks import chunks

if TYPE_CHECKING:
    pass

LOGGER = logging.getLogger("nbbg")

DATABASE = "history.db"
MAX_RECORDS = 10_000
"""Records kept at most (the oldest go first)."""
MAX_AGE = 30 * 24 * 3600.0
"""Seconds a record is kept at most: 30 days."""
MAX_DB_BYTES = 128 * 2**20
"""The database's size at most: 128 MiB (a record with a full output tail is up to ~260 KiB)."""
MAX_CALL_BYTES = 2**20
"""A ``submit()`` job's pickled call is kept for ``rerun()`` up to this size (1 MiB)."""
WRITE_DELAY = 0.5
"""Seconds a queued record may wait, so records are written in batches."""
PRUNE_INTERVAL = 10.0
"""Seconds between two retention passes of the writer (reads apply it at once)."""
LABEL_WIDTH = 500
"""Characters of a job's label (a Dash job's triggering inputs) kept in its record."""

_SUMMARY_COLUMNS = (
    "id, name, label, arguments, state, submitted_at, started_at, finished_at, error, "
    "output_lines, output_dropped, peak_memory, cpu_time, cache_hit, result_key, rerunnable"
)
_COLUMNS = 19

ROWS_PER_UPSERT = (32, 8, 2, 1)
"""Records per statement (``row_chunks``): 19 parameters each, within the 999 of older
SQLite builds."""


@functools.lru_cache(maxsize=len(ROWS_PER_UPSERT))
def _upsert(count: int) -> str:
    """One statement writing ``count`` records: one SQLite step (each step gives the
    kernel's GIL away, a thread switch under load), not one per record.

    A job recorded again (a done job failed later: a result the browser cannot
    take) keeps its arguments and call.
    """
    row = f"({', '.join('?' * _COLUMNS)})"
    return f"""
INSERT INTO jobs VALUES {", ".join([row] * count)}
ON CONFLICT (id) DO UPDATE SET
    state = excluded.state, finished_at = excluded.finished_at, error = excluded.error,
    traceback = excluded.traceback, output = excluded.output,
    output_lines = excluded.output_lines, output_dropped = excluded.output_dropped,
    peak_memory = excluded.peak_memory, cpu_time = excluded.cpu_time
"""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, label TEXT NOT NULL, arguments TEXT NOT NULL,
    state TEXT NOT NULL, submitted_at REAL NOT NULL, started_at REAL, finished_at REAL,
    error TEXT, traceback TEXT NOT NULL, output TEXT NOT NULL, output_lines INTEGER NOT NULL,
    output_dropped INTEGER NOT NULL, peak_memory INTEGER, cpu_time REAL,
    cache_hit INTEGER NOT NULL, result_key TEXT NOT NULL, rerunnable INTEGER NOT NULL,
    call BLOB
);
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (submitted_at);
CREATE INDEX IF NOT EXISTS jobs_by_name ON jobs (name, submitted_at);
"""


@dataclass
class _Call:
    """What a ``submit()`` job was called with, until its record is written."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


Submit = Callable[..., str]


class History:
    """The records of one store directory: written by a thread, read by any."""

    def __init__(self, directory: str, store: Any, submit: Submit) -> None:
        self.path = os.path.join(directory, DATABASE)
        self.store = store
        self._submit = submit
        self._calls: dict[str, _Call] = {}
        self._calls_lock = threading.Lock()
        self._queue: queue.Queue[JobSnapshot | str | None] = queue.Queue()
        self._local = threading.local()
        self._idle = threading.Condition()
        self._pending = 0
        self._hurry = threading.Event()
        """Set by a reader (``flush``) or ``close``: write what waits now, and prune."""
        self._prune_owed = False
        """Records were written since the last retention pass."""
        self._pruned_at = time.monotonic()
        with self._connection() as connection:
            connection.executescript(_SCHEMA)
        threading.Thread(target=self._write_loop, name="nbbg-history", daemon=True).start()

    # ------------------------------------------------------------ connections
    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (SQLite connections are not shared between threads)."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
        return connection

    # ------------------------------------------------------------ writing
    def note_call(self, job_id: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
        """Remember a ``submit()`` job's call: its record gets its arguments and can re-run it.

        Called after ``submit`` returned, so a quick job's record may already be
        written: the writer thread then adds the call to it (``_amend``).
        """
        with self._calls_lock:
            self._calls[job_id] = _Call(fn, tuple(args), dict(kwargs))
        with self._idle:
            self._pending += 1
        self._queue.put(job_id)

    def add(self, snapshot: JobSnapshot) -> None:
        """Queue a finished job's record (returns at once; the writer thread writes it)."""
        with self._idle:
            self._pending += 1
        self._queue.put(snapshot)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every queued record is written and retention applied."""
        with self._idle:
            if self._pending:
                self._hurry.set()
                self._idle.wait_for(lambda: self._pending == 0, timeout)
        if self._prune_owed:  # the batch under way when hurried may not have pruned
            self.prune()

    def close(self) -> None:
        self._queue.put(None)
        self._hurry.set()

    def _write_loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            hurried = self._hurry.wait(WRITE_DELAY)
            self._hurry.clear()  # before draining: a flush from now on is seen next round
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._queue.get_nowait())
            snapshots = [item for item in batch if isinstance(item, JobSnapshot)]
            amended = [item for item in batch if isinstance(item, str)]
            prune = hurried or time.monotonic() - self._pruned_at >= PRUNE_INTERVAL
            try:
                self.write(snapshots, prune=prune)
                self._amend(amended)
            except Exception:
                LOGGER.exception("nbbg: job records could not be written to %s", self.path)
            with self._idle:
                self._pending -= len(snapshots) + len(amended)
                self._idle.notify_all()
            if None in batch:
                return  # closed

    def _amend(self, job_ids: list[str]) -> None:
        """Add calls noted after their job's record was written (the others wait in ``_calls``)."""
        for job_id in job_ids:
            with self._calls_lock:
                call = self._calls.pop(job_id, None)
            if call is None:
                continue  # already in its record
            blob = _pickled_call(call)
            with self._connection() as connection:
                updated = connection.execute(
                    "UPDATE jobs SET arguments = ?, call = ?, rerunnable = ? WHERE id = ?",
                    (describe_call(call.args, call.kwargs), blob, int(blob is not None), job_id),
                ).rowcount
            if not updated:  # the job still runs: its record will take the call
                with self._calls_lock:
                    self._calls.setdefault(job_id, call)

    def write(self, snapshots: Iterable[JobSnapshot], *, prune: bool = True) -> None:
        """Write records now (on this thread), in one transaction; then apply retention."""
        rows = [self._row(snapshot) for snapshot in snapshots]
        if rows:
            connection = self._connection()
            with connection:
                connection.execute("BEGIN IMMEDIATE")
                for chunk in chunks(rows, ROWS_PER_UPSERT):
                    connection.execute(_upsert(len(chunk)), [v for row in chunk for v in row])
        if prune:
            self.prune()
        elif rows:
            self._prune_owed = True

    def _row(self, job: JobSnapshot) -> tuple[Any, ...]:
        with self._calls_lock:
            call = self._calls.pop(job.id, None)
        arguments, blob = "", None
        if call is not None:
            arguments = describe_call(call.args, call.kwargs)
            blob = _pickled_call(call)
        failure = job.failure
        output = json.dumps([list(line) for line in job.output], ensure_ascii=False)
        label = job.label if len(job.label) <= LABEL_WIDTH else job.label[: LABEL_WIDTH - 1] + "…"
        return (
            job.id,
            job.name,
            label,
            arguments,
            job.state.value,
            job.submitted_at,
            job.started_at,
            job.finished_at,
            failure.message if failure else None,
            failure.traceback if failure else "",
            output,
            len(job.output),
            job.output_dropped,
            job.peak_memory,
            job.cpu_time,
            int(job.cache_hit),
            job.result_key,
            int(blob is not None),
            blob,
        )

    def prune(self, now: float | None = None) -> None:
        """Apply retention: count, age, then size (oldest first)."""
        self._prune_owed, self._pruned_at = False, time.monotonic()
        now = time.time() if now is None else now
        connection = self._connection()
        with connection:
            connection.execute("DELETE FROM jobs WHERE submitted_at < ?", (now - MAX_AGE,))
            connection.execute(
                "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs ORDER BY submitted_at DESC "
                "LIMIT -1 OFFSET ?)",
                (MAX_RECORDS,),
            )
        while self._used_bytes(connection) > MAX_DB_BYTES:
            count = connection.execute("SELECT count(*) FROM jobs").fetchone()[0]
            if not count:
                break
            with connection:
                connection.execute(
                    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs ORDER BY submitted_at "
                    "LIMIT ?)",
                    (max(1, count // 10),),
                )

    @staticmethod
    def _used_bytes(connection: sqlite3.Connection) -> int:
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        free = connection.execute("PRAGMA freelist_count").fetchone()[0]
        size = connection.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def clear(self) -> None:
        """Delete every record (of every kernel using this store)."""
        self.flush()
        with self._connection() as connection:
            connection.execute("DELETE FROM jobs")

    # ------------------------------------------------------------ reading
    def records(
        self,
        limit: int | None = None,
        name: str | None = None,
        state: JobState | str | None = None,
    ) -> JobHistory:
        """Records newest first, optionally only of callback ``name`` or in ``state``."""
        self.flush()
        where: list[str] = []
        params: list[Any] = []
        if name is not None:
            where.append("name = ?")
            params.append(name)
        if state is not None:
            where.append("state = ?")
            params.append(JobState(state).value)
        sql = f"SELECT {_SUMMARY_COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY submitted_at DESC LIMIT ?"
        params.append(-1 if limit is None else int(limit))
        rows = self._connection().execute(sql, params).fetchall()
        return JobHistory(self._record(row) for row in rows)

    def record(self, job_id: str) -> JobRecord | None:
        """The record of one job, or None."""
        self.flush()
        sql = f"SELECT {_SUMMARY_COLUMNS} FROM jobs WHERE id = ?"
        row = self._connection().execute(sql, (job_id,)).fetchone()
        return None if row is None else self._record(row)

    def _record(self, row: Sequence[Any]) -> JobRecord:
        (job_id, name, label, arguments, state, submitted, started, finished, error) = row[:9]
        (lines, dropped, peak, cpu, cache_hit, result_key, rerunnable) = row[9:]
        return JobRecord(
            job_id,
            name,
            label,
            arguments,
            JobState(state),
            submitted,
            started,
            finished,
            error,
            lines,
            dropped,
            peak,
            cpu,
            bool(cache_hit),
            result_key,
            bool(rerunnable),
            self,
        )

    def output_of(self, job_id: str) -> tuple[OutputLine, ...]:
        row = self._connection().execute("SELECT output FROM jobs WHERE id = ?", (job_id,))
        found = row.fetchone()
        return tuple(OutputLine(*line) for line in json.loads(found[0])) if found else ()

    def traceback_of(self, job_id: str) -> str:
        row = self._connection().execute("SELECT traceback FROM jobs WHERE id = ?", (job_id,))
        found = row.fetchone()
        return str(found[0]) if found else ""

    def rerun(self, record: JobRecord) -> str:
        if not record.rerunnable:
            reason = (
                "only jobs started with submit() keep their call; a Dash job's result can "
                "only go to a browser that asked for it: trigger the callback in the app again"
                if not record.arguments
                else f"its call was not kept (larger than {MAX_CALL_BYTES} bytes pickled)"
            )
            raise NotRerunnableError(record.id, record.name, reason)
        row = self._connection().execute("SELECT call FROM jobs WHERE id = ?", (record.id,))
        found = row.fetchone()
        if found is None or found[0] is None:
            raise NotRerunnableError(record.id, record.name, "its record was deleted")
        try:
            fn, args, kwargs = cloudpickle.loads(found[0])
        except Exception as exc:
            reason = f"its call cannot be rebuilt here ({type(exc).__name__}: {exc})"
            raise NotRerunnableError(record.id, record.name, reason) from exc
        return self._submit(fn, *args, **kwargs)


class _TooLarge(Exception):
    pass


class _CappedBuffer:
    """A pickle's file that gives up past ``MAX_CALL_BYTES``: a call holding a 100 MB
    global costs the first megabyte of pickling, not 100 MB on every job."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: Any) -> int:
        length = memoryview(data).nbytes
        self.size += length
        if self.size > MAX_CALL_BYTES:
            raise _TooLarge
        self.parts.append(bytes(data))
        return length


def _pickled_call(call: _Call) -> bytes | None:
    """The call, pickled for ``rerun()``; None when it is too large to keep (or changed so
    that it no longer pickles)."""
    buffer = _CappedBuffer()
    try:
        cloudpickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(
            (call.fn, call.args, call.kwargs)
        )
    except Exception:  # noqa: BLE001 - _TooLarge, or a call that no longer pickles
        return None
    return b"".join(buffer.parts)
