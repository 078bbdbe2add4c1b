"""Job history in the store: records that outlive the manager and the kernel (real workers)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nbbg
from nbbg._engine import history as history_module
from nbbg._engine import records as records_module
from nbbg._engine.history import ROWS_PER_UPSERT, History
from nbbg._engine.jobs import Job, JobFailure, JobState
from tests.support.helpers import REPO


def add(a: int, b: int) -> int:
    print(f"adding {a} and {b}")
    return a + b


def fail(reason: str) -> None:
    raise RuntimeError(reason)


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


class BadRepr:
    def __repr__(self) -> str:
        raise ValueError("no repr for you")


class HugeRepr:
    def __repr__(self) -> str:
        return "x" * 10_000_000


def first_item(items: list[int], extra: object = None, more: object = None) -> int:
    return items[0]


def test_finished_jobs_leave_records_newest_first_with_what_happened(
    manager: nbbg.LokyManager,
) -> None:
    done = manager.submit(add, 2, 3)
    assert manager.wait(done, timeout=30) == 5
    failed = manager.submit(fail, "bad input")
    with pytest.raises(nbbg.JobFailedError):
        manager.wait(failed, timeout=30)
    cancelled = manager.submit(nap, 30)
    while manager.job(cancelled).state is nbbg.JobState.QUEUED:
        time.sleep(0.01)
    manager.cancel(cancelled)

    records = manager.history()
    assert [r.id for r in records] == [cancelled, failed, done]
    assert [r.state for r in records] == [
        nbbg.JobState.CANCELLED,
        nbbg.JobState.ERROR,
        nbbg.JobState.DONE,
    ]
    added = records[2]
    assert (added.name, added.arguments, added.error) == ("add", "(2, 3)", None)
    assert [line.text for line in added.output] == ["adding 2 and 3"]
    assert added.duration is not None and added.submitted_at <= added.started_at
    assert added.result() == 5
    broke = records[1]
    assert broke.error == "RuntimeError: bad input" and "in fail" in broke.traceback
    with pytest.raises(nbbg.JobFailedError, match="bad input"):
        broke.result()
    with pytest.raises(nbbg.JobCancelledError):
        records[0].result()

    assert [r.id for r in manager.history(limit=1)] == [cancelled]
    assert [r.id for r in manager.history(name="add")] == [done]
    assert [r.id for r in manager.history(state="error")] == [failed]


def test_result_after_eviction_says_so_and_rerun_submits_the_same_call(
    manager: nbbg.LokyManager,
) -> None:
    job_id = manager.submit(add, 20, 22)
    assert manager.wait(job_id, timeout=30) == 42
    record = manager.history(limit=1)[0]
    assert record.rerunnable and record.result() == 42

    manager.handle.delete(record.result_key)  # as the store's size limit would
    with pytest.raises(nbbg.ResultEvictedError, match="no longer in the store"):
        record.result()

    again = record.rerun()
    assert again != job_id and manager.wait(again, timeout=30) == 42
    assert manager.history(limit=1)[0].arguments == "(20, 22)"


def test_arguments_are_a_short_safe_repr_never_the_data(manager: nbbg.LokyManager) -> None:
    job_id = manager.submit(first_item, list(range(100_000)), extra=BadRepr(), more=HugeRepr())
    assert manager.wait(job_id, timeout=30) == 0
    arguments = manager.history(limit=1)[0].arguments
    assert arguments.startswith("([0, 1, 2, 3, 4, 5, ...], extra=<BadRepr instance at 0x")
    assert "more=xxxxxx" in arguments and len(arguments) <= records_module.ARGUMENTS_WIDTH


def test_retention_bounds_the_records_and_clear_history_empties_them(
    manager: nbbg.LokyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_module, "MAX_RECORDS", 3)
    ids = [manager.submit(add, k, k) for k in range(5)]
    for job_id in ids:
        manager.wait(job_id, timeout=30)
    assert [r.id for r in manager.history()] == ids[:1:-1], "the 3 newest are kept"

    manager._history.prune(now=time.time() + history_module.MAX_AGE + 60)
    assert manager.history() == [], "records older than MAX_AGE go"

    manager.wait(manager.submit(add, 1, 1), timeout=30)
    assert len(manager.history()) == 1
    manager.clear_history()
    assert manager.history() == []


FIRST_KERNEL = """
import sys
import nbbg
from tests.engine.test_history import add, fail
manager = nbbg.LokyManager(max_workers=1, cache=sys.argv[1])
manager.wait(manager.submit(add, 4, 5), timeout=30)
try:
    manager.wait(manager.submit(fail, "from the first kernel"), timeout=30)
