"""``LokyManager``: the engine on warm loky workers on this machine."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import diskcache

from .._engine.memory_guard import MemoryLimitSpec, parse_memory_limit
from .manager import EngineManager


class LokyManager(EngineManager):
    """Run Dash background callbacks in warm loky worker processes.

    A drop-in replacement for ``DiskcacheManager``::

        app = Dash(__name__, background_callback_manager=nbbg.LokyManager())

    :param max_workers: jobs that run at once (default: the CPU count); more
        wait in a FIFO queue.
    :param cache: a ``diskcache.Cache`` or a directory for results and
        ``cache_by`` entries (default: ``~/.cache/nbbg/store``, mode 0700).
    :param cache_by: zero-argument functions whose values join the cache key;
        when set, identical calls are answered from the store without running.
    :param expire: seconds a ``cache_by`` entry lives after its last use.
    :param prewarm: start the workers now and return once they are ready (at
        most 30 s), so the first job runs at warm speed; ``False`` starts them
        at the first job instead.
    :param memory_limit: the most memory (RSS) one job's worker may use; a job
        going over it is stopped with ``MemoryLimitError``. Bytes, a size such
        as ``"4GiB"`` or ``"300MB"``, ``None`` for no limit, or ``"auto"``
        (default): half of the memory of the machine, or of its container.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        cache: diskcache.Cache | str | os.PathLike[str] | None = None,
        cache_by: Callable[[], Any] | list[Callable[[], Any]] | None = None,
        expire: float | None = None,
        prewarm: bool = True,
        memory_limit: MemoryLimitSpec = "auto",
    ) -> None:
        limit = parse_memory_limit(memory_limit)  # bad input fails before workers start
        super().__init__(
            max_workers=max_workers,
            cache=cache,
            cache_by=cache_by,
            expire=expire,
            prewarm=prewarm,
            memory_limit=limit,
        )
