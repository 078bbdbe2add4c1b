"""A kernel's app on a real multi-process Ray cluster (``ray start --head`` on 127.0.0.1).

The kernel switches to the cluster with one line (``%nbbg backend ray
<address>``), runs an inline app, and the test reads what a user sees: the
panel's progress and Cancel, the app's answers over HTTP, ``%nbbg``. Then the
cluster is stopped (by PID) under a running job. An unreachable address leaves
the kernel's manager as it was.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.helpers import free_port, pid_gone, wait_until
from tests.support.kernel_helpers import kernel
from tests.support.notebook_apps import job_pid, release, run_app_cell, slow_app
from tests.support.ray_helpers import RayCluster

WAIT = 90.0


def test_inline_app_on_a_ray_cluster_progress_cancel_queue_and_cluster_stop(
    tmp_path: Path,
) -> None:
    with RayCluster(tmp_path) as cluster, kernel(tmp_path) as session:
        session.run("%load_ext nbbg\nimport nbbg")
        switched = session.run(f"%nbbg backend ray {cluster.address}").stdout
        assert "1 node, 2 CPUs" in switched, switched
        session.run("%nbbg workers 1")  # one job at a time: the second one queues
        port = free_port()
        _cell, panel_id, client = run_app_cell(session, slow_app(port, tmp_path), port)

        def row(n: int, check):  # the panel row of click n, once ``check`` holds
            def found():
                rows = session.widgets.rows(panel_id)
                hit = next((r for r in rows if r.title.endswith(f"go.n_clicks={n}")), None)
                return hit if hit is not None and check(hit) else None

            return session.wait_for(found, WAIT, f"job {n}")

        first = client.submit("out", {"go": 1})
        second = client.submit("out", {"go": 2})
        pid1 = wait_until(lambda: job_pid(tmp_path, 1), WAIT, "job 1 to run on the cluster")
        running = row(1, lambda r: r.state == "running" and r.bar and r.bar[0] > 5)
        assert row(2, lambda r: r.state == "queued #1") is not None
        status = session.run("%nbbg").stdout
        assert f"Ray at {cluster.address.split(':')[0]}" in status or "Ray at" in status, status
        assert re.search(rf"pid {pid1} on \S+ running", status), status
        assert client.poll(first)[1].get("progress"), "the app sees the job's progress"

        session.click(running.cancel_id)
        wait_until(lambda: pid_gone(pid1), 30, "the cancelled task's process to end", 0.005)
        row(1, lambda r: r.state == "cancelled")
        assert client.poll(first)[0] == 204
        pid2 = wait_until(lambda: job_pid(tmp_path, 2), WAIT, "the queued job to start")
        assert pid2 != pid1
        release(tmp_path, 2)
        assert client.wait(second, WAIT).value == {"out": {"children": "done 2"}}
        row(2, lambda r: r.state == "done")

        third = client.submit("out", {"go": 3})
        wait_until(lambda: job_pid(tmp_path, 3), WAIT, "job 3 to run")
        cluster.stop()  # the whole cluster, under a running job
        row(3, lambda r: r.state == "error")
        failure = session.run(
            "print(nbbg.kernel_manager().jobs()[-1].failure.message)", timeout=60
        ).stdout
        assert "Ray lost the task running `slow_job`" in failure, failure
        # The app has no on_error: Dash answers a failed job's poll with 500 (as on loky).
        assert client.poll(third)[0] == 500
        # The kernel and its app keep serving: status answers, a new click ends with an error.
        assert "not answering" in session.run("%nbbg", timeout=60).stdout
        fourth = client.wait(client.submit("out", {"go": 4}), WAIT)
        assert (fourth.outcome, fourth.status) == ("error", 500), fourth  # ended, not hung
        failure = session.run("print(nbbg.kernel_manager().jobs()[-1].failure.message)").stdout
        assert "could not connect to the Ray cluster" in failure, failure


def test_an_unreachable_address_keeps_the_kernels_manager(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    with kernel(tmp_path) as session:
        session.run("%load_ext nbbg")
        before = session.run("import nbbg; print(type(nbbg.kernel_manager()).__name__)").stdout
        said = session.run(f"%nbbg backend ray {address}", timeout=60).stdout
        assert address in said and "could not connect" in said, said
        after = session.run("print(type(nbbg.kernel_manager()).__name__)").stdout
        assert before.strip() == after.strip() == "LokyManager"
        assert session.run("%nbbg").stdout.startswith("nbbg: 2 worker")