except nbbg.JobFailedError:
    pass
manager.shutdown()
"""


def test_a_second_kernel_on_the_same_store_sees_and_reruns_the_first_ones_jobs(
    store_dir: Path,
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, "-c", FIRST_KERNEL, str(store_dir)],
        env=env,
        cwd=REPO,
        check=True,
        timeout=120,
        capture_output=True,
    )
    second = nbbg.LokyManager(max_workers=1, cache=str(store_dir))
    try:
        failed, added = second.history()
        assert failed.error == "RuntimeError: from the first kernel"
        assert (added.name, added.arguments, added.result()) == ("add", "(4, 5)", 9)
        assert second.wait(added.rerun(), timeout=30) == 9
    finally:
        second.shutdown()


def test_to_pandas_gives_one_row_per_record(manager: nbbg.LokyManager) -> None:
    for k in (1, 2):
        manager.wait(manager.submit(add, k, 10), timeout=30)
    frame = manager.history().to_pandas()
    assert list(frame["arguments"]) == ["(2, 10)", "(1, 10)"]
    assert list(frame["state"]) == ["done", "done"]
    assert str(frame["finished_at"].dtype).startswith("datetime64")
    assert (frame["duration"] >= 0).all()


NO_PANDAS = """
import sys
sys.modules["pandas"] = None  # as if it were not installed
import nbbg
try:
    nbbg.JobHistory().to_pandas()
except ImportError as error:
    print(error)
"""


def test_to_pandas_without_pandas_says_how_to_get_it() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", NO_PANDAS], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "to_pandas() needs pandas: pip install pandas"


def test_an_enormous_label_is_cut_in_the_record(manager: nbbg.LokyManager) -> None:
    # A Dash job's label holds its triggering inputs, which may be large values.
    job_id = manager.engine.submit(add, ((1, 2), {}), label="store.data=" + "9" * 100_000)
    assert manager.wait(job_id, timeout=30) == 3
    label = manager.history(limit=1)[0].label
    assert label.startswith("store.data=999") and len(label) == history_module.LABEL_WIDTH


def length(data: bytes) -> int:
    return len(data)


def test_a_call_too_large_to_keep_is_recorded_without_it(manager: nbbg.LokyManager) -> None:
    job_id = manager.submit(length, b"x" * (history_module.MAX_CALL_BYTES + 1))
    assert manager.wait(job_id, timeout=30) == history_module.MAX_CALL_BYTES + 1
    record = manager.history(limit=1)[0]
    assert record.arguments.startswith("(b'xxx") and "..." in record.arguments
    assert len(record.arguments) < 80, "a short repr, never the data"
    assert not record.rerunnable
    with pytest.raises(nbbg.NotRerunnableError, match="larger than 1048576 bytes"):
        record.rerun()


def test_a_large_batch_with_a_job_recorded_twice_keeps_every_record_and_the_last_state(
    tmp_path: Path,
) -> None:
    """Records go many to a statement: across its chunks, and a job seen twice in one batch."""
    history = History(str(tmp_path), None, lambda *args: "")
    # The largest statement twice, every other size once.
    count = ROWS_PER_UPSERT[0] + sum(ROWS_PER_UPSERT)
    jobs = [Job.ended("sweep", f"x={k}", "", JobState.DONE) for k in range(count)]
    snapshots = [job.snapshot(None) for job in jobs]
    failed = jobs[3]
    failed.state, failed.failure = JobState.ERROR, JobFailure("failed later")
    history.write([*snapshots, failed.snapshot(None)])
    records = history.records(limit=None)
    assert len(records) == len(jobs)
    assert {record.label for record in records} == {f"x={k}" for k in range(len(jobs))}
    again = history.record(failed.id)
    assert again is not None and again.state is JobState.ERROR and again.error == "failed later"
    history.close()
