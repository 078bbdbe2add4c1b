"""The Ray backend: each job a Ray task, on this machine or anywhere on a cluster.

A slot's "worker" here is the task of its current job: Ray picks a worker
process (and a node) per task, so nothing one job sent is assumed to be there
for the next (``keeps_state = False``). What is large goes once per version
through Ray's object store instead: the callable's pickle by its token, each
large value by its digest (``ray.put``, kept in an LRU so later jobs reuse the
object). Reports stream back from the task (``ray_task``), are fed to the
engine as the channel's :class:`Report` s; the result comes back with the
outcome and the kernel writes it to its store. Cancel is
``ray.cancel(ref, force=True)``: Ray kills that task's worker process and no
other (~16 ms measured), and the next task gets a fresh one.

Ray is imported only here (and only when a ``RayManager`` is made), so nbbg
imports without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import diskcache
from cachetools import LRUCache

from .._errors import RayNotInstalledError, RayTaskLostError, RayUnreachableError, StoreError
from . import parcels, ray_task, ray_versions
from .backend import OnReport
from .channel import Report, ReportKind
from .jobs import JobFailure
from .store import Store
from .worker import JobSpec, WorkerOutcome, describe_exception

LOGGER = logging.getLogger("nbbg")

CONNECT_TIMEOUT = 3.0
"""Seconds a cluster's port may take to answer; ``ray.init`` alone retries for minutes."""

SHIPPED_VERSIONS = 64
"""Callables and large values kept in Ray's object store for later jobs (each by version)."""


def import_ray() -> ModuleType:
    """Ray, or :class:`RayNotInstalledError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise RayNotInstalledError() from exc
    return ray


@dataclass(frozen=True)
class ClusterInfo:
    """What ``%nbbg`` shows of the cluster."""

    address: str
    nodes: int
    cpus: float

    def __str__(self) -> str:
        plural = "s" if self.nodes != 1 else ""
        return f"Ray at {self.address}: {self.nodes} node{plural}, {self.cpus:g} CPUs"


def connect(address: str | None, init_kwargs: dict[str, Any]) -> bool:
    """Join (or start) Ray; True if this call started or joined it (``ray.init``).

    An ``address`` of ``host:port`` is checked with a plain TCP connect first:
    ``ray.init`` would otherwise retry an unreachable one for minutes; then the
    cluster's Python and Ray versions against the kernel's (``ray_versions``).
    A local Ray (``address=None``) binds to 127.0.0.1 with no dashboard unless
    ``init_kwargs`` say otherwise. Ray's own settings (``RAY_ADDRESS``,
    ``RAY_USAGE_STATS_ENABLED``...) are left as the user has them.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address is not None:
        _check_reachable(address)
        ray_versions.check(ray, address, CONNECT_TIMEOUT)
    kwargs = dict(init_kwargs)
    if address is None:
        kwargs.setdefault("_node_ip_address", "127.0.0.1")
        kwargs.setdefault("include_dashboard", False)
    kwargs.setdefault("log_to_driver", False)  # worker output would land in random cells
    try:
        # "local": a new instance, never a cluster someone else started on this machine
        # (ray.init() alone joins the one in /tmp/ray/ray_current_cluster).
        ray.init(address=address if address is not None else "local", **kwargs)
    except Exception as exc:
        mismatch = ray_versions.rephrase(str(address), exc) if address is not None else None
        if mismatch is not None:
            with contextlib.suppress(Exception):
                ray.shutdown()  # whatever ray.init had set up before it checked
            raise mismatch from exc
        detail = describe_exception(exc)
        if address is not None and "RAY_AUTH_MODE" not in os.environ:
            detail += (
                "; a cluster with token authentication (Ray's default for new clusters) "
                "also needs RAY_AUTH_MODE=token and its token in this kernel's environment"
            )
        raise RayUnreachableError(address, detail) from exc
    return True


def _check_reachable(address: str) -> None:
    if address == "auto" or address.startswith("ray://"):
        host_port = address.removeprefix("ray://") if address != "auto" else ""
    else:
        host_port = address
    if not host_port:
        return  # "auto": ray.init finds the local cluster or fails at once
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), CONNECT_TIMEOUT):
            pass
    except (OSError, ValueError) as exc:
        raise RayUnreachableError(address, describe_exception(exc)) from exc


