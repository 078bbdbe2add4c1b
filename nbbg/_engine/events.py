"""What the engine tells the world: job events to subscribers (never under its lock), and hooks."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, Protocol, TypeVar

from .channel import Report
from .jobs import JobEvent

LOGGER = logging.getLogger("nbbg")

Event = TypeVar("Event")

Subscriber = Callable[[JobEvent], None]


class EventHub(Generic[Event]):
    """Subscribers of one kind of event, told outside any lock of the caller's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[Event], None]] = []

    def subscribe(self, subscriber: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``subscriber(event)`` for every event; return the function that stops it."""
        with self._lock:
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._subscribers.remove(subscriber)

        return unsubscribe

    def publish(self, events: Iterable[Event]) -> None:
        """Hand each event to every subscriber; a failing subscriber is logged, not fatal."""
        with self._lock:
            subscribers = list(self._subscribers)
        if not subscribers:
            return
        for event in events:
            for subscriber in subscribers:
                try:
                    subscriber(event)
                except Exception:
                    LOGGER.exception("nbbg: job event subscriber failed")


class EngineHooks(Protocol):
    """What an adapter above the engine (the Dash manager) is told, beyond events."""

    def reported(self, report: Report) -> None:
        """A running job's progress or ``set_props`` report (under the engine's lock: be quick).

        It arrives before the job can end, so nothing a job reported is
        missing when its result is read.
        """

    def forgotten(self, job_ids: Sequence[str]) -> None:
        """Jobs the engine no longer remembers."""
