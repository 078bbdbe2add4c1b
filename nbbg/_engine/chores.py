"""One long-lived thread for the engine's slow chores (starting replacement workers).

A cancel used to start a thread for its replacement worker, and
``Thread.start`` waits until the new thread runs: with every core busy that
put a thread switch, and then the new thread's Python work, in front of the
cancel request's answer. Handing the chore to a thread that already runs costs
the caller one queue put.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

LOGGER = logging.getLogger("nbbg")

Chore = tuple[Callable[..., Any], tuple[Any, ...]] | None


class Chores:
    """Runs chores in order on one daemon thread, started with it."""

    def __init__(self, name: str) -> None:
        self._queue: SimpleQueue[Chore] = SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def run_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self._queue.put((fn, args))

    def close(self) -> None:
        """Stop the thread once the chores before this are done (it does not wait)."""
        self._queue.put(None)

    def _loop(self) -> None:
        while True:
            chore = self._queue.get()
            if chore is None:
                return
            fn, args = chore
            try:
                fn(*args)
            except Exception:
                LOGGER.exception("nbbg: a background chore failed")
