"""``%load_ext nbbg``: a warm worker pool for the kernel's Dash apps, shown under each app.

Loading the extension:

- creates the kernel's ``LokyManager`` (workers start now) and makes it the
  manager of every ``dash.Dash()`` created afterwards without one, through a
  ``dash.hooks.setup`` hook. Dash hooks cannot be removed, so the hook is
  registered once per process and does nothing while the extension is
  unloaded. An app that names its own manager keeps it (a Dash manager is
  watched, so its jobs show in the panel);
- wraps Dash's notebook runner (see ``inline``): inline by default, free
  ports, JupyterHub, the app's iframe sized to its content (see ``fit``, with a
  ``dash.hooks.index`` hook registered like the other) and the app's jobs panel
  shown right under it;
- makes ``from jupyter_dash import JupyterDash`` work (see ``legacy``) and
  adds the ``%nbbg`` magic.

``%unload_ext nbbg`` undoes each change, closes the panels and stops the workers.

``%nbbg backend ray [address]`` / ``%nbbg backend loky`` (or
:func:`use_backend`) replaces the kernel's manager for apps created afterwards;
apps already built keep theirs, whose running jobs go on. A manager that
cannot be made (an unreachable Ray) leaves the current one in place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dash

from .._dash.loky_manager import LokyManager
from .._dash.manager import EngineManager
from .._dash.private import (
    background_manager,
    inline_display_slot,
    jupyter_runner,
    set_background_manager,
)
from .._engine.records import JobHistory
from .._errors import ExtensionNotLoadedError
from . import legacy, magics
from .fit import add_frame_script, fitted_display
from .inline import wrap_run_app
from .panel import JobsPanel, close_all_panels, panel
from .patching import patch_attribute
from .sources import release_watches, watch


@dataclass
class _Loaded:
    manager: EngineManager
    earlier: list[EngineManager] = field(default_factory=list)
    """Managers replaced by ``use_backend``: apps built before may still use them."""
    undo: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    panels: dict[tuple[str, int], JobsPanel] = field(default_factory=dict)
    """The panel shown under the app served at each address (replaced when the cell runs again)."""

    def show_panel(self, app: dash.Dash, address: tuple[str, int]) -> None:
        from IPython.display import display

        previous = self.panels.pop(address, None)
        if previous is not None:
            previous.close()
        self.panels[address] = shown = panel(app)
        display(shown)


_loaded: _Loaded | None = None
_hook_registered = False


def kernel_manager() -> EngineManager | None:
    """The manager ``%load_ext nbbg`` created, while the extension is loaded."""
    return None if _loaded is None else _loaded.manager


def history(
    limit: int | None = None, name: str | None = None, state: str | None = None
) -> JobHistory:
    """``nbbg.history()``: the kernel manager's job records, newest first (see
    ``LokyManager.history``)."""
    manager = kernel_manager()
    if manager is None:
        raise ExtensionNotLoadedError("nbbg.history()")
    return manager.history(limit, name, state)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbbg``."""
    global _loaded
    if _loaded is not None:
        return
    _register_hook_once()
    state = _Loaded(LokyManager())
    runner = jupyter_runner()
    run_app = wrap_run_app(runner.run_app, state.show_panel)
    for undo in (
        patch_attribute(runner, "run_app", run_app),
        _fit_inline_display(runner),
        patch_attribute(runner, "default_mode", "inline"),
        legacy.install(),
        magics.register(ipython, lambda: state.manager, use_backend),
    ):
        state.undo.callback(undo)
    _loaded = state


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbbg``: Dash's defaults back, panels closed, workers stopped."""
    global _loaded
    state, _loaded = _loaded, None
    if state is None:
        return
    close_all_panels()
    state.undo.close()
    release_watches()
    for manager in (*state.earlier, state.manager):
        manager.shutdown()


def use_backend(backend: str, address: str | None = None, **kwargs: Any) -> EngineManager:
    """Make the kernel's manager run on ``"ray"`` (at ``address``) or ``"loky"``; return it.

    Dash apps created afterwards use it; apps built before keep their manager.
    ``kwargs`` go to the manager (``RayManager`` passes the rest to ``ray.init``).
    If the new manager cannot be made (e.g. ``RayUnreachableError``), the
    kernel keeps its current one and the error says why.
    """
    state = _loaded
    if state is None:
        raise ExtensionNotLoadedError(f"nbbg.use_backend({backend!r})")
    if backend == "ray":
        from .._dash.ray_manager import RayManager

        manager: EngineManager = RayManager(address, **kwargs)
    elif backend == "loky":
        if address is not None:
            raise ValueError("the loky backend runs on this machine: it takes no address")
        manager = LokyManager(**kwargs)
    else:
        raise ValueError(f"unknown backend {backend!r}: use 'ray' or 'loky'")
    state.earlier.append(state.manager)
    state.manager = manager
    return manager


def _register_hook_once() -> None:
    global _hook_registered
    if not _hook_registered:
        dash.hooks.setup()(_adopt_app)
        dash.hooks.index()(_fit_page)
        _hook_registered = True


def _fit_inline_display(runner: Any) -> Callable[[], None]:
    owner, name = inline_display_slot(runner)
    return patch_attribute(owner, name, staticmethod(fitted_display(getattr(owner, name))))


def _fit_page(index: str) -> str:
    """Every app page, while the extension is loaded, tells its iframe its height."""
    return add_frame_script(index) if _loaded is not None else index


def _adopt_app(app: dash.Dash) -> None:
    """Runs in every ``Dash.__init__``, after the app's manager is set."""
    state = _loaded
    if state is None:
        return
    manager = background_manager(app)
    if manager is None:
        set_background_manager(app, state.manager)
    elif not isinstance(manager, EngineManager):
        watch(manager)  # learn its jobs from the first one
