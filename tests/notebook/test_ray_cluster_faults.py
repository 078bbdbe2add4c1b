"""A kernel and a real Ray head (``ray start --head`` on 127.0.0.1): joining and dying.

One cluster for the module (it takes seconds and hundreds of MB). A head
whose stored metadata claims another Python, then another Ray, than this
environment's is refused with nbbg's error naming both sides, by
``RayManager(address=...)`` and by ``%nbbg backend ray`` (the kernel keeps its
manager); with the metadata back, the same line joins. A kernel killed with
SIGKILL while its job runs leaves no process and no running task of its own
on the cluster.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

import nbbg
from tests.support.helpers import REPO, pid_gone, wait_until
from tests.support.kernel_helpers import kernel
from tests.support.ray_helpers import RayCluster, claimed_versions, cluster_tasks

WAIT = 90.0
KERNEL = (platform.python_version(), ray.__version__)
"""This environment's ``(python, ray)``: the test process's, the kernel's and the cluster's."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    with RayCluster(tmp_path_factory.mktemp("ray-head")) as head:
        yield head


def _says_both_sides(message: str, address: str, cluster: tuple[str, str], which: str) -> None:
    assert address in message, message
    assert f"runs Python {cluster[0]} and Ray {cluster[1]}" in message, message
    assert f"this kernel Python {KERNEL[0]} and Ray {KERNEL[1]}" in message, message
    assert f"their {which} versions differ" in message, message
    assert "Install the cluster's Python and Ray versions in this kernel's environment" in message
    assert "or start the cluster from this kernel's environment" in message


@pytest.mark.parametrize(
    ("claim", "which"),
    [({"python": "3.10.4"}, "Python"), ({"ray": "2.39.0"}, "Ray")],
    ids=["python", "ray"],
)
def test_a_version_mismatch_is_refused_naming_both_sides(
    cluster: RayCluster, claim: dict[str, str], which: str
) -> None:
    with claimed_versions(cluster.address, **claim) as claimed:
        theirs = (claimed["python_version"], claimed["ray_version"])
        assert theirs != KERNEL
        with pytest.raises(nbbg.RayVersionMismatchError) as refused:
            nbbg.RayManager(address=cluster.address)
        try:
            assert not ray.is_initialized(), "nothing of Ray was set up in this process"
        finally:
            ray.shutdown()  # never leave this process joined to the head
    error = refused.value
    assert (error.cluster_python, error.cluster_ray) == theirs
    assert (error.kernel_python, error.kernel_ray) == KERNEL
    _says_both_sides(str(error), cluster.address, theirs, which)


def test_rays_own_mismatch_error_is_reworded(cluster: RayCluster) -> None:
    """Where nbbg cannot read the metadata first (``ray://``), ``ray.init``'s error is reworded."""
    code = (
        "import ray\n"
        "from nbbg._engine import ray_versions\n"
        "try:\n"
        f"    ray.init(address={cluster.address!r}, log_to_driver=False)\n"
        "except RuntimeError as exc:\n"
        f"    print(ray_versions.rephrase({cluster.address!r}, exc))\n"
    )
    with claimed_versions(cluster.address, python="3.10.4") as claimed:
        said = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=WAIT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            check=True,
        ).stdout
    _says_both_sides(said, cluster.address, (claimed["python_version"], KERNEL[1]), "Python")


def test_the_magic_keeps_the_kernels_manager_on_a_mismatch(
    cluster: RayCluster, tmp_path: Path
) -> None:
    with kernel(tmp_path) as session:
        session.run("%load_ext nbbg\nimport nbbg")
        with claimed_versions(cluster.address, python="3.10.4"):
            said = session.run(f"%nbbg backend ray {cluster.address}", timeout=WAIT).stdout
            _says_both_sides(said, cluster.address, ("3.10.4", KERNEL[1]), "Python")
            kept = session.run("print(type(nbbg.kernel_manager()).__name__)").stdout
            assert kept.strip() == "LokyManager"
            assert session.run("%nbbg").stdout.startswith("nbbg: 2 worker")
        # The head's own versions again: the same line joins it.
        switched = session.run(f"%nbbg backend ray {cluster.address}", timeout=WAIT).stdout
        assert "1 node, 2 CPUs" in switched, switched


def test_a_killed_kernel_leaves_no_task_of_its_own_on_the_cluster(
    cluster: RayCluster, tmp_path: Path
) -> None:
    pid_file = tmp_path / "job.pid"
    with kernel(tmp_path) as session:
        session.run(
            "import nbbg, ray\n"
            f"manager = nbbg.RayManager(address={cluster.address!r}, max_workers=1)",
            timeout=WAIT,
        )
        job_id = session.run("print(ray.get_runtime_context().get_job_id())").stdout.strip()
        session.run(
            "def long_job(path):\n"
            "    import os, time\n"
            "    with open(path + '.part', 'w') as f:\n"
            "        f.write(str(os.getpid()))\n"
            "    os.replace(path + '.part', path)\n"
            "    time.sleep(60)\n"
            f"manager.submit(long_job, {str(pid_file)!r})"
        )
        worker = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), WAIT, "job"))

        def tasks() -> list[dict[str, Any]]:
            # Like list_tasks, without the driver's own entry (the kernel itself:
            # the GCS marks it failed ~15 s after the job ends).
            found = cluster_tasks(cluster.address, job_id)
            return [task for task in found if task["type"] != "DRIVER_TASK"]

        def running(name: str | None = None) -> list[dict[str, Any]]:
            return [
                task
                for task in tasks()
                if task["state"] == "RUNNING" and name in (None, task["name"])
            ]

        seen = wait_until(lambda: running("run_streaming"), 30, "the job's task as running", 0.2)
        assert [task["worker_pid"] for task in seen] == [worker], seen
        # The warm-up task may have had a worker process of its own (2 CPUs): it must go too.
        workers = {task["worker_pid"] for task in tasks() if task["worker_pid"]}

        os.kill(session.pid, signal.SIGKILL)
        wait_until(lambda: pid_gone(worker), 30, "the job's worker process to end", 0.05)
        wait_until(lambda: all(pid_gone(pid) for pid in workers), 30, "the kernel's workers to end")
        wait_until(lambda: not running(), 30, "no task of the dead kernel running", 0.2)
        ended = {task["name"]: task["state"] for task in cluster_tasks(cluster.address, job_id)}
        assert ended.get("run_streaming") == "FAILED", ended
