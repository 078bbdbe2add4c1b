"""Small results come back with their job and are stored by the kernel in batches.

What a user must never see from it: a result missing in this kernel, a result
another process never gets, one written back after it was deleted, or one
lost when the kernel exits or the store's database is damaged meanwhile.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import diskcache
import pytest

import nbbg
from nbbg._engine import write_behind
from nbbg._engine.store import MISSING, Store
from tests.conftest import wait_until

REPO = Path(__file__).resolve().parents[2]


def square(x: int) -> int:
    return x * x


def _other_process_view(store_dir: Path) -> diskcache.Cache:
    """The store as another kernel sees it: its own connection, nothing of this process."""
    return diskcache.Cache(str(store_dir))


def _result_key(job_id: str) -> str:
    return f"nbbg-result-{job_id}"


def test_a_small_result_is_collected_at_once_and_soon_stored_for_other_processes(
    manager: nbbg.LokyManager, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(write_behind, "WRITE_DELAY", 2.0)  # so "not yet written" can be seen
    job_id = manager.submit(square, 12)
    assert manager.wait(job_id, timeout=30) == 144
    assert manager.engine.result(job_id) == 144, "collectable again while it waits"
    other = _other_process_view(store_dir)
    assert other.get(_result_key(job_id)) is None, "waiting: not in the database yet"
    wait_until(
        lambda: other.get(_result_key(job_id)) is not None, timeout=10, what="the batch write"
    )
    assert manager.history(limit=1)[0].result() == 144


def test_a_large_result_is_written_by_its_worker_before_the_job_ends(
    manager: nbbg.LokyManager, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(write_behind, "WRITE_DELAY", 60.0)
    job_id = manager.submit(bytes, 100_000)  # diskcache keeps it as a file
    assert manager.wait(job_id, timeout=30) == bytes(100_000)
    assert _other_process_view(store_dir).get(_result_key(job_id)) == pickled(bytes(100_000))


def pickled(value: object) -> bytes:
    """The bytes a worker stores for ``value``."""
    return bytes(cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def test_a_cache_entry_cleared_while_it_waits_is_never_written_back(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(write_behind, "WRITE_DELAY", 1.0)
    manager = nbbg.LokyManager(max_workers=1, cache=str(store_dir), cache_by=[lambda: 1])
    try:
        job_fn = manager.make_job_fn(square, False)
        key = "k" * 64
        job_id = manager.call_job_fn(key, job_fn, [7], {})
        manager.wait(job_id, timeout=30)
        assert manager.result_ready(key) and manager.get_result(key, job_id) == 49
        manager.clear_cache_entry(key)  # Dash's own call
        assert key not in manager.handle
        manager.handle.write_waiting()
        assert _other_process_view(store_dir).get(key) is None
        assert key not in manager.handle
    finally:
        manager.shutdown()


EXITING_KERNEL = """
import sys
import threading
import time
import nbbg
from tests.engine.test_result_writes import square
manager = nbbg.LokyManager(max_workers=1, cache=sys.argv[1])
print(manager.submit(square, 9))
print(manager.wait(manager.submit(square, 11), timeout=60))
# no shutdown: the interpreter exits with the results waiting
"""


def test_results_waiting_when_the_kernel_exits_are_written(store_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", EXITING_KERNEL, str(store_dir)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    first_job, second_result = done.stdout.split()
    assert second_result == "121"
    other = _other_process_view(store_dir)
    assert [key for key in other if key.startswith("nbbg-result-")], "written at exit"
    assert other.get(_result_key(first_job)) == pickled(81)
    later = nbbg.LokyManager(max_workers=1, cache=str(store_dir), prewarm=False)
    try:
        assert sorted(record.result() for record in later.history()) == [81, 121]
    finally:
        later.shutdown()


def test_a_damaged_database_loses_no_waiting_result(
    manager: nbbg.LokyManager, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(write_behind, "WRITE_DELAY", 1.0)
    job_id = manager.submit(square, 5)
    assert manager.wait(job_id, timeout=30) == 25
    with open(store_dir / "cache.db", "r+b") as database:  # garbage over the database
        database.write(os.urandom(8192))
    wait_until(
        lambda: (store_dir / "cache.db.corrupt").exists(),
        timeout=15,
        what="the damaged file set aside",
    )
    wait_until(
        lambda: _other_process_view(store_dir).get(_result_key(job_id)) == pickled(25),
        timeout=15,
        what="the waiting result written to the fresh database",
    )
    assert manager.wait(manager.submit(square, 6), timeout=30) == 36, "the next job runs"


def test_a_store_that_keeps_failing_drops_the_results_with_an_error_in_the_log(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def disk_full(self: object, entries: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Store, "_write_batch", disk_full)  # before the store is made
    manager = nbbg.LokyManager(max_workers=1, cache=str(store_dir))
    try:
        job_id = manager.submit(square, 8)
        assert manager.wait(job_id, timeout=30) == 64, "collected from memory meanwhile"
        wait_until(
            lambda: manager.engine.result(job_id) is MISSING,
            timeout=15,
            what=f"the result dropped after {write_behind.MAX_ATTEMPTS} failed writes",
        )
        assert "dropped after 3 failed writes" in caplog.text
        assert "database or disk is full" in caplog.text
        with pytest.raises(nbbg.ResultEvictedError):
            manager.history(limit=1)[0].result()
    finally:
        manager.shutdown()


def test_an_entry_deleted_while_its_batch_is_written_is_gone_and_the_next_ones_are_written(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete after the batch must not wait for the batch lock it is under (a hang)."""
    store = Store(str(store_dir))
    write_batch = store._write_batch
    during: list[bool] = []

    def write_and_meanwhile(entries: object) -> None:
        if not during:
            during.append(True)
            store.delete("cleared")  # Dash's clear_cache_entry while the batch is written
            store.set_later("next", b"2", None, "nbbg")  # a job ending meanwhile
        write_batch(entries)  # type: ignore[arg-type]

    monkeypatch.setattr(store._later, "_write_batch", write_and_meanwhile)
    store.set_later("cleared", b"1", None, "nbbg")
    writing = threading.Thread(target=store.write_waiting, daemon=True)
    writing.start()
    writing.join(10)
    assert not writing.is_alive(), "the write hung on its own delete"
    other = _other_process_view(store_dir)
    assert other.get("cleared") is None
    wait_until(lambda: other.get("next") == b"2", timeout=10, what="the next batch")


