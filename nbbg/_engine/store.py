"""The result store: a ``diskcache.Cache`` shared by the kernel and its workers.

Workers write each job's pickled result under the job's result key; the
kernel reads it when Dash (or ``wait()``) asks. ``cache_by`` entries live here
too, so they survive a kernel restart when the same directory is used.

When the default directory cannot be created (a read-only or missing home,
as some containers and hubs have), nbbg falls back to a private temporary
store, removed when the kernel exits, and warns once: failing instead would
make ``%load_ext nbbg`` (which takes no arguments) unusable there, while all
the fallback costs is that results and ``cache_by`` entries do not outlive
the kernel. A directory the user names is never replaced: it fails with
``StoreError``.

A :class:`Store` (what nbbg opens for a directory) outlives its files: when the
directory or its database is deleted or replaced during a run, every process
reopens it (recreated private) at its next use; a corrupt database is set
aside as ``cache.db.corrupt`` after the error it caused, so the next job starts
on a fresh one. A ``diskcache.Cache`` passed in by the user is used as is.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import pickle
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import diskcache
from diskcache.core import DBNAME, MODE_RAW

from .._errors import StoreError, TemporaryStoreWarning, UnreadableResultError
from .row_chunks import chunks
from .write_behind import Waiting, WriteBehind, flushing

DEFAULT_SIZE_LIMIT = 2**30
"""1 GiB: diskcache evicts the least recently stored entries beyond it."""


def default_store_directory() -> Path:
    """``$XDG_CACHE_HOME/nbbg/store`` (``~/.cache/nbbg/store``), private to the user."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nbbg" / "store"


