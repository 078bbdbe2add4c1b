"""``%nbbg`` in a real kernel: status, cancel, workers, restart, panel, and bad arguments."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import wait_until
from tests.support.kernel_helpers import KernelSession, kernel

WAIT = 60.0
WORKERS = os.cpu_count()

SUBMIT = """
import time
from nbbg import kernel_manager
manager = kernel_manager()
sleepers = [manager.submit(time.sleep, 60) for _ in range(3)]
print(*sleepers)
"""


@pytest.fixture
def session(tmp_path: Path) -> Iterator[KernelSession]:
    with kernel(tmp_path) as started:
        started.run("%load_ext nbbg")
        yield started


def _states(session: KernelSession) -> list[str]:
    cell = session.run("print(*[manager.job(j).state.value for j in sleepers])")
    return cell.stdout.split()


def test_status_resize_restart_and_panel(session: KernelSession) -> None:
    first = session.wait_workers(WORKERS)
    status = session.run("%nbbg").stdout
    assert status.startswith(f"nbbg: {WORKERS} worker")
    assert all(f"pid {pid} idle" in status for pid in first)
    assert "jobs: no jobs yet" in status

    assert session.run("%nbbg workers 1").stdout.strip() == "nbbg: 1 worker"
    before = session.wait_workers(1)
    assert session.run("%nbbg").stdout.startswith("nbbg: 1 worker (pid ")

    assert "fresh workers" in session.run("%nbbg restart").stdout
    wait_until(
        lambda: len(pids := session.worker_pids()) == 1 and not pids & before,
        WAIT,
        "a fresh worker",
    )

    shown = session.run("%nbbg panel")
    assert shown.widget_ids(), "a widget is displayed"
    panels = session.read(lambda: {m.comm_id for m in session.widgets.panels()})
    assert shown.widget_ids()[0] in panels
    text = next(o["text/plain"] for o in shown.outputs)
    assert text.startswith("Background jobs in this kernel: "), "the text repr, for any front end"


def test_cancel_one_job_by_id_prefix_then_all(session: KernelSession) -> None:
    session.run("%nbbg workers 2")
    ids = session.run(SUBMIT).stdout.split()
    wait_until(lambda: _states(session) == ["running", "running", "queued"], WAIT, "2 jobs running")
    listed = session.run("%nbbg").stdout
    assert "2 running, 1 queued" in listed and "queued #1" in listed

    assert session.run(f"%nbbg cancel {ids[0][:8]}").stdout.strip() == (
        f"cancelled {ids[0][:8]} (sleep)"
    )
    wait_until(lambda: _states(session)[0] == "cancelled", WAIT, "the first job cancelled")
    assert session.run("%nbbg cancel all").stdout.strip() == "cancelled 2 jobs"
    assert _states(session) == ["cancelled", "cancelled", "cancelled"]
    missing = session.run(f"%nbbg cancel {ids[0][:8]}").stdout
    assert missing.startswith("no queued or running job has an id starting with")


BAD_LINES = [
    "bogus",
    "workers",
    "workers two",
    "workers 0",
    "workers 1 2",
    "cancel",
    "cancel a b",
    "restart now",
    "panel please",
]


def test_bad_arguments_print_usage_never_a_traceback(session: KernelSession) -> None:
    for line in BAD_LINES:
        result = session.execute(f"%nbbg {line}")
        assert result.error is None and result.reply_status == "ok", line
        assert "usage:\n  %nbbg " in result.stdout, line
        assert not result.stderr, line
    session.wait_workers(WORKERS)