def test_a_waiting_entry_stays_readable_while_another_thread_holds_a_transaction(
    store_dir: Path,
) -> None:
    """Written inside that transaction, it would stop waiting before the commit: unreadable."""
    store = Store(str(store_dir))
    store.set_later("result", b"42", None, "nbbg")
    inside, release = threading.Event(), threading.Event()

    def delete_in_a_transaction() -> None:
        with store.transact(retry=True):
            store.delete("something else")
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=delete_in_a_transaction, daemon=True)
    holder.start()
    try:
        assert inside.wait(10)
        assert store.get("result") == b"42"
    finally:
        release.set()
        holder.join(10)
    wait_until(
        lambda: _other_process_view(store_dir).get("result") == b"42", what="the batch write"
    )


def test_a_batch_stores_what_diskcache_itself_would_store(store_dir: Path) -> None:
    """New keys go in as diskcache's own rows; a stored key (its value a file) is replaced."""
    store = Store(str(store_dir))
    store.set("replaced", bytes(100_000))  # large: diskcache keeps it as a file
    old_files = {p for p in store_dir.rglob("*.val")}
    assert len(old_files) == 1
    store.set_later("fresh", b"1", 60.0, "nbbg")
    store.set_later("no-expiry", b"2", None, None)
    store.set_later("replaced", b"3", None, "nbbg")
    store.write_waiting()

    other = _other_process_view(store_dir)
    value, expire_time, tag = other.get("fresh", expire_time=True, tag=True)
    assert (value, tag) == (b"1", "nbbg") and expire_time is not None
    assert 0 < expire_time - time.time() <= 60
    assert other.get("no-expiry", expire_time=True, tag=True) == (b"2", None, None)
    assert other.get("replaced") == b"3"
    assert len(other) == 3, "diskcache's count kept"
    assert not any(path.exists() for path in old_files), "the replaced value's file removed"
    assert other.check() == [], "diskcache finds nothing wrong"
