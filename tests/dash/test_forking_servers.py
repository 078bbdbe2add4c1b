"""A real gunicorn on 127.0.0.1: pre-fork is refused clearly, one process with threads works.

::

    gunicorn master (--preload: imports app.py, so LokyManager + its workers live here)
       ├── gunicorn worker (fork) ──► every callback answers WrongProcessError
       ├── gunicorn worker (fork) ──►   "     "
       └── loky workers (owned by the master; a forked gunicorn worker never touches them)

    gunicorn -w 1 --threads 8 (no --preload): the one server process builds the manager
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from nbbg.client import DashClient, output_value
from tests.support.helpers import REPO, free_port, pid_gone, wait_until

APP = textwrap.dedent(
    """
    import os
    from dash import Dash, Input, Output, html, set_props
    import nbbg

    manager = nbbg.LokyManager(max_workers=2, cache=os.environ["TEST_STORE"])


    def show_error(err):
        set_props("error", {"children": str(err)})


    app = Dash(__name__, background_callback_manager=manager, on_error=show_error)
    app.layout = html.Div([html.Button("go", id="go"), html.Div(id="out"), html.Div(id="error")])


    @app.callback(Output("out", "children"), Input("go", "n_clicks"), background=True,
                  prevent_initial_call=True, interval=100)
    def work(n):
        return f"done {n}"


    server = app.server
    """
)


@contextmanager
def gunicorn(
    tmp_path: Path, *options: str, app: str = APP
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Serve ``app:server`` with gunicorn ``options``; yield the master process and its URL."""
    (tmp_path / "app.py").write_text(app)
    port = free_port()
    # HOME: recent gunicorns put a control socket there; keep it private to the test.
    env = dict(
        os.environ, PYTHONPATH=str(REPO), TEST_STORE=str(tmp_path / "store"), HOME=str(tmp_path)
    )
    command = [sys.executable, "-m", "gunicorn", *options, "-b", f"127.0.0.1:{port}"]
    log = open(tmp_path / "gunicorn.log", "w")  # closed at the end
    master = subprocess.Popen(
        [*command, "--chdir", str(tmp_path), "app:server"], env=env, stderr=log, text=True
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until(lambda: _answers(url), timeout=60, interval=0.2, what="gunicorn to serve")
        yield master, url
    finally:
        spawned = _descendants(master.pid)
        master.send_signal(signal.SIGTERM)
        master.wait(30)
        log.close()
        wait_until(
            lambda: all(pid_gone(pid) for pid in spawned), timeout=10, what="every process to end"
        )


def _answers(url: str) -> bool:
    try:
        return bool(urllib.request.urlopen(url, timeout=2).status == 200)
    except OSError:
        return False


def _descendants(pid: int) -> set[int]:
    return {p.pid for p in psutil.Process(pid).children(recursive=True)}


def _loky_workers(master_pid: int) -> set[int]:
    found = set()
    for child in psutil.Process(master_pid).children(recursive=True):
        try:
            if "loky.backend.popen_loky_posix" in child.cmdline():
                found.add(child.pid)
        except psutil.Error:
            continue
    return found


def _server_processes(master_pid: int) -> set[int]:
    """gunicorn's worker processes: forks of the master, so the same command line."""
    master = psutil.Process(master_pid)
    found = set()
    for child in master.children():
        try:
            if child.cmdline() == master.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                found.add(child.pid)
        except psutil.Error:
            continue
    return found


def _shown_error(client: DashClient) -> str:
    """Click "go" and poll as the renderer does; return what the app's error div shows."""
    job = client.submit("out", {"go": client.click("go")})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, data = client.poll(job)
        assert status == 200, f"the poll answered {status}: {data!r:.300}"
        if "sideUpdate" in data or "response" in data:
            assert not (data.get("response") or {}).get("out"), "no result from a forked process"
            return str(data["sideUpdate"]["error"]["children"])
        time.sleep(0.1)
    raise AssertionError("the poll never answered the refusal")


@pytest.mark.parametrize("workers", ["2", "1"])
def test_a_manager_built_before_the_fork_refuses_clearly(tmp_path: Path, workers: str) -> None:
    with gunicorn(tmp_path, "-w", workers, "--preload") as (master, url):
        wait_until(lambda: len(_server_processes(master.pid)) == int(workers), what="gunicorn")
        owned = _loky_workers(master.pid)
        assert len(owned) == 2, "the master built the manager and its workers"
        client = DashClient.open(url, timeout=10)
        refusals = [_shown_error(client.reload()) for _ in range(4)]
        for shown in refusals:
            assert f"was created in process {master.pid} and is used in process" in shown
            assert "gunicorn -w 1 --threads 8" in shown and "CeleryManager" in shown
        answered_by = {int(re.search(r"used in process (\d+)", s).group(1)) for s in refusals}
        assert answered_by <= _server_processes(master.pid)

        # A server process that exits (here: gunicorn replacing it) leaves the workers alone.
        leaving = next(iter(_server_processes(master.pid)))
        os.kill(leaving, signal.SIGTERM)
        wait_until(lambda: pid_gone(leaving), what="the server process to exit")
        wait_until(lambda: len(_server_processes(master.pid)) == int(workers), what="a new one")
        assert _loky_workers(master.pid) == owned, "the master's workers are untouched"
        assert all(not pid_gone(pid) for pid in owned)
    log = (tmp_path / "gunicorn.log").read_text()
    assert "can only join a child process" not in log, log[-2000:]


def test_several_processes_without_preload_say_so_instead_of_losing_the_job(
    tmp_path: Path,
) -> None:
    """``gunicorn -w 2``: each process builds its own manager; a poll reaching the process
    that did not start the job answers a clear error, never a silent cancel (204)."""
    slow_app = APP.replace('return f"done {n}"', 'import time; time.sleep(3); return f"done {n}"')
    with gunicorn(tmp_path, "-w", "2", app=slow_app) as (master, url):
        wait_until(lambda: len(_server_processes(master.pid)) == 2, what="two server processes")
        client = DashClient.open(url, timeout=10)
        job = client.submit("out", {"go": client.click("go")})
        answers = []
        for _ in range(60):  # gunicorn's sync workers close each connection: polls spread
            status, data = client.poll(job)
            answers.append(status)
            if status == 200 and ("sideUpdate" in data or "response" in data):
                break
            time.sleep(0.05)
        assert 204 not in answers, answers
        shown = str(data.get("sideUpdate", {}).get("error", {}).get("children", ""))
        assert "started by another server process" in shown, data
        assert "gunicorn -w 1 --threads 8" in shown


def test_one_process_with_threads_runs_callbacks_end_to_end(tmp_path: Path) -> None:
    with gunicorn(tmp_path, "-w", "1", "--threads", "8") as (master, url):
        client = DashClient.open(url, timeout=10)
        results: list[str] = []

        def click(tab: DashClient) -> None:
            result = tab.run("out", {"go": tab.click("go")}, timeout=30)
            results.append(f"{result.outcome} {output_value(result, 'out')}")

        tabs = [client.reload() for _ in range(4)]
        threads = [threading.Thread(target=click, args=(tab,)) for tab in tabs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert results == ["done done 1"] * 4, json.dumps(results)
        # The workers imported app.py to find `work` (it pickles by reference), and
        # so built its manager again: that copy starts no workers of its own.
        assert len(_loky_workers(master.pid)) == 2


FORK_FROM_KERNEL = textwrap.dedent(
    """
    import multiprocessing, os, sys, time
    import nbbg

    manager = nbbg.LokyManager(max_workers=2, cache=sys.argv[1])
    workers = sorted(w.pid for w in manager.workers())

    def use_it_in_the_child():
        for attempt in (lambda: manager.submit(sum, [1]), lambda: manager.cancel("x")):
            try:
                attempt()
            except nbbg.WrongProcessError as error:
                print("refused:", error, flush=True)
        manager.shutdown()  # a no-op here, as at the child's exit

    child = multiprocessing.get_context("fork").Process(target=use_it_in_the_child)
    child.start()
    child.join(30)
    if os.fork() == 0:  # a plain fork that exits through its atexit handlers
        use_it_in_the_child()
        sys.exit(0)
    os.wait()
    print("workers kept:", sorted(w.pid for w in manager.workers()) == workers, flush=True)
    print("still works:", manager.wait(manager.submit(sum, [1, 2]), timeout=30), flush=True)
    """
)


def test_a_fork_of_the_kernel_is_refused_and_leaves_the_workers_alone(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FORK_FROM_KERNEL, str(tmp_path / "store")],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    refusals = [line for line in lines if line.startswith("refused: ")]
    assert len(refusals) == 4, done.stdout
    assert all("a fork of it" in line and "gunicorn -w 1 --threads 8" in line for line in refusals)
    assert lines[-2:] == ["workers kept: True", "still works: 3"]
    assert "Exception ignored" not in done.stderr, done.stderr