def _make_private_directory(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o077:
        os.chmod(directory, 0o700)


Identity = tuple[int, int] | None
"""A database file's (device, inode), None when it does not exist."""


def _database_identity(directory: str) -> Identity:
    try:
        info = os.stat(os.path.join(directory, DBNAME))
    except OSError:
        return None
    return info.st_dev, info.st_ino


class Store(diskcache.Cache):  # type: ignore[misc]  # diskcache is untyped
    """A ``diskcache.Cache`` that reopens itself when its database file is gone or replaced.

    diskcache keeps one SQLite connection per thread; after ``rm -rf`` of the
    directory those connections still work on the deleted file, while new
    threads (each Dash request) fail, and the worker that writes the next
    large result recreates the directory world-readable. So every connection
    lookup compares the file on disk with the one opened (one ``stat``) and,
    when they differ, recreates the directory with mode 0700 and reopens:
    all threads then reconnect.

    It also takes entries to write later (``set_later``, see ``write_behind``):
    ``get``, ``in``, ``touch``, ``delete``, ``set`` and ``clear`` see them while
    they wait, and the operations that read, count or evict entries (``len``,
    iteration, ``volume``, ``cull``, ``pop``, ``read``, ...) write them first.
    """

    def __init__(self, directory: str, **settings: Any) -> None:
        self._later = WriteBehind(self._write_batch, self._delete_keys, self.recover, "nbbg-store")
        self._reopen_lock = threading.Lock()
        self._idle = _IdleConnections()
        self._settings = settings
        self._opening_thread: int | None = None
        self._batch_writer: int | None = None
        """The thread writing a batch: it checked the file once, at the batch's start."""
        self._identity: tuple[int, int] | None = None
        if not os.path.isdir(directory):  # never change the mode of an existing one
            _make_private_directory(Path(directory))
        self._open_replacing_corrupt(directory)

    @property
    def _con(self) -> sqlite3.Connection:
        if (
            self._opening_thread != threading.get_ident()
            and self._batch_writer != threading.get_ident()
            and _database_identity(self.directory) != self._identity
        ):
            self._reopen()
        local = self._local
        if getattr(local, "con", None) is None and self._opening_thread is None:
            self._connect(local)
        con: sqlite3.Connection = super()._con
        holder = getattr(local, "holder", None)
        if holder is None or holder.con is not con:
            local.holder = _HandBackAtThreadExit(con, self._identity, self._idle)
        return con

    def _connect(self, local: threading.local) -> None:
        """Give this thread an idle connection, or a new one any thread may take over later.

        A thread-per-request server (werkzeug's, under ``app.run``) starts a
        thread for every poll, and opening a connection (with diskcache's
        per-connection settings) costs ~0.4 ms against ~20 µs for a read:
        connections of finished threads are reused instead.
        """
        con = self._idle.take(self._identity)
        fresh = con is None
        if con is None:
            con = sqlite3.connect(
                os.path.join(self.directory, DBNAME),
                timeout=self._timeout,
                isolation_level=None,
                check_same_thread=False,  # used by one thread at a time, not always the same
            )
        local.con, local.pid = con, os.getpid()
        if fresh:
            for key, value in con.execute("SELECT key, value FROM Settings").fetchall():
                if key.startswith("sqlite_"):
                    self.reset(key, value, update=False)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a store that cannot be written loses them
            self._later.flush()
        self.close_thread_connection()

    def _reopen(self) -> None:
        with self._reopen_lock:
            if _database_identity(self.directory) == self._identity:
                return  # another thread reopened it
            _make_private_directory(Path(self.directory))
            self._idle.close_all()  # they belong to the file that is gone
            self._open_replacing_corrupt(self.directory)

    def _open_replacing_corrupt(self, directory: str) -> None:
        found = _database_identity(directory)
        try:
            self._open(directory)
        except sqlite3.DatabaseError as error:
            if not _is_corruption(error):
                raise
            _set_aside(directory, found)
            self._open(directory)

    def _open(self, directory: str) -> None:
        self._opening_thread = threading.get_ident()
        try:  # diskcache's __init__ makes fresh per-thread connections and the tables
            super().__init__(directory, **self._settings)
        finally:
            self._opening_thread = None
        self._identity = _database_identity(directory)

    def set(self, key: Any, value: Any, *args: Any, **kwargs: Any) -> bool:
        self._con  # noqa: B018 - reopen before a large value is written as a file
        self._later.discard([key])  # this value replaces a waiting one
        return bool(super().set(key, value, *args, **kwargs))

    # ------------------------------------------------------------ write-behind
    def set_later(self, key: str, data: bytes, expire: float | None, tag: str | None) -> None:
        """Store ``data`` under ``key`` within ``write_behind.WRITE_DELAY`` (one batch)."""
        self._later.put(key, Waiting(data, expire, tag))

    def write_waiting(self) -> None:
        """Write the entries ``set_later`` keeps, now.

        Not inside a transaction this thread holds (``transact``): the batch would
        join it, and its entries stop waiting before that transaction commits, so
        another thread would find them in neither place meanwhile. The writer
        thread writes them after it.
        """
        if self._txn_id != threading.get_ident():
            self._later.flush()

    def _write_batch(self, entries: Iterable[tuple[str, Waiting]]) -> None:
        """Write ``entries`` in one transaction, then evict (expired first) once for them all.

        Every SQLite statement lets the kernel's other threads take the GIL (a
        thread switch, under load), and diskcache's ``set`` runs two to four per
        entry and evicts after each. So one query finds which keys are stored
        already; the new ones (nearly all: a job's own key) go in as diskcache's
        own rows, many to an ``INSERT`` (its triggers keep the count and size);
        a key stored already, or a value large enough for a file of its own,
        goes through ``set``, which replaces the old row and its file. The
        in-memory ``cull_limit`` is 0 meanwhile (the stored setting is not touched).
        """
        chosen = list(entries)
        self._con  # noqa: B018 - reopen first if the file was deleted or replaced
        self._batch_writer = threading.get_ident()  # diskcache reads _con ~8 times per set
        cull_limit = self.cull_limit
        try:
            with self.transact(retry=True):
                self.reset("cull_limit", 0, update=False)
                stored = _stored_keys(self._sql, [key for key, _ in chosen])
                now = time.time()
                rows = []
                for key, waiting in chosen:
                    if key in stored or len(waiting.data) >= self.disk_min_file_size:
                        super().set(key, waiting.data, expire=waiting.expire, tag=waiting.tag)
                    else:
                        rows.append(_new_row(key, waiting, now))
                for chunk in chunks(rows, ROWS_PER_INSERT):
                    self._sql(_insert_rows(len(chunk)), [v for row in chunk for v in row])
        finally:
            self.reset("cull_limit", cull_limit, update=False)
            self._batch_writer = None
        if cull_limit:
            self.cull(retry=True)

    def close_thread_connection(self) -> None:
        """Close the calling thread's connection (its next use opens one again).

        For a long-lived thread that uses the store only now and then (the engine's
        chores thread deleting forgotten results): it holds no descriptors between.
        """
        holder = getattr(self._local, "holder", None)
        if holder is not None:
            holder.con = None  # closed here: never handed back
        super().close()

    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete ``keys`` in one transaction (a waiting entry is only forgotten)."""
        chosen = list(keys)
        self._later.discard(chosen)
        self._delete_keys(chosen)

    def _delete_keys(self, keys: Iterable[str]) -> None:
        with self.transact(retry=True):
            for key in keys:
                # The row only: diskcache's ``delete`` goes through ``__delitem__``,
                # which (wrapped here) writes what waits first.
                with contextlib.suppress(KeyError):
                    diskcache.Cache.__delitem__(self, key, retry=True)

    def get(self, key: Any, default: Any = None, *args: Any, **kwargs: Any) -> Any:
        waiting = self._later.get(key) if not args and not kwargs else None
        if waiting is not None:
            return waiting.data
        if args or kwargs:  # expire_time=, tag=, read=: the row must be there
            self._later.flush()
        return super().get(key, default, *args, **kwargs)

    def __contains__(self, key: Any) -> bool:
        return self._later.get(key) is not None or bool(super().__contains__(key))

    def touch(self, key: Any, expire: float | None = None, retry: bool = False) -> bool:
        if self._later.touch(key, expire):
            return True
        return bool(super().touch(key, expire, retry))

    def delete(self, key: Any, retry: bool = False) -> bool:
        waiting = self._later.get(key) is not None
        self._later.discard([key])
        return bool(super().delete(key, retry)) or waiting

    def clear(self, retry: bool = False) -> int:
        self._later.discard()
        return int(super().clear(retry))

    __len__ = flushing(diskcache.Cache.__len__)
    __iter__ = flushing(diskcache.Cache.__iter__)
    __reversed__ = flushing(diskcache.Cache.__reversed__)
    __delitem__ = flushing(diskcache.Cache.__delitem__)
    __getitem__ = flushing(diskcache.Cache.__getitem__)
    add = flushing(diskcache.Cache.add)
    pop = flushing(diskcache.Cache.pop)
    read = flushing(diskcache.Cache.read)
    incr = flushing(diskcache.Cache.incr)
    decr = flushing(diskcache.Cache.decr)
    iterkeys = flushing(diskcache.Cache.iterkeys)
    peekitem = flushing(diskcache.Cache.peekitem)
    volume = flushing(diskcache.Cache.volume)
    stats = flushing(diskcache.Cache.stats)
    check = flushing(diskcache.Cache.check)
    expire = flushing(diskcache.Cache.expire)
    evict = flushing(diskcache.Cache.evict)
    cull = flushing(diskcache.Cache.cull)

    def recover(self, error: BaseException) -> None:
        """After ``error`` from an operation: set a corrupt database aside and reopen."""
        if not _is_corruption(error):
            return
        with self._reopen_lock:
            _set_aside(self.directory, self._identity)
        self._reopen()


class _IdleConnections:
    """Connections of threads that have ended, ready for the next thread (a few at most)."""

    LIMIT = 8

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: list[tuple[Identity, sqlite3.Connection]] = []

    def take(self, identity: Identity) -> sqlite3.Connection | None:
        """An idle connection to the database file ``identity``, if there is one."""
        with self._lock:
            while self._connections:
                opened_on, con = self._connections.pop()
                if opened_on == identity:
                    return con
                _close(con)  # a file since deleted or replaced
        return None

    def give_back(self, identity: Identity, con: sqlite3.Connection) -> None:
        with self._lock:
            if len(self._connections) < self.LIMIT:
                self._connections.append((identity, con))
                return
        _close(con)

    def close_all(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for _identity, con in connections:
            _close(con)


def _close(con: sqlite3.Connection) -> None:
    with contextlib.suppress(Exception):
        con.close()


class _HandBackAtThreadExit:
    """Hands a thread's SQLite connection back when the thread ends.

    It lives in the thread's diskcache-local storage, which is freed when the
    thread ends: its connection goes back to the idle ones at once (left to
    the garbage collector, a connection keeps its files open until the next
    collection: hundreds of descriptors under load).
    """

    __slots__ = ("con", "identity", "idle")

    def __init__(self, con: sqlite3.Connection, identity: Identity, idle: _IdleConnections) -> None:
        self.con: sqlite3.Connection | None = con
        self.identity = identity  # the database file it was opened on
        self.idle = idle

    def __del__(self) -> None:
        con, self.con = self.con, None
        if con is None:
            return
        if con.in_transaction:
            _close(con)
        else:
            self.idle.give_back(self.identity, con)


def _set_aside(directory: str, identity: tuple[int, int] | None) -> None:
    """Rename the database to ``cache.db.corrupt`` if it is still the damaged one."""
    if identity is None or _database_identity(directory) != identity:
        return  # gone, or already replaced by this or another process
    database = os.path.join(directory, DBNAME)
    for suffix in ("", "-wal", "-shm"):
        try:
            os.replace(database + suffix, f"{database}.corrupt{suffix}")
        except OSError:
            continue


def _is_corruption(error: BaseException) -> bool:
    # OperationalError ("database is locked", ...) subclasses DatabaseError: only
    # the plain class means the file itself is damaged.
    return type(error) is sqlite3.DatabaseError


def recover_store(store: diskcache.Cache, error: BaseException) -> None:
    """Let a :class:`Store` recover from ``error``; a user's own cache is left alone."""
    if isinstance(store, Store):
        store.recover(error)


def open_store(cache: diskcache.Cache | str | os.PathLike[str] | None) -> diskcache.Cache:
    """A ``diskcache.Cache`` from what the user passed (see ``LokyManager``)."""
    if isinstance(cache, diskcache.Cache):
        return cache
    if isinstance(cache, diskcache.FanoutCache):
        raise TypeError(
            "LokyManager(cache=...) takes a diskcache.Cache or a directory path, "
            "not a FanoutCache: pass diskcache.Cache(directory) or the directory"
        )
    if cache is None:
        return _open_default_store()
    if isinstance(cache, (str, os.PathLike)):
        directory = Path(cache)
    else:
        raise TypeError(
            f"LokyManager(cache=...) takes a diskcache.Cache or a directory path, "
            f"not {type(cache).__name__}"
        )
    try:
        _make_private_directory(directory)
        return Store(str(directory), size_limit=DEFAULT_SIZE_LIMIT)
    except Exception as exc:
        raise StoreError(str(directory), exc) from exc


def _open_default_store() -> Store:
    """The store in the default directory, or a temporary one when that cannot be made."""
    directory = default_store_directory()
    try:
        _make_private_directory(directory)
        return Store(str(directory), size_limit=DEFAULT_SIZE_LIMIT)
    except Exception as exc:  # noqa: BLE001 - OSError or sqlite3's errors: any means "not here"
        problem = exc
    try:
        temporary = tempfile.mkdtemp(prefix="nbbg-store-")  # mode 0700
        store = Store(temporary, size_limit=DEFAULT_SIZE_LIMIT)
    except Exception as exc:
        raise StoreError(str(directory), problem) from exc
    atexit.register(_remove_temporary_store, temporary, os.getpid())
    warnings.warn(TemporaryStoreWarning(str(directory), problem, temporary), stacklevel=4)
    return store


def _remove_temporary_store(directory: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # a forked child's exit must not remove its parent's store
        shutil.rmtree(directory, ignore_errors=True)


MISSING = object()


def read_result(store: diskcache.Cache, key: str, name: str = "the callback") -> Any:
    """The unpickled value stored under ``key``, or ``MISSING``.

    Raises ``StoreError`` when the store cannot be read and
    ``UnreadableResultError`` when the value cannot be rebuilt here.
    """
    try:
        data = store.get(key, MISSING)
    except Exception as exc:
        recover_store(store, exc)
        raise StoreError(store.directory, exc) from exc
    if data is MISSING:
        return MISSING
    try:
        return pickle.loads(data)
    except Exception as exc:  # the value's own __reduce__ may raise anything
        raise UnreadableResultError(name, exc) from exc


def delete_results(store: diskcache.Cache, keys: list[str]) -> None:
    """Delete the results of forgotten jobs in one transaction, then close this thread's
    connection (the chores thread deletes a batch every ~250 jobs and does little else).

    A store that cannot be written keeps them: their expiry removes them later.
    """
    with contextlib.suppress(Exception):
        if isinstance(store, Store):
            store.delete_many(keys)
            store.close_thread_connection()
            return
        with store.transact(retry=True):
            for key in keys:
                store.delete(key, retry=True)
        store.close()  # diskcache's: this thread's connection only


KEYS_PER_QUERY = 500
"""Keys per ``IN (...)`` query (SQLite allows 999 parameters in older builds)."""

ROWS_PER_INSERT = (64, 16, 4, 1)
"""Rows per ``INSERT`` statement (``row_chunks``): 8 parameters each, within the 999 of
older SQLite builds."""


@functools.lru_cache(maxsize=len(ROWS_PER_INSERT))
def _insert_rows(count: int) -> str:
    """One statement inserting ``count`` rows: one SQLite step, one GIL hand-off, for them all.

    diskcache's row of a new ``str`` key whose ``bytes`` value is kept in the database.
    """
    row = "(?, ?, ?, ?, ?, 0, ?, 0, ?, NULL, ?)"
    return (
        "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count,"
        f" tag, size, mode, filename, value) VALUES {', '.join([row] * count)}"
    )


def _new_row(key: str, waiting: Waiting, now: float) -> tuple[Any, ...]:
    expire_time = None if waiting.expire is None else now + waiting.expire
    return (key, True, now, expire_time, now, waiting.tag, MODE_RAW, sqlite3.Binary(waiting.data))


def _stored_keys(sql: Callable[..., sqlite3.Cursor], keys: list[str]) -> set[str]:
    """Which of ``keys`` (``str`` keys) have a row in the store's database."""
    stored: set[str] = set()
    for start in range(0, len(keys), KEYS_PER_QUERY):
        chunk = keys[start : start + KEYS_PER_QUERY]
        query = f"SELECT key FROM Cache WHERE raw = 1 AND key IN ({','.join('?' * len(chunk))})"
        stored.update(key for (key,) in sql(query, chunk).fetchall())
    return stored
