"""``%nbbg`` in a real kernel: status, cancel, workers, restart, panel, and bad arguments."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel_helpers import KernelSession, kernel, wait_until

WAIT = 60.0

SUBMIT = """
import time
from nbbg._extension import kernel_manager
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
    first = wait_until(lambda: session.worker_pids(), WAIT, "prewarmed workers")
    status = session.run("%nbbg").stdout
    assert status.startswith("nbbg: 2 workers (pid ")
    assert "jobs: no jobs yet" in status

    assert session.run("%nbbg workers 1").stdout.strip() == "nbbg: 1 worker"
    wait_until(lambda: len(session.worker_pids()) == 1, WAIT, "one worker left")
    assert session.run("%nbbg").stdout.startswith("nbbg: 1 worker (pid ")

    before = session.worker_pids()
    assert "fresh workers" in session.run("%nbbg restart").stdout
    wait_until(
        lambda: len(session.worker_pids()) == 1 and not session.worker_pids() & before,
        WAIT,
        "a fresh worker",
    )
    assert before <= first

    shown = session.run("%nbbg panel")
    assert shown.widget_ids(), "a widget is displayed"
    panels = session.read(lambda: {m.comm_id for m in session.widgets.panels()})
    assert shown.widget_ids()[0] in panels
    text = next(o["text/plain"] for o in shown.outputs)
    assert text.startswith("Background jobs in this kernel: "), "the text repr, for any front end"


def test_cancel_one_job_by_id_prefix_then_all(session: KernelSession) -> None:
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
    wait_until(lambda: len(session.worker_pids()) == 2, WAIT, "the two workers, untouched")
