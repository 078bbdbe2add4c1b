"""The engine through the manager's Python jobs API, with real loky workers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

import nbbg
from tests.conftest import pid_gone, wait_until, worker_pids


def sleep_then_return(seconds: float, value):
    time.sleep(seconds)
    return value, os.getpid()


def test_queue_runs_jobs_in_submit_order_with_two_workers(manager: nbbg.LokyManager) -> None:
    ids = [manager.submit(sleep_then_return, 1.0, k) for k in range(4)]
    wait_until(
        lambda: sum(manager.job(i).state is nbbg.JobState.RUNNING for i in ids) == 2,
        what="two running jobs",
    )
    snapshots = [manager.job(i) for i in ids]
    assert [s.state for s in snapshots] == [nbbg.JobState.RUNNING] * 2 + [nbbg.JobState.QUEUED] * 2
    assert [s.queue_position for s in snapshots[2:]] == [1, 2]
    assert all(manager.job_running(i) for i in ids), "Dash must see queued jobs as running"
    results = [manager.wait(i, timeout=20)[0] for i in ids]
    assert results == [0, 1, 2, 3]
    started = [manager.job(i).started_at for i in ids]
    assert started == sorted(started)
    assert started[2] - started[0] > 0.8, "the third job waited for a free worker"


def test_cancel_one_running_job_leaves_the_other_and_its_worker(manager: nbbg.LokyManager) -> None:
    doomed = manager.submit(sleep_then_return, 30, "doomed")
    survivor = manager.submit(sleep_then_return, 1.5, "survivor")
    wait_until(lambda: manager.job(survivor).state is nbbg.JobState.RUNNING, what="both running")
    doomed_pid = manager.job(doomed).worker_pid
    survivor_pid = manager.job(survivor).worker_pid
    assert doomed_pid and survivor_pid and doomed_pid != survivor_pid
    t0 = time.perf_counter()
    assert manager.cancel(doomed) is True
    wait_until(
        lambda: pid_gone(doomed_pid), timeout=2, interval=0.001, what="the cancelled worker to stop"
    )
    cancel_ms = (time.perf_counter() - t0) * 1000
    assert manager.job(doomed).state is nbbg.JobState.CANCELLED
    with pytest.raises(nbbg.JobCancelledError):
        manager.wait(doomed, timeout=1)
    value, pid = manager.wait(survivor, timeout=10)
    assert (value, pid) == ("survivor", survivor_pid)
    assert len(worker_pids(manager)) == 2, "the cancelled slot got a fresh worker"
    print(f"cancel -> worker gone: {cancel_ms:.1f} ms")


def test_cancel_queued_job_is_dropped_without_touching_workers(manager: nbbg.LokyManager) -> None:
    running = [manager.submit(sleep_then_return, 1.0, k) for k in range(2)]
    queued = manager.submit(sleep_then_return, 0, "never")
    wait_until(
        lambda: all(manager.job(i).state is nbbg.JobState.RUNNING for i in running),
        what="two running jobs",
    )
    pids_before = worker_pids(manager)
    assert manager.cancel(queued) is True
    assert manager.job(queued).state is nbbg.JobState.CANCELLED
    assert worker_pids(manager) == pids_before
    assert [manager.wait(i, timeout=10)[0] for i in running] == [0, 1]


def test_terminate_unknown_ids_is_a_silent_no_op(manager: nbbg.LokyManager) -> None:
    live = manager.submit(sleep_then_return, 0.5, "live")
    for job_id in ["", "nope", "../x", "a" * 10_000, None, 12345]:
        manager.terminate_job(job_id)
        assert manager.cancel(job_id) is False  # type: ignore[arg-type]
    assert manager.wait(live, timeout=10)[0] == "live"


def test_terminate_finished_or_cancelled_job_twice_is_a_no_op(manager: nbbg.LokyManager) -> None:
    done = manager.submit(sleep_then_return, 0, "done")
    manager.wait(done, timeout=10)
    cancelled = manager.submit(sleep_then_return, 30, "x")
    manager.terminate_job(cancelled)
    pids = worker_pids(manager)
    for job_id in (done, done, cancelled, cancelled):
        manager.terminate_job(job_id)
    assert manager.job(done).state is nbbg.JobState.DONE
    assert manager.job(cancelled).state is nbbg.JobState.CANCELLED
    assert worker_pids(manager) == pids


def nap_then_echo(value: str) -> str:
    time.sleep(0.3)
    if value == "fail":
        raise ValueError("asked to fail")
    return value


def test_a_job_ending_inside_one_poll_still_delivers_its_outcome(
    manager: nbbg.LokyManager,
) -> None:
    """One Dash poll asks ``get_result``, then ``job_running``. A job that ends
    between the two must stay "running" for Dash until a poll hands its outcome
    over; answering "not running" there makes the poll a 204, which the browser
    takes for a cancel, and the result is lost."""
    job_fn = manager.make_job_fn(nap_then_echo, False)
    for value in ("echo", "fail"):
        key = f"{value:0>64}"
        job = manager.call_job_fn(key, job_fn, [value], {})
        assert manager.get_result(key, job) is manager.UNDEFINED  # the poll's first half
        wait_until(lambda job=job: not manager.job(job).state.active, what=f"job {value} ends")
        assert manager.job_running(job) is True, "ended, outcome not yet handed over"
        outcome = manager.get_result(key, job)  # the next poll
        if value == "echo":
            assert outcome == "echo"
        else:
            assert "asked to fail" in outcome["background_callback_error"]["msg"]
        assert manager.job_running(job) is False, "handed over: polling stops"
    cancelled = manager.call_job_fn("c" * 64, job_fn, ["never"], {})
    manager.terminate_job(cancelled)
    assert manager.job_running(cancelled) is False, "a cancelled job has nothing to deliver"


def test_worker_killed_mid_job_reports_error_and_next_job_runs(manager: nbbg.LokyManager) -> None:
    victim = manager.submit(sleep_then_return, 30, "victim")
    wait_until(lambda: manager.job(victim).state is nbbg.JobState.RUNNING, what="victim running")
    os.kill(manager.job(victim).worker_pid, signal.SIGKILL)
    with pytest.raises(
        nbbg.JobFailedError, match="worker process running `sleep_then_return` died"
    ):
        manager.wait(victim, timeout=10)
    after = manager.submit(sleep_then_return, 0, "after")
    assert manager.wait(after, timeout=20)[0] == "after"
    wait_until(lambda: len(worker_pids(manager)) == 2, what="the slot to be refilled")


def test_job_ids_are_random_hex_not_pids(manager: nbbg.LokyManager) -> None:
    job_id, other = manager.submit(sleep_then_return, 0, 1), manager.submit(sum, [1])
    manager.wait(job_id, timeout=10)
    # 32 random hex digits, then 6 naming the process that made it (the same for both)
    assert len(job_id) == 38 and int(job_id, 16) >= 0 and job_id[32:] == other[32:]
    assert job_id[:32] != other[:32]
    assert str(manager.job(job_id).worker_pid) not in job_id


def test_closure_and_lambda_run_in_workers(manager: nbbg.LokyManager) -> None:
    factor = 7

    def times_factor(x):
        return x * factor

    assert manager.wait(manager.submit(times_factor, 6), timeout=10) == 42
    assert manager.wait(manager.submit(lambda: factor + 1), timeout=10) == 8


def test_changed_global_is_picked_up(manager: nbbg.LokyManager) -> None:
    namespace = {"__name__": "__main__"}
    exec("SCALE = 2\ndef scaled(x):\n    return x * SCALE\n", namespace)
    fn = namespace["scaled"]
    assert manager.wait(manager.submit(fn, 5), timeout=10) == 10
    namespace["SCALE"] = 3
    assert manager.wait(manager.submit(fn, 5), timeout=10) == 15


def test_big_global_is_shipped_once_per_worker() -> None:
    """A 100 MB global costs once per worker, not on every call."""
    manager = nbbg.LokyManager(max_workers=1)
    try:
        namespace = {"__name__": "__main__"}
        exec(
            "import os\nBIG = os.urandom(100 * 2**20)\ndef size():\n    return len(BIG)\n",
            namespace,
        )
        fn = namespace["size"]
        t0 = time.perf_counter()
        assert manager.wait(manager.submit(fn), timeout=60) == 100 * 2**20
        first = time.perf_counter() - t0
        later = []
        for _ in range(5):
            t0 = time.perf_counter()
            manager.wait(manager.submit(fn), timeout=60)
            later.append(time.perf_counter() - t0)
        print(
            f"100 MB global: first call {first * 1000:.0f} ms, "
            f"later median {sorted(later)[2] * 1000:.1f} ms"
        )
        assert sorted(later)[2] < first / 5, (
            "later calls must not pay for pickling the global again"
        )
    finally:
        manager.shutdown()


def test_unpicklable_global_error_names_it(manager: nbbg.LokyManager) -> None:
    import threading

    namespace = {"__name__": "__main__", "threading": threading}
    exec("LOCK = threading.Lock()\ndef uses_lock():\n    return LOCK.locked()\n", namespace)
    with pytest.raises(
        nbbg.UnpicklableCallbackError, match="uses global `LOCK`, which cannot be pickled"
    ):
        manager.submit(namespace["uses_lock"])
    assert (
        manager.wait(manager.submit(sleep_then_return, 0, "still serving"), timeout=10)[0]
        == "still serving"
    )


def test_exception_in_job_is_reported_with_traceback(manager: nbbg.LokyManager) -> None:
    def broken():
        raise ValueError("bad input 42")

    with pytest.raises(nbbg.JobFailedError, match="ValueError: bad input 42") as info:
        manager.wait(manager.submit(broken), timeout=10)
    assert "in broken" in info.value.traceback_text


def test_events_report_state_changes_and_progress(manager: nbbg.LokyManager) -> None:
    events: list[nbbg.JobEvent] = []
    unsubscribe = manager.subscribe(events.append)

    def with_progress():
        from nbbg._engine.channel import JobReporter  # noqa: F401 - the worker has it

        return 1

    job_id = manager.submit(with_progress)
    manager.wait(job_id, timeout=10)
    unsubscribe()
    states = [e.job.state for e in events if e.job.id == job_id and e.kind == "state"]
    assert states[0] is nbbg.JobState.QUEUED
    assert nbbg.JobState.RUNNING in states
    wait_until(
        lambda: [e.job.state for e in events if e.job.id == job_id][-1] is nbbg.JobState.DONE,
        what="a done event",
    )


def test_shutdown_stops_workers_and_is_idempotent(store_dir) -> None:
    manager = nbbg.LokyManager(max_workers=2, cache=str(store_dir))
    pids = wait_until(
        lambda: worker_pids(manager) if len(worker_pids(manager)) == 2 else None, what="two workers"
    )
    running = manager.submit(sleep_then_return, 30, "x")
    manager.shutdown()
    manager.shutdown()
    wait_until(lambda: all(pid_gone(p) for p in pids), timeout=5, what="workers to exit")
    assert manager.job(running).state is nbbg.JobState.CANCELLED
    with pytest.raises(nbbg.ShutdownError, match="create a new LokyManager"):
        manager.submit(sleep_then_return, 0, 1)


def test_workers_ignore_sigint(manager: nbbg.LokyManager) -> None:
    job_id = manager.submit(sleep_then_return, 1.0, "kept")
    wait_until(lambda: manager.job(job_id).state is nbbg.JobState.RUNNING, what="running")
    for pid in worker_pids(manager):
        os.kill(pid, signal.SIGINT)
    assert manager.wait(job_id, timeout=10)[0] == "kept"


def test_default_store_is_private(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    manager = nbbg.LokyManager(max_workers=1, prewarm=False)
    try:
        directory = tmp_path / "xdg" / "nbbg" / "store"
        assert manager.handle.directory == str(directory)
        assert directory.stat().st_mode & 0o777 == 0o700
    finally:
        manager.shutdown()


def test_bad_constructor_arguments_get_clear_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="max_workers must be a whole number"):
        nbbg.LokyManager(max_workers=0, cache=str(tmp_path))
    with pytest.raises(TypeError, match=r"diskcache\.Cache or a directory path"):
        nbbg.LokyManager(cache=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="zero-argument functions"):
        nbbg.LokyManager(cache=str(tmp_path), cache_by=[42], prewarm=False)  # type: ignore[list-item]


def test_owner_death_leaves_no_workers(tmp_path) -> None:
    """A manager's process is SIGKILLed (a killed kernel): its workers exit within 2 s."""
    import subprocess
    import sys

    script = (
        "import sys, time, nbbg\n"
        f"m = nbbg.LokyManager(max_workers=2, cache={str(tmp_path / 'store')!r})\n"
        "m.submit(time.sleep, 60)\n"
        "while len([w for w in m.workers() if w.pid]) < 2: time.sleep(0.05)\n"
        "print(' '.join(str(w.pid) for w in m.workers()), flush=True)\n"
        "time.sleep(120)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2
        assert all(psutil.pid_exists(p) for p in pids)
        owner.kill()
        owner.wait(5)
        t0 = time.monotonic()
        wait_until(
            lambda: all(pid_gone(p) for p in pids), timeout=2.0, what="orphaned workers to exit"
        )
        print(f"workers gone {time.monotonic() - t0:.2f} s after the owner died")
    finally:
        if owner.poll() is None:
            owner.kill()


def test_progress_the_kernel_cannot_read_does_not_hang_the_job(
    manager: nbbg.LokyManager, tmp_path
) -> None:
    """A progress value whose class only the worker can import is dropped, not fatal."""

    def report_unreadable(set_progress, module_dir):
        import sys

        (Path(module_dir) / "only_in_worker.py").write_text("class Thing:\n    pass\n")
        sys.path.insert(0, module_dir)
        import only_in_worker

        set_progress(only_in_worker.Thing())
        time.sleep(0.1)
        return "finished"

    job_fn = manager.make_job_fn(report_unreadable, True)
    job_id = manager.call_job_fn("k" * 64, job_fn, [str(tmp_path)], {})
    assert manager.wait(job_id, timeout=20) == "finished"
    assert manager.get_progress("k" * 64) is None


def test_a_kernel_exiting_with_a_job_running_exits_at_once_and_leaves_no_workers(
    tmp_path,
) -> None:
    """The kernel's interpreter ends (restart, end of a script) without ``shutdown()``.

    loky's exit hook waits for running tasks; a worker's job loop never ends by
    itself, so nbbg has loky kill the workers: the process must not wait out its
    60 s job.
    """
    import subprocess
    import sys

    script = (
        "import time, nbbg\n"
        f"m = nbbg.LokyManager(max_workers=2, cache={str(tmp_path / 'store')!r})\n"
        "job = m.submit(time.sleep, 60)\n"
        "while m.job(job).state is not nbbg.JobState.RUNNING: time.sleep(0.05)\n"
        "print(' '.join(str(w.pid) for w in m.workers()), flush=True)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) == 2
        assert owner.wait(20) == 0, "the interpreter waited for its running job"
        wait_until(lambda: all(pid_gone(p) for p in pids), timeout=5.0, what="workers to exit")
    finally:
        if owner.poll() is None:
            owner.kill()


CHUNK = 40 * 1024
"""Under shipping's EXTERNAL_MIN_BYTES: each global goes inline, in the job's spec."""


def test_a_job_whose_spec_is_larger_than_a_socket_write_runs_right(
    manager: nbbg.LokyManager,
) -> None:
    """A spec over 32 KiB (``loky_backend.SEND_INLINE_LIMIT``) goes to its worker from a thread."""
    namespace = {"__name__": "__main__", "CHUNK": CHUNK}
    exec(
        "import os\n"
        "FIRST, SECOND, THIRD = os.urandom(CHUNK), os.urandom(CHUNK), os.urandom(CHUNK)\n"
        "def digest(extra):\n"
        "    import hashlib\n"
        "    return extra, hashlib.sha256(FIRST + SECOND + THIRD).hexdigest()\n",
        namespace,
    )
    import hashlib

    expected = hashlib.sha256(namespace["FIRST"] + namespace["SECOND"] + namespace["THIRD"])
    jobs = [manager.submit(namespace["digest"], n) for n in range(4)]
    assert [manager.wait(j, timeout=30) for j in jobs] == [
        (n, expected.hexdigest()) for n in range(4)
    ]
