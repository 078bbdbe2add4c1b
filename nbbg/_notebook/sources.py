"""Where the jobs panel gets its jobs: nbbg's managers, or Dash's own.

::

    LokyManager ──────── engine events ──────► ManagerSource     pushed
    DiskcacheManager,
    CeleryManager, ... ─► DashManagerWatch ──► ManagerSource     wrapped calls + a poll

A panel for one app shows the jobs whose ``origin`` is that app (the Dash
adapter records it as each job is submitted); jobs whose app could not be
told apart show in every app's panel, jobs of the jobs API (``submit``)
only in the kernel-wide panel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from dash.background_callback.managers import BaseBackgroundCallbackManager

from .._dash.dash_jobs import AppOrigin
from .._dash.manager import EngineManager
from .._dash.private import background_manager
from .._engine.jobs import JobSnapshot
from .watch import DashManagerWatch

Listener = Callable[[], None]


class JobSource(Protocol):
    """The jobs of one manager, as far as one panel is concerned."""

    def jobs(self) -> list[JobSnapshot]: ...

    def cancel(self, job_id: str) -> bool: ...

    def can_rerun(self, job: JobSnapshot) -> bool: ...

    def rerun(self, job_id: str) -> str: ...

    def subscribe(self, on_change: Listener) -> Callable[[], None]: ...


def shown_to(job: JobSnapshot, owner: int | None) -> bool:
    """Whether a panel for app ``owner`` (None: the whole kernel) shows ``job``."""
    if owner is None:
        return True
    if not isinstance(job.origin, AppOrigin):
        return False  # the jobs API: kernel-wide panels only
    return job.origin.server_id is None or job.origin.server_id == owner


class ManagerSource:
    """One manager's jobs for one panel: nbbg's (pushed by its engine) or Dash's (watched)."""

    def __init__(self, manager: EngineManager | DashManagerWatch, owner: int | None) -> None:
        self._jobs_of, self.owner = manager, owner

    def jobs(self) -> list[JobSnapshot]:
        return [job for job in self._jobs_of.jobs() if shown_to(job, self.owner)]

    def cancel(self, job_id: str) -> bool:
        return self._jobs_of.cancel(job_id)

    def can_rerun(self, job: JobSnapshot) -> bool:
        """A finished job of nbbg's jobs API (``submit``): its record keeps its call."""
        nbbg_job = isinstance(self._jobs_of, EngineManager) and job.origin is None
        return nbbg_job and not job.state.active

    def rerun(self, job_id: str) -> str:
        if not isinstance(self._jobs_of, EngineManager):
            raise TypeError("only nbbg's managers keep what they need to re-run a job")
        return self._jobs_of.rerun(job_id)

    def subscribe(self, on_change: Listener) -> Callable[[], None]:
        if isinstance(self._jobs_of, EngineManager):
            return self._jobs_of.subscribe(lambda _event: on_change())
        return self._jobs_of.add_listener(on_change)


_watches: dict[int, DashManagerWatch] = {}
_watches_lock = threading.Lock()


def watch(manager: BaseBackgroundCallbackManager) -> DashManagerWatch:
    """The (single) watch of a Dash manager, installed on first use."""
    with _watches_lock:
        existing = _watches.get(id(manager))
        if existing is not None and existing.manager is manager:
            return existing
        _watches[id(manager)] = created = DashManagerWatch(manager)
        return created


def release_watches() -> None:
    """Remove every wrapper from every manager."""
    with _watches_lock:
        watches = list(_watches.values())
        _watches.clear()
    for each in watches:
        each.restore()


def source_for(manager: BaseBackgroundCallbackManager, owner: int | None) -> JobSource:
    if isinstance(manager, EngineManager):
        return ManagerSource(manager, owner)
    return ManagerSource(watch(manager), owner)


def usable(manager: Any) -> bool:
    """A manager the panel can show: not a shut-down nbbg manager."""
    if isinstance(manager, EngineManager):
        return not manager.engine.closed
    return isinstance(manager, BaseBackgroundCallbackManager)


def app_managers(app: Any) -> list[BaseBackgroundCallbackManager]:
    """The managers an app uses: its default and any given to one callback."""
    candidates = [background_manager(app)]
    candidates += [entry.get("manager") for entry in _callback_entries(app)]
    found: dict[int, BaseBackgroundCallbackManager] = {}
    for candidate in candidates:
        if candidate is not None and usable(candidate):
            found.setdefault(id(candidate), candidate)
    return list(found.values())


def app_callback_names(app: Any) -> set[str]:
    """The names of an app's background callbacks (its jobs' names, also in the history)."""
    names = set()
    for entry in _callback_entries(app):
        callback = entry.get("callback")
        if entry.get("background") and callback is not None:
            names.add(str(getattr(callback, "__name__", "")))
    return names


def _callback_entries(app: Any) -> list[dict[str, Any]]:
    # Dash adds callbacks (e.g. the hidden cancel callbacks) on its first
    # request, from a request thread, while the panel may be reading.
    for _attempt in range(3):
        try:
            return list(getattr(app, "callback_map", {}).values())
        except RuntimeError:  # dictionary changed size during iteration
            continue
    return []


def kernel_managers() -> list[BaseBackgroundCallbackManager]:
    """Every usable manager created in this process."""
    found: dict[int, BaseBackgroundCallbackManager] = {}
    for manager in BaseBackgroundCallbackManager.managers:
        if usable(manager):
            found.setdefault(id(manager), manager)
    return list(found.values())
