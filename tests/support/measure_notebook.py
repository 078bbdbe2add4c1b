"""Measure the notebook layer through a real kernel: ``python -m tests.support.measure_notebook``.

1. Widget updates per second while a job calls ``set_progress`` ~200 times a
   second (the comm messages a front end receives; see ``update_rate``).
2. Delay from a widget Cancel click (the front end's comm message, sent on
   the shell channel) to the job's worker process being gone (psutil), over
   several jobs.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.support.helpers import free_port, pid_gone, wait_until
from tests.support.kernel_helpers import kernel
from tests.support.notebook_apps import fast_app, job_pid, run_app_cell, slow_app, update_rate

CANCEL_TRIALS = 10
WAIT = 60.0


def measure_updates(workdir: Path) -> str:
    with kernel(workdir) as session:
        session.run("%load_ext nbbg")
        port = free_port()
        _result, panel_id, client = run_app_cell(session, fast_app(port), port)
        result = client.run("out", {"go": 1}, WAIT)
        session.wait_for(
            lambda: [r.state for r in session.widgets.rows(panel_id)] == ["done"], WAIT, "done"
        )
        calls, seconds = (float(x) for x in result.value["out"]["children"].split())
        updates = session.read(lambda: list(session.widgets.updates))
        return (
            f"fast progress: {calls / seconds:.0f} set_progress/s -> "
            f"{update_rate(updates):.1f} widget updates/s ({len(updates)} updates in all)"
        )


def measure_cancel(workdir: Path) -> str:
    delays = []
    with kernel(workdir) as session:
        session.run("%load_ext nbbg")
        port = free_port()
        _result, panel_id, client = run_app_cell(session, slow_app(port, workdir), port)
        for n in range(1, CANCEL_TRIALS + 1):
            client.submit("out", {"go": n})
            pid = wait_until(lambda n=n: job_pid(workdir, n), WAIT, f"job {n} to start")
            row = session.wait_for(
                lambda n=n: next(
                    (
                        r
                        for r in session.widgets.rows(panel_id)
                        if r.title.endswith(f"={n}") and r.bar and r.cancel_id
                    ),
                    None,
                ),
                WAIT,
                f"job {n} running",
            )
            sent = session.click(row.cancel_id)
            wait_until(lambda pid=pid: pid_gone(pid), WAIT, "the process to stop", 0.001)
            delays.append(time.monotonic() - sent)
    delays_ms = [d * 1000 for d in delays]
    return (
        f"widget Cancel -> worker process gone, {len(delays)} jobs: median "
        f"{statistics.median(delays_ms):.0f} ms, min {min(delays_ms):.0f} ms, "
        f"max {max(delays_ms):.0f} ms"
    )


def main() -> int:
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        print(measure_updates(Path(first)))
        print(measure_cancel(Path(second)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