class ClusterWatch:
    """Whether the cluster still answers, checked without calling Ray.

    When the cluster's processes are gone, a Ray call from this process (a
    task, ``ray.put``, ``ray.cancel``) can end the whole process: the kernel.
    So before each such call the GCS port gets a plain TCP connect (~0.1 ms on
    one machine; the answer is kept ``RECHECK`` s), and once it stopped
    answering nbbg makes no further Ray call: jobs fail with a clear error.
    """

    RECHECK = 0.5

    def __init__(self) -> None:
        self.address = _gcs_address()
        self.gone = False
        self._checked = 0.0

    def alive(self) -> bool:
        if self.gone:
            return False
        now = time.monotonic()
        if now - self._checked < self.RECHECK or self.address is None:
            return True
        host, _, port = self.address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), CONNECT_TIMEOUT):
                pass
        except (OSError, ValueError):
            self.gone = True
            return False
        self._checked = now
        return True

    def check(self) -> None:
        if not self.alive():
            raise RayUnreachableError(self.address, "it stopped answering")


def _gcs_address() -> str | None:
    try:
        return str(import_ray().get_runtime_context().gcs_address)
    except Exception:  # noqa: BLE001 - a Ray client connection has none
        return None


def cluster_info(watch: ClusterWatch | None = None) -> ClusterInfo:
    if watch is not None and not watch.alive():
        return ClusterInfo(f"{watch.address} (not answering)", 0, 0)
    ray = import_ray()
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    cpus = float(ray.cluster_resources().get("CPU", 0))
    try:
        address = ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - a Ray client connection has none
        address = "?"
    return ClusterInfo(str(address), len(nodes), cpus)


class RayWorker:
    """A slot's worker on Ray: the task of its current job (one at a time)."""

    keeps_state = False

    def __init__(self, backend: RayBackend) -> None:
        self._backend = backend
        self._ref: Any = None
        self._pid: int | None = None
        self._host: str | None = None
        self.warming: Future[Any] = backend.warm()

    def submit(self, spec: JobSpec) -> Future[WorkerOutcome]:
        future: Future[WorkerOutcome] = Future()
        future.set_running_or_notify_cancel()
        # Ray picks the process per task, so the previous job's may not run this one:
        # the job's pid (panel, %nbbg, JobSnapshot) is unknown until its task says.
        self._pid = self._host = None
        try:
            self._ref = self._backend.launch(spec)
        except Exception as exc:  # noqa: BLE001 - e.g. the cluster is gone: fail this job only
            future.set_exception(RayTaskLostError(spec.name, f"not started: {_first_line(exc)}"))
            return future
        threading.Thread(
            target=self._read, args=(self._ref, spec, future), name="nbbg-ray-job", daemon=True
        ).start()
        return future

    def _read(self, ref: Any, spec: JobSpec, future: Future[WorkerOutcome]) -> None:
        ray = self._backend.ray
        try:
            for item_ref in ref:
                item = pickle.loads(ray.get(item_ref))
                if isinstance(item, tuple) and item and item[0] == "started":
                    _, self._pid, self._host = item
                    self._backend.on_report(Report(ReportKind.WORKER, spec.job_id, self._pid))
                elif isinstance(item, tuple) and item and item[0] == "done":
                    future.set_result(self._backend.keep_result(spec, item[1], item[2]))
                    return
                else:
                    self._backend.on_report(item)
        except BaseException as exc:  # noqa: BLE001 - cancelled, crashed, cluster gone
            if not future.done():
                future.set_exception(RayTaskLostError(spec.name, _first_line(exc)))
            return
        if not future.done():
            future.set_exception(RayTaskLostError(spec.name, "its stream ended early"))

    def pid(self) -> int | None:
        return self._pid

    def node(self) -> str | None:
        return self._host

    def kill(self) -> int | None:
        ref, self._ref = self._ref, None
        if ref is not None and self._backend.watch.alive():
            try:
                self._backend.ray.cancel(ref, force=True)
            except Exception:
                LOGGER.warning(
                    "nbbg: ray.cancel of the task in pid %s failed", self._pid, exc_info=True
                )
        return self._pid


