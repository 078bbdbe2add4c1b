"""``RayManager``: the same manager as ``LokyManager``, its jobs run as Ray tasks.

Only the engine's backend changes (``nbbg._engine.ray_backend``): the queue,
``max_workers``, cancel, progress, ``set_props``, ``cache_by``, the jobs API,
the panel and the magics are the ones ``LokyManager`` has.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import diskcache

from .._engine import ray_backend
from .manager import EngineManager


class RayManager(EngineManager):
    """Run Dash background callbacks as tasks on a Ray cluster (or a local Ray).

    ::

        app = Dash(__name__, background_callback_manager=nbbg.RayManager())

    :param address: ``None`` starts a local Ray bound to 127.0.0.1 (or uses
        the one ``ray.init`` already started in this process); ``"auto"``,
        ``"host:6379"`` or ``"ray://host:10001"`` joins a running cluster. An
        address that does not answer raises ``RayUnreachableError`` at once,
        a cluster started with another Python or Ray than the kernel's
        ``RayVersionMismatchError`` (naming both), before anything changes.
    :param max_workers: jobs that run at once (default: the cluster's CPUs);
        more wait in nbbg's FIFO queue.
    :param cache, cache_by, expire, prewarm: as for ``LokyManager``; results
        and ``cache_by`` entries go to the kernel's store, written by the
        kernel (a remote node cannot reach it).
    :param ray_init_kwargs: passed to ``ray.init`` when this manager starts
        or joins Ray (e.g. ``num_cpus=2``, ``runtime_env=...``).

    Every node needs nbbg, Dash and what the callbacks import, at the
    kernel's Python and Ray versions (Ray refuses to mix versions).
    """

    def __init__(
        self,
        address: str | None = None,
        max_workers: int | None = None,
        cache: diskcache.Cache | str | os.PathLike[str] | None = None,
        cache_by: Callable[[], Any] | list[Callable[[], Any]] | None = None,
        expire: float | None = None,
        prewarm: bool = True,
        **ray_init_kwargs: Any,
    ) -> None:
        owns_ray = ray_backend.connect(address, ray_init_kwargs)
        self.cluster_address = address
        if max_workers is None:
            max_workers = max(1, int(ray_backend.cluster_info().cpus))
        super().__init__(
            max_workers=max_workers,
            cache=cache,
            cache_by=cache_by,
            expire=expire,
            prewarm=prewarm,
            memory_limit=None,  # its workers may be on other machines
            backend=functools.partial(ray_backend.RayBackend, owns_ray=owns_ray),
        )

    def cluster(self) -> ray_backend.ClusterInfo:
        """The cluster the jobs run on: its address, live nodes and CPUs."""
        backend = self.engine.backend
        watch = backend.watch if isinstance(backend, ray_backend.RayBackend) else None
        return ray_backend.cluster_info(watch)
