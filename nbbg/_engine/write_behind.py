"""Small results written to the store in batches, after their job has ended.

A job's pickled result small enough to be a row of diskcache's database (not
a file of its own) comes back to the kernel with the job's outcome, on the
worker's socket; the kernel keeps it here and writes everything waiting in
one transaction, at most ``WRITE_DELAY`` later. Writing it in the worker cost
half of a no-op job's CPU time there (~0.3 ms: a transaction per job, the
workers taking turns on the database's write lock), and the poll that took
the result read it back through SQLite; that poll now usually finds it here.

Reads in this process see a waiting entry: ``Store`` answers ``get``, ``in``,
``touch`` and ``delete`` from here first and writes what waits before any
other operation. Another process (a second kernel on the same store) sees an
entry once it is written. A kernel killed outright loses what waits, as it
loses its job table: nobody could have collected those results any more.

A failed batch (disk full, a damaged database) is kept and tried again with
the next one, after the store's own recovery; after ``MAX_ATTEMPTS`` its
entries are dropped and logged, and reading one then says the result is no
longer in the store, as for an evicted one.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

LOGGER = logging.getLogger("nbbg")

WRITE_DELAY = 0.2
"""Seconds a result may wait before it is written, so that results are written in batches."""

MAX_WAITING_BYTES = 16 * 2**20
"""Beyond this many bytes waiting, the writer is woken at once."""

MAX_ATTEMPTS = 3
"""Batches in a row that may fail before the waiting entries are dropped (and logged)."""

IDLE_EXIT = 5.0
"""Seconds the writer thread waits for an entry before it ends (the next one starts another):
so a store nobody uses any more holds no thread and can be freed."""


@dataclass(frozen=True)
class Waiting:
    """One entry waiting to be written: what ``diskcache.Cache.set`` would take."""

    data: bytes
    expire: float | None
    tag: str | None


WriteBatch = Callable[[Iterable[tuple[str, Waiting]]], None]
"""Writes the given entries, all or none (one transaction)."""

DeleteKeys = Callable[[Iterable[str]], None]

Recover = Callable[[BaseException], None]


class WriteBehind:
    """The entries waiting to be written, and the thread that writes them."""

    def __init__(
        self, write_batch: WriteBatch, delete: DeleteKeys, recover: Recover, name: str
    ) -> None:
        self._write_batch = write_batch
        self._delete = delete
        self._recover = recover
        self._name = name
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # one batch at a time: the thread's or a flush
        self._waiting: dict[str, Waiting] = {}
        self._waiting_bytes = 0
        self._in_flight: dict[str, Waiting] = {}
        self._deleted_in_flight: set[str] = set()
        self._failures = 0
        self._wake = threading.Event()
        self._hurry = threading.Event()
        self._thread_pid: int | None = None
        self._writer: int | None = None  # the thread writing a batch now
        self._exit_hook_pid: int | None = None

    # ------------------------------------------------------------ entries
    def put(self, key: str, waiting: Waiting) -> None:
        with self._lock:
            self._waiting[key] = waiting
            self._waiting_bytes += len(waiting.data)
            full = self._waiting_bytes > MAX_WAITING_BYTES
            if self._thread_pid != os.getpid():  # first use, or first in a forked child
                self._thread_pid = os.getpid()
                threading.Thread(target=self._write_loop, name=self._name, daemon=True).start()
                if self._exit_hook_pid != os.getpid():
                    # The writer is a daemon thread: write what waits at exit. Registered
                    # at first use, so it runs before the exit hooks of what was set up
                    # earlier (a temporary store's removal).
                    self._exit_hook_pid = os.getpid()
                    atexit.register(_write_at_exit, weakref.ref(self))
        if not self._wake.is_set():
            self._wake.set()
        if full:
            self._hurry.set()

    def get(self, key: str) -> Waiting | None:
        with self._lock:
            return self._waiting.get(key)

    def touch(self, key: str, expire: float | None) -> bool:
        """Give a waiting entry a new expiry; False if ``key`` is not waiting."""
        with self._lock:
            waiting = self._waiting.get(key)
            if waiting is None:
                return False
            self._waiting[key] = Waiting(waiting.data, expire, waiting.tag)
            return True

    def discard(self, keys: Iterable[str] | None = None) -> None:
        """Forget waiting entries (``None``: all), also once a batch under way has written them."""
        with self._lock:
            chosen = [*self._waiting, *self._in_flight] if keys is None else list(keys)
            for key in chosen:
                waiting = self._waiting.pop(key, None)
                if waiting is not None:
                    self._waiting_bytes -= len(waiting.data)
            self._deleted_in_flight.update(key for key in chosen if key in self._in_flight)

    # ------------------------------------------------------------ writing
    def flush(self) -> None:
        """Write every waiting entry now, on this thread.

        A no-op inside a batch's own write: diskcache's ``set`` calls public
        methods of the store (``volume``) that flush first.
        """
        if self._waiting and self._writer != threading.get_ident():
            self._write_waiting(raise_errors=True)

    def _write_loop(self) -> None:
        while True:
            if not self._wake.wait(IDLE_EXIT):
                with self._lock:
                    if not self._waiting and not self._wake.is_set():
                        self._thread_pid = None  # the next put starts a thread again
                        return
                continue
            self._hurry.wait(WRITE_DELAY)  # let more results come, unless too many bytes wait
            self._wake.clear()  # before taking the batch: a later entry sets it again
            self._hurry.clear()
            try:
                self._write_waiting(raise_errors=False)  # a failed batch is tried again
            except Exception:
                LOGGER.exception("nbbg: results written meanwhile could not be deleted")
            if self._waiting:
                self._wake.set()

    def _write_waiting(self, raise_errors: bool) -> None:
        with self._writing:
            with self._lock:
                batch = self._in_flight = dict(self._waiting)
            if not batch:
                return
            self._writer = threading.get_ident()
            try:
                self._write_batch(batch.items())
            except Exception as exc:
                self._failed(batch, exc)
                if raise_errors:
                    raise
                return
            finally:
                self._writer = None
                with self._lock:
                    self._in_flight = {}
                    deleted, self._deleted_in_flight = self._deleted_in_flight, set()
            self._failures = 0
            self._let_go(batch)
            if deleted:  # deleted while being written: delete the rows just written
                self._delete(deleted)

    def _let_go(self, batch: dict[str, Waiting]) -> None:
        """Stop keeping the batch's entries: those not replaced or touched since it was taken."""
        with self._lock:
            for key, waiting in batch.items():
                if self._waiting.get(key) is waiting:
                    del self._waiting[key]
                    self._waiting_bytes -= len(waiting.data)

    def _failed(self, batch: dict[str, Waiting], exc: BaseException) -> None:
        with contextlib.suppress(Exception):
            self._recover(exc)
        self._failures += 1
        if self._failures < MAX_ATTEMPTS:
            LOGGER.warning("nbbg: %d results could not be written yet (%s)", len(batch), exc)
            return
        self._failures = 0
        self._let_go(batch)
        LOGGER.error(
            "nbbg: %d results were dropped after %d failed writes to the store (%s)",
            len(batch),
            MAX_ATTEMPTS,
            exc,
        )


def _write_at_exit(ref: weakref.ref[WriteBehind]) -> None:
    write_behind = ref()
    if write_behind is not None:
        with contextlib.suppress(Exception):  # a store that cannot be written loses them
            write_behind.flush()


def flushing(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a store method so that it writes the waiting entries first."""

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.write_waiting()
        return method(self, *args, **kwargs)

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper
