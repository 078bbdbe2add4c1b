"""The result store: private, bounded, expiring, and surviving deletion or corruption mid-run."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import diskcache
import pytest
from dash import Dash, Input, Output, State, dcc, html

import nbbg
from nbbg._engine.store import DEFAULT_SIZE_LIMIT
from tests.conftest import wait_until, worker_pids
from tests.support.reliability_helpers import DashClient, engine_id, error_text, serve, shown

NOBODY = 65534
FILE_SIZED = 64 * 1024
"""Bytes: diskcache keeps values this large as files next to its database."""


def _readable_by_nobody(path: Path) -> bool:
    """Whether another local user (``nobody``) can read ``path``."""
    reader = subprocess.run(
        ["head", "-c", "1", str(path)],
        user=NOBODY,
        capture_output=True,
        timeout=60,
    )
    return reader.returncode == 0


def _result_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*.val")]


def test_store_directory_is_private_to_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under /tmp with world-traversable parents, so that only the store's own
    # mode can keep another user out (pytest's tmp_path is already private).
    base = Path(tempfile.mkdtemp(prefix="nbbg-private-"))
    try:
        os.chmod(base, 0o755)
        monkeypatch.setenv("XDG_CACHE_HOME", str(base / "xdg"))
        manager = nbbg.LokyManager(max_workers=1)
        try:
            big = manager.wait(manager.submit(os.urandom, FILE_SIZED), timeout=60)
            assert len(big) == FILE_SIZED
            store = Path(manager.handle.directory)
            assert store == base / "xdg" / "nbbg" / "store"
            assert stat.S_IMODE(store.stat().st_mode) == 0o700
            files = [store / "cache.db", *_result_files(store)]
            assert len(files) == 2
            if os.geteuid() == 0:  # CI runs as root: try as another user for real
                control = store.parent / "readable-control"
                control.write_bytes(b"x")
                os.chmod(control, 0o644)
                assert _readable_by_nobody(control), "the check can see a readable file"
                assert not any(_readable_by_nobody(path) for path in files)
        finally:
            manager.shutdown()

        loose = base / "loose-store"
        loose.mkdir(mode=0o755)
        os.chmod(loose, 0o755)
        nbbg.LokyManager(max_workers=1, cache=str(loose), prewarm=False).shutdown()
        assert stat.S_IMODE(loose.stat().st_mode) == 0o700, "a given directory is made private"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _blob(index: int, size: int) -> bytes:
    return bytes([index % 256]) * size


def test_store_size_is_bounded_and_evicted_results_say_so(tmp_path: Path) -> None:
    default = nbbg.LokyManager(max_workers=1, cache=str(tmp_path / "default"), prewarm=False)
    try:
        assert default.handle.size_limit == DEFAULT_SIZE_LIMIT == 2**30
        # Workers open the store without settings: they read the same limit from it.
        assert diskcache.Cache(str(tmp_path / "default")).size_limit == DEFAULT_SIZE_LIMIT
    finally:
        default.shutdown()

    # diskcache evicts the 10 least recently stored entries on each write over
    # the limit, so the limit must hold more than 10 results for the newest to stay.
    limit, size = 4 * 2**20, 2**18
    manager = nbbg.LokyManager(
        max_workers=1, cache=diskcache.Cache(str(tmp_path / "small"), size_limit=limit)
    )
    try:
        jobs = [manager.submit(_blob, k, size) for k in range(48)]  # 12 MiB into 4 MiB
        for job in jobs:
            _wait_done(manager, job)
        volume = manager.handle.volume()
        assert volume <= limit + 2 * size, f"{volume} bytes in a store limited to {limit}"
        assert manager.wait(jobs[-1], timeout=1) == _blob(47, size)
        with pytest.raises(nbbg.JobFailedError, match="no longer in the store"):
            manager.wait(jobs[0], timeout=1)

        job_fn = manager.make_job_fn(_blob, False)
        evicted_key = "e" * 64
        evicted = manager.call_job_fn(evicted_key, job_fn, [99, size], {})
        _wait_done(manager, evicted)
        for k in range(24):  # push it out
            manager.wait(manager.submit(_blob, k, size), timeout=60)
        answer = manager.get_result(evicted_key, evicted)
        assert "is no longer in the store" in answer["background_callback_error"]["msg"]
        assert manager.job(evicted).state is nbbg.JobState.ERROR
        print(f"\nstore limited to {limit >> 20} MiB holds {volume / 2**20:.1f} MiB after 12 MiB")
    finally:
        manager.shutdown()


def _wait_done(manager: nbbg.LokyManager, job_id: str) -> None:
    wait_until(lambda: manager.job(job_id).state is nbbg.JobState.DONE, timeout=60, what="job done")


def test_expired_cache_entries_are_evicted_from_disk(tmp_path: Path) -> None:
    store = tmp_path / "store"
    manager = nbbg.LokyManager(max_workers=1, cache=str(store), cache_by=[lambda: 1], expire=0.5)
    try:
        job_fn = manager.make_job_fn(_blob, False)
        keys = [f"{k:064x}" for k in range(20)]
        for k, key in enumerate(keys):
            _wait_done(manager, manager.call_job_fn(key, job_fn, [k, FILE_SIZED], {}))
        assert len(_result_files(store)) == 20
        wait_until(
            lambda: not any(key in manager.handle for key in keys),
            timeout=30,
            what="the entries to expire",
        )
        assert len(manager.handle) >= 20, "expired, but still on disk until something writes"
        for k in range(3):  # each write evicts up to 10 expired entries
            manager.wait(manager.submit(_blob, k, 10), timeout=60)
        assert len(manager.handle) == 3
        assert _result_files(store) == []
    finally:
        manager.shutdown()


def _store_app(manager: nbbg.LokyManager) -> Dash:
    app = Dash(__name__, background_callback_manager=manager)
    app.layout = html.Div(
        [html.Button(id="go"), dcc.Input(id="seconds", value=0), html.Div(id="out")]
    )

    @app.callback(
        Output("out", "children"),
        Input("go", "n_clicks"),
        State("seconds", "value"),
        background=True,
        interval=50,
        prevent_initial_call=True,
        on_error=error_text,
    )
    def echo(n, seconds):
        time.sleep(float(seconds))
        return {"n": n, "padding": "x" * FILE_SIZED}  # stored as a file

    return app


def test_deleted_then_corrupted_store_gives_a_clear_error_then_recovers(
    manager: nbbg.LokyManager, store_dir: Path
) -> None:
    with serve(_store_app(manager)) as url, DashClient.open(url) as client:
        finished = client.submit("out", {"go": 1, "seconds": 0})
        _wait_done(manager, engine_id(finished.job))
        running = client.submit("out", {"go": 2, "seconds": 2})
        wait_until(
            lambda: manager.job(engine_id(running.job)).state is nbbg.JobState.RUNNING,
            timeout=60,
            what="a running job",
        )

        shutil.rmtree(store_dir)  # `rm -rf ~/.cache/nbbg` while the app runs

        gone = client.wait(finished, timeout=60)
        assert "is no longer in the store" in shown(gone), shown(gone)
        assert manager.job(engine_id(finished.job)).state is nbbg.JobState.ERROR
        survived = client.wait(running, timeout=60)
        assert shown(survived)["n"] == 2, "a job that ends after the deletion is delivered"
        fresh_tab = client.reload()
        assert shown(fresh_tab.run("out", {"go": 3, "seconds": 0}, timeout=60))["n"] == 3
        assert stat.S_IMODE(store_dir.stat().st_mode) == 0o700, "recreated private"

        with open(store_dir / "cache.db", "r+b") as database:  # garbage over the database
            database.write(os.urandom(8192))
        answers = []
        for n in range(4, 8):  # bounded: recovery must come within a few jobs
            answers.append(shown(fresh_tab.run("out", {"go": n, "seconds": 0}, timeout=60)))
            if isinstance(answers[-1], dict):
                break
    *errors, recovered = answers
    assert isinstance(recovered, dict) and recovered["n"] == 3 + len(answers), answers
    assert len(errors) <= 2
    assert all("result store" in e and "cannot be used" in e for e in errors), errors
    assert (store_dir / "cache.db.corrupt").exists(), "the damaged database is kept aside"
    assert len(worker_pids(manager)) == 2
    print(
        f"\nstore deleted: 1 clear error (result gone), running job delivered; "
        f"store corrupted: {len(errors)} clear error(s) then recovered"
    )