class RayBackend:
    """Starts :class:`RayWorker` s on a connected Ray (see :func:`connect`)."""

    result_inline_limit = 0
    """Unused: a task hands every result back itself (``ray_task``); ``keep_result`` stores it."""

    def __init__(
        self,
        on_report: OnReport,
        warm_modules: tuple[str, ...],
        store: diskcache.Cache,
        *,
        owns_ray: bool = False,
    ) -> None:
        self.ray = import_ray()
        self.on_report = on_report
        self._store = store
        self._warm_modules = warm_modules
        self._owns_ray = owns_ray
        self._lock = threading.Lock()
        self._payloads: LRUCache[int, Any] = LRUCache(SHIPPED_VERSIONS)
        self._objects: LRUCache[bytes, Any] = LRUCache(SHIPPED_VERSIONS)
        # max_retries=0: a job whose worker died ends with an error, never runs twice.
        self._run = self.ray.remote(num_cpus=1, max_retries=0, num_returns="streaming")(
            ray_task.run_streaming
        )
        self._warm = self.ray.remote(num_cpus=1, max_retries=0)(ray_task.warm_up)
        self.watch = ClusterWatch()

    def start_worker(self) -> RayWorker:
        return RayWorker(self)

    def warm(self) -> Future[Any]:
        """Start a worker process with the job modules imported (Ray keeps it for later tasks)."""
        try:
            self.watch.check()
            future: Future[Any] = self._warm.remote(self._warm_modules).future()
        except Exception as exc:  # noqa: BLE001 - the cluster is gone: the job will say so
            future = Future()
            future.set_exception(exc)
        return future

    def launch(self, spec: JobSpec) -> Any:
        """Start ``spec`` as a task; return its streaming generator."""
        self.watch.check()
        payload = self._shipped(self._payloads, spec.token, lambda: spec.payload)
        objects = {
            digest: (size, self._shipped(self._objects, digest, lambda d=digest: _read(spec, d)))
            for digest, size in spec.objects
        }
        light = replace(spec, payload=None, parcels=None)
        return self._run.remote(light, payload, objects)

    def _shipped(self, cache: LRUCache[Any, Any], key: Any, value: Any) -> Any:
        """The object ref of ``key``'s version, put in Ray's object store once."""
        with self._lock:
            ref = cache.get(key)
        if ref is None:
            ref = self.ray.put(value())
            with self._lock:
                cache[key] = ref
        return ref

    def keep_result(
        self, spec: JobSpec, outcome: WorkerOutcome, data: bytes | None
    ) -> WorkerOutcome:
        """Write the task's result into the kernel's store (a remote node cannot)."""
        if data is None or outcome.kind != "ok":
            return outcome
        if isinstance(self._store, Store):  # written with others in one batch, off this thread
            self._store.set_later(spec.result_key, data, spec.expire, "nbbg")
            return outcome
        try:
            self._store.set(spec.result_key, data, expire=spec.expire, tag="nbbg")
        except Exception as exc:  # noqa: BLE001 - disk full, corrupt database, ...
            recover = getattr(self._store, "recover", None)
            if recover is not None:
                recover(exc)
            failure = JobFailure(str(StoreError(str(self._store.directory), exc)))
            return WorkerOutcome("error", outcome.messages_sent, failure)
        return outcome

    def close(self) -> None:
        if self._owns_ray and self.watch.alive():
            with contextlib.suppress(Exception):
                self.ray.shutdown()


def _read(spec: JobSpec, digest: bytes) -> Any:
    """A large value from the job's shared-memory parcel (this machine's copy at submit)."""
    ref = (spec.parcels or {}).get(digest)
    if ref is None:
        raise RuntimeError(
            f"the value {digest.hex()[:12]} of `{spec.name}` was not copied at submit"
        )
    return parcels.Received(ref).value()


def _first_line(exc: BaseException) -> str:
    text = describe_exception(exc)
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
