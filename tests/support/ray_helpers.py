"""Real Ray for the tests, on 127.0.0.1 only, with usage statistics off.

``local_ray`` starts one in-process Ray per test module (~4-25 s and ~620 MB
on this machine, so never per test); ``RayCluster`` runs ``ray start --head
--block`` in a subprocess, stopped by its PID (``ray stop`` would stop every
Ray on the machine, other agents' included).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
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
        env = {**os.environ, **RAY_ENV}
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
