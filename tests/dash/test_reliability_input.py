"""Bad input and forged handles: a clear error in the app and the jobs API, nothing else hurt.

Bad input runs through a real Dash server (the error must reach the page,
here through ``on_error``) and the jobs API (what the panel shows); after each
one the same manager must serve the next job. Forged and stale handles go to
every manager method and over HTTP: no other job may notice, no file outside
the store may change, and the server must never answer 500.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import pytest
from dash import Dash, Input, Output, html, set_props

import nbbg
from tests.conftest import wait_until, worker_pids
from tests.support.reliability_helpers import DashClient, engine_id, error_text, serve, shown

MAX_JOB_SECONDS = 60.0


def _exploding_value():
    raise RuntimeError("cannot rebuild this value")


class _Unloadable:
    """Pickles fine in the worker, cannot be rebuilt in the kernel."""

    def __reduce__(self):
        return (_exploding_value, ())


class _Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("str() of this exception fails")


def _main_namespace_callback(source: str, name: str, **names):
    """A function defined as in a notebook cell: pickled by value, globals and all."""
    namespace = {"__name__": "__main__", **names}
    exec(source, namespace)
    return namespace[name]


def _bad_callbacks():
    """case -> (callback, has progress, what the user must be told)."""
    lock = threading.Lock()
    uses_lock = _main_namespace_callback(
        "def uses_lock(n):\n    return LOCK.locked()\n", "uses_lock", LOCK=lock
    )

    def returns_lock(n):
        import threading

        return threading.Lock()

    def returns_object(n):
        return object()

    def returns_huge_int(n):
        return {"count": 2**70}  # plain types, but beyond what the browser's JSON encoder takes

    def returns_nested_object(n):
        return {"rows": [1, 2, {"cell": object()}]}

    def returns_unloadable(n):
        return _Unloadable()

    def lock_progress(set_progress, n):
        import threading

        set_progress(threading.Lock())
        time.sleep(MAX_JOB_SECONDS)

    def object_progress(set_progress, n):
        set_progress(object())
        time.sleep(MAX_JOB_SECONDS)

    def object_props(n):
        set_props("side", {"children": object()})
        time.sleep(MAX_JOB_SECONDS)

    def unprintable_error(n):
        raise _Unprintable()

    return {
        "unpicklable global": (uses_lock, False, "uses global `LOCK`, which cannot be pickled"),
        "unpicklable result": (
            returns_lock,
            False,
            "the value returned by `returns_lock` cannot be pickled",
        ),
        "non-JSON result": (
            returns_object,
            False,
            "`returns_object` returned a value that cannot be sent to the browser",
        ),
        "integer too large for JSON": (
            returns_huge_int,
            False,
            "`returns_huge_int` returned a value that cannot be sent to the browser",
        ),
        "non-JSON value inside plain data": (
            returns_nested_object,
            False,
            "`returns_nested_object` returned a value that cannot be sent to the browser",
        ),
        "result the kernel cannot unpickle": (
            returns_unloadable,
            False,
            "the value returned by `returns_unloadable` cannot be loaded back in the kernel",
        ),
        "unpicklable progress": (
            lock_progress,
            True,
            "`lock_progress` reported progress that cannot be sent to the app",
        ),
        "non-JSON progress": (
            object_progress,
            True,
            "`object_progress` reported progress that cannot be sent to the app "
            "(not JSON-serialisable",
        ),
        "non-JSON set_props": (
            object_props,
            False,
            "`object_props` reported progress that cannot be sent to the app",
        ),
        "exception whose str() raises": (
            unprintable_error,
            False,
            "_Unprintable: <the exception's message could not be produced: str() raised>",
        ),
    }


def _app_for(manager: nbbg.LokyManager, callback, has_progress: bool) -> Dash:
    app = Dash(__name__, background_callback_manager=manager)
    app.layout = html.Div(
        [
            html.Button(id="go"),
            html.Progress(id="bar"),
            html.Div(id="side"),
            html.Div(id="out"),
            html.Button(id="ok"),
            html.Div(id="ok-out"),
        ]
    )
    app.callback(
        Output("out", "children"),
        Input("go", "n_clicks"),
        background=True,
        progress=Output("bar", "value") if has_progress else None,
        interval=50,
        prevent_initial_call=True,
        on_error=error_text,
    )(callback)

    @app.callback(
        Output("ok-out", "children"),
        Input("ok", "n_clicks"),
        background=True,
        interval=50,
        prevent_initial_call=True,
    )
    def still_serving(n):
        return f"served {n}"

    return app


BAD_CASES = list(_bad_callbacks())


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_shows_a_clear_error_and_the_next_job_runs(
    manager: nbbg.LokyManager, case: str
) -> None:
    callback, has_progress, told = _bad_callbacks()[case]
    with serve(_app_for(manager, callback, has_progress)) as url, DashClient.open(url) as client:
        bad = client.submit("out", {"go": 1})
        answer = client.wait(bad, timeout=60)
        after = client.run("ok-out", {"ok": 7}, timeout=60)
    page_text = shown(answer)
    assert answer.outcome == "done" and told in page_text, (answer.outcome, page_text)
    snapshot = manager.job(engine_id(bad.job))
    assert snapshot.state is nbbg.JobState.ERROR
    assert told in snapshot.failure.message
    assert shown(after, "ok-out") == "served 7"
    print(f"\n{case}: {page_text[:160]}")


def test_unpicklable_argument_is_refused_with_a_clear_error(manager: nbbg.LokyManager) -> None:
    """Over HTTP arguments are JSON; from Python (Dash's call, the jobs API) anything goes."""
    lock = threading.Lock()

    def echo(value):
        return value

    with pytest.raises(nbbg.UnpicklableArgumentsError, match="the arguments of `echo`"):
        manager.submit(echo, lock)
    job_fn = manager.make_job_fn(echo, False)
    job_id = manager.call_job_fn("k" * 64, job_fn, [lock], {})
    answer = manager.get_result("k" * 64, job_id)
    assert "the arguments of `echo` cannot be pickled" in answer["background_callback_error"]["msg"]
    assert manager.job(job_id).state is nbbg.JobState.ERROR
    assert manager.wait(manager.submit(echo, "next"), timeout=60) == "next"


def test_callback_that_never_returns_is_cancelled_and_its_slot_serves_again(
    manager: nbbg.LokyManager,
) -> None:
    app = Dash(__name__, background_callback_manager=manager)
    app.layout = html.Div(
        [html.Button(id="go"), html.Button(id="stop"), html.Div(id="out"), html.Div(id="n")]
    )

    @app.callback(
        Output("out", "children"),
        Input("go", "n_clicks"),
        background=True,
        cancel=[Input("stop", "n_clicks")],
        interval=50,
        prevent_initial_call=True,
    )
    def forever(n):
        deadline = time.monotonic() + MAX_JOB_SECONDS  # "forever", bounded for the test
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return "returned after all"

    with serve(app) as url, DashClient.open(url) as client:
        stuck = [client.submit("out", {"go": k}) for k in range(3)]  # 2 running, 1 queued
        ids = [engine_id(job.job) for job in stuck]
        wait_until(
            lambda: sum(manager.job(i).state is nbbg.JobState.RUNNING for i in ids) == 2,
            timeout=60,
            what="two stuck jobs running",
        )
        stuck_pids = {manager.job(i).worker_pid for i in ids[:2]}
        client.cancel(stuck[0])  # the cancel button
        assert manager.cancel(ids[1]) is True  # the panel / jobs API
        third = client.wait(stuck[2], timeout=5)  # the queued one now runs, still stuck
        assert third.outcome == "timeout"
        client.cancel(stuck[2])
        answers = [client.wait(job, timeout=30) for job in stuck]
    assert [a.outcome for a in answers] == ["ended"] * 3, answers
    assert [manager.job(i).state for i in ids] == [nbbg.JobState.CANCELLED] * 3
    assert manager.wait(manager.submit(len, "abc"), timeout=60) == 3
    pool = wait_until(
        lambda: worker_pids(manager) if len(worker_pids(manager)) == 2 else None,
        timeout=60,
        what="two fresh workers",
    )
    assert not pool & stuck_pids


# ---------------------------------------------------------------- forged handles

FORGED = [
    "",
    "nope",
    "0" * 32,
    "../x",
    "../../../../../../etc/passwd",
    "/tmp/x",
    "..%2f..%2fx",
    "a" * 100_000,
    "\x00",
    "💥",
    "~",
    "a~b",
]
MALFORMED = [None, 12345, b"bytes", 1.5]


def _files_outside(root: Path, *stores: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for path in root.rglob("*"):
        if any(store in path.parents or path == store for store in stores):
            continue
        stat = path.lstat()
        found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


def test_forged_ids_and_keys_reach_every_manager_method_without_effect(
    tmp_path: Path, store_dir: Path, manager: nbbg.LokyManager
) -> None:
    canaries = [tmp_path / "x", tmp_path / "etc" / "passwd"]
    for canary in canaries:
        canary.parent.mkdir(exist_ok=True)
        canary.write_text("canary")
    other = nbbg.LokyManager(max_workers=1, cache=str(tmp_path / "other-store"))
    try:
        done = manager.submit(str.upper, "done")
        manager.wait(done, timeout=60)
        live = manager.submit(_sleep_then, 1.5, "live")
        foreign = other.submit(_sleep_then, 1.5, "foreign")
        job_fn = manager.make_job_fn(str.lower, False)
        dash_key = "d" * 64
        dash_job = manager.call_job_fn(dash_key, job_fn, ["DASH"], {})
        stores = (store_dir, tmp_path / "other-store")
        files_before = _files_outside(tmp_path, *stores)

        forged_ids = [*FORGED, *MALFORMED, foreign, dash_key]
        forged_keys = [*FORGED, foreign, done, live, dash_job]
        escaped = []
        for job_id in forged_ids:
            for call in (
                lambda job_id=job_id: manager.job_running(job_id),
                lambda job_id=job_id: manager.terminate_job(job_id),
                lambda job_id=job_id: manager.job(job_id),
                lambda job_id=job_id: manager.cancel(job_id),
                lambda job_id=job_id: manager.get_result("nope", job_id),
            ):
                try:
                    answer = call()
                except Exception as exc:  # noqa: BLE001 - collected and reported below
                    escaped.append((repr(job_id)[:40], repr(exc)[:200]))
                    continue
                assert answer in (None, False, manager.UNDEFINED), (job_id, answer)
            with pytest.raises(nbbg.UnknownJobError):
                manager.wait(job_id, timeout=0.1)
        for key in forged_keys:
            for call in (
                lambda key=key: manager.get_progress(key),
                lambda key=key: manager.result_ready(key),
                lambda key=key: manager.get_result(key, None),
                lambda key=key: manager.get_result(key, dash_job),
                lambda key=key: manager.get_updated_props(key),
                lambda key=key: manager.clear_cache_entry(key),
            ):
                try:
                    call()
                except Exception as exc:  # noqa: BLE001 - collected and reported below
                    escaped.append((repr(key)[:40], repr(exc)[:200]))
        assert escaped == []

        assert manager.wait(live, timeout=60) == "live"
        assert other.wait(foreign, timeout=60) == "foreign"
        assert manager.wait(done, timeout=1) == "DONE"
        assert manager.wait(dash_job, timeout=60) == "dash"
        assert manager.get_result(dash_key, dash_job) == "dash"
        assert all(canary.read_text() == "canary" for canary in canaries)
        assert _files_outside(tmp_path, *stores) == files_before
        assert not any(name in os.listdir(store_dir) for name in ("x", "etc", "passwd"))
        print(
            f"\n{len(forged_ids)} forged ids x 6 methods, {len(forged_keys)} forged keys x 6 "
            "methods: no exception, no other job touched, no file outside the store changed"
        )
    finally:
        other.shutdown()


def _sleep_then(seconds: float, value):
    time.sleep(seconds)
    return value


def test_forged_and_other_pages_handles_over_http_change_nothing(
    tmp_path: Path, store_dir: Path, manager: nbbg.LokyManager
) -> None:
    app = Dash(__name__, background_callback_manager=manager)
    app.layout = html.Div([html.Button(id="go"), html.Button(id="stop"), html.Div(id="out")])

    @app.callback(
        Output("out", "children"),
        Input("go", "n_clicks"),
        background=True,
        cancel=[Input("stop", "n_clicks")],
        interval=50,
        prevent_initial_call=True,
    )
    def slow_echo(n):
        time.sleep(1.5)
        return f"echo {n}"

    files_before = _files_outside(tmp_path, store_dir)
    statuses = []
    with serve(app) as url, DashClient.open(url) as page_a:
        page_b = page_a.reload()  # another tab: its own endId
        a_job = page_a.submit("out", {"go": 1})
        a_id = engine_id(a_job.job)
        wait_until(
            lambda: manager.job(a_id).state is nbbg.JobState.RUNNING,
            timeout=60,
            what="page A's job to run",
        )
        b_probe = page_b.submit("out", {"go": 2})
        handles = [
            a_job.job,  # page A's signed handle, replayed from page B
            a_id,  # the raw, unsigned job id
            f"{a_id}~{'0' * 64}",  # a wrong signature
            *FORGED[:7],
            "b" * 8000,  # a very long one (the request line stays under 64 KiB)
        ]
        keys = [a_job.cache_key, a_job.cache_key.rpartition("~")[0], *FORGED[:7], "c" * 8000]
        for handle in handles:
            forged = dataclasses.replace(b_probe, job=handle)
            statuses.append(page_b.poll(forged)[0])
            if handle:
                statuses.append(page_b.cancel(forged))
            page_b.submit("out", {"go": 3}, old_jobs=(forged,))  # a re-fire naming it
        for key in keys:
            statuses.append(page_b.poll(dataclasses.replace(b_probe, cache_key=key))[0])
            statuses.append(
                page_b.poll(dataclasses.replace(b_probe, cache_key=key, job=a_job.job))[0]
            )
        a_answer = page_a.wait(a_job, timeout=60)
    assert 500 not in statuses and set(statuses) <= {200, 204}, statuses
    assert a_answer.outcome == "done" and shown(a_answer) == "echo 1"
    assert manager.job(a_id).state is nbbg.JobState.DONE
    assert not any(j.state is nbbg.JobState.CANCELLED for j in manager.jobs())
    assert _files_outside(tmp_path, store_dir) == files_before
    print(f"\n{len(statuses)} forged requests over HTTP: statuses {sorted(set(statuses))}")
