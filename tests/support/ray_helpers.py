"""Real Ray for the tests, on 127.0.0.1 only, with usage statistics off.

``local_ray`` starts one in-process Ray per test module (~4-25 s and ~620 MB
on this machine, so never per test); ``RayCluster`` runs ``ray start --head
--block`` in a subprocess, stopped by its PID (``ray stop`` would stop every
Ray on the machine, other agents' included). ``claimed_versions`` makes a head
claim other Python/Ray versions; ``cluster_tasks`` reads a job's tasks from the
head's GCS, as Ray's state API shows them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.helpers import free_port, wait_until

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
"""Ray reports usage to an outside server by default: never from a test. Token
authentication (~/.ray/auth_token) on for the clusters and the kernels that join them."""

LOCAL_RAY = {
    "address": "local",
    "_node_ip_address": "127.0.0.1",
    "include_dashboard": False,
    "num_cpus": 2,
}


def start_local_ray() -> None:
    import ray

    os.environ.update(RAY_ENV)
    if not ray.is_initialized():
        ray.init(**LOCAL_RAY)


def stop_local_ray() -> None:
    import ray

    ray.shutdown()


class RayCluster:
    """``ray start --head --block`` on 127.0.0.1 in its own process group."""

    def __init__(self, tmp: Path, num_cpus: int = 2) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
        # No drain on SIGTERM: Ray >= 2.5x's `ray start --block` would otherwise wait up to
        # 30 s for a drain no test needs before it stops its processes.
        env = {**os.environ, **RAY_ENV, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        self.log = tmp / "ray-cluster.log"
        self.process = subprocess.Popen(
            [
                ray_cli,
                "start",
                "--head",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--port={self.port}",
                f"--num-cpus={num_cpus}",
                "--include-dashboard=false",
                "--disable-usage-stats",
            ],
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def started() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited: {self.log.read_text()[-2000:]}")
            # Its port answers seconds before the raylet has registered.
            return "Ray runtime started" in self.log.read_text()

        try:
            wait_until(started, timeout=120, what="the Ray head to start")
        except BaseException:
            self.__exit__(None, None, None)  # never leave a half-started cluster behind
            raise

    def stop(self) -> None:
        """Stop every process of the cluster (its process group), by PID."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        # Ray's daemons may have left their group (setsid): end any of this cluster's.
        import psutil

        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if f"127.0.0.1:{self.port}" in cmdline or f"--gcs_server_port={self.port}" in cmdline:
                try:
                    proc.kill()
                except psutil.Error:
                    pass


def cluster_tasks(address: str, job_id: str) -> list[dict[str, Any]]:
    """The tasks of job ``job_id`` as the cluster's GCS records them (name, state, worker_pid...).

    The records (and their conversion) that Ray's state API
    (``ray.util.state.list_tasks``) shows, read from the GCS the way
    ``ray.timeline`` reads them: ``list_tasks`` itself goes through Ray's
    dashboard, which needs ``ray[default]`` (about 25 more packages, grpcio and
    aiohttp among them) and another server.
    """
    from ray._raylet import GcsClientOptions, GlobalStateAccessor
    from ray.core.generated import gcs_pb2
    from ray.util.state.common import protobuf_to_task_state_dict

    options = GcsClientOptions.create(
        address, None, allow_cluster_id_nil=True, fetch_cluster_id_if_nil=True
    )
    accessor = GlobalStateAccessor(options)
    accessor.connect()
    events = [gcs_pb2.TaskEvents.FromString(raw) for raw in accessor.get_task_events()]
    tasks = [protobuf_to_task_state_dict(event) for event in events]
    return [task for task in tasks if task["job_id"] == job_id]


@contextmanager
def claimed_versions(
    address: str, python: str | None = None, ray: str | None = None
) -> Iterator[dict[str, Any]]:
    """Make the head at ``address`` claim it was started with other versions; restore after.

    Rewrites the cluster metadata the head stored in its GCS key-value store
    (what ``ray.init`` compares a joining driver's versions with), through
    Ray's own GCS client. Yields the metadata as claimed.
    """
    import json

    from ray._common.usage.usage_constants import CLUSTER_METADATA_KEY
    from ray._private.ray_constants import KV_NAMESPACE_CLUSTER
    from ray._raylet import GcsClient

    client = GcsClient(address=address)
    original = client.internal_kv_get(
        CLUSTER_METADATA_KEY, namespace=KV_NAMESPACE_CLUSTER, timeout=10
    )
    claimed = json.loads(original)
    claimed.update({"python_version": python or claimed["python_version"]})
    claimed.update({"ray_version": ray or claimed["ray_version"]})
    client.internal_kv_put(
        CLUSTER_METADATA_KEY, json.dumps(claimed).encode(), True, KV_NAMESPACE_CLUSTER, timeout=10
    )
    try:
        yield claimed
    finally:
        client.internal_kv_put(
            CLUSTER_METADATA_KEY, original, True, KV_NAMESPACE_CLUSTER, timeout=10
        )
