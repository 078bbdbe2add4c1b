"""``%load_ext nbbg``: a warm worker pool for the kernel's Dash apps, shown under each app.

Loading the extension:

- creates the kernel's ``LokyManager`` (workers start now) and makes it the
  manager of every ``dash.Dash()`` created afterwards without one, through a
  ``dash.hooks.setup`` hook. Dash hooks cannot be removed, so the hook is
  registered once per process and does nothing while the extension is
  unloaded. An app that names its own manager keeps it;
- wraps Dash's notebook runner (``dash.jupyter_dash.run_app``): inline is
  the default mode, behind JupyterHub the app is reached through
  ``{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/``, a busy port raises
  :class:`PortInUseError` naming a free one (Dash would exit the kernel's
  interpreter loop with ``SystemExit``), and the app's jobs panel is shown
  under it. ``infer_jupyter_proxy_config()`` is never called: it hangs or
  raises on ipykernel 7;
- makes ``from jupyter_dash import JupyterDash`` work (see ``_legacy``) and
  adds the ``%nbbg`` magic.

``%unload_ext nbbg`` undoes each change, closes the panels and stops the workers.
"""

from __future__ import annotations

import errno
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dash
from dash._jupyter import jupyter_dash

from . import _legacy, _magics
from ._errors import PortInUseError
from ._manager import LokyManager
from ._panel import JobsPanel, close_all_panels, panel
from ._patching import patch_attribute
from ._sources import release_watches, watch

PORT_SEARCH = 100
"""How many ports after a busy one to try before asking the OS for any free port."""


@dataclass
class _Loaded:
    manager: LokyManager
    undo: list[Callable[[], None]] = field(default_factory=list)
    panels: dict[tuple[str, int], JobsPanel] = field(default_factory=dict)
    """The panel shown under the app served at each address (replaced when the cell runs again)."""


_loaded: _Loaded | None = None
_hook_registered = False


def kernel_manager() -> LokyManager | None:
    """The manager ``%load_ext nbbg`` created, while the extension is loaded."""
    return None if _loaded is None else _loaded.manager


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbbg``."""
    global _loaded
    if _loaded is not None:
        return
    _register_hook_once()
    state = _Loaded(LokyManager())
    watch(state.manager)  # know which app starts each job from the first one
    original_run_app = jupyter_dash.run_app

    def run_app(app: dash.Dash, *args: Any, **kwargs: Any) -> None:
        _run_app(original_run_app, app, *args, **kwargs)

    state.undo += [
        patch_attribute(jupyter_dash, "run_app", run_app),
        patch_attribute(jupyter_dash, "default_mode", "inline"),
        _legacy.install(),
        _magics.register(ipython, state.manager),
    ]
    _loaded = state


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbbg``: Dash's defaults back, panels closed, workers stopped."""
    global _loaded
    state, _loaded = _loaded, None
    if state is None:
        return
    close_all_panels()
    for undo in reversed(state.undo):
        undo()
    release_watches()
    state.manager.shutdown()


def _register_hook_once() -> None:
    global _hook_registered
    if not _hook_registered:
        dash.hooks.setup()(_adopt_app)
        _hook_registered = True


def _adopt_app(app: dash.Dash) -> None:
    """Runs in every ``Dash.__init__``, after the app's manager is set."""
    state = _loaded
    if state is None:
        return
    if app._background_manager is None:
        app._background_manager = state.manager
    watch(app._background_manager)


# ---------------------------------------------------------------- app.run in the notebook
def _run_app(
    original: Callable[..., None],
    app: dash.Dash,
    mode: str | None = None,
    width: str = "100%",
    height: int = 650,
    host: str = "127.0.0.1",
    port: int = 8050,
    server_url: str | None = None,
) -> None:
    port = int(port)
    if (host, port) not in type(jupyter_dash)._servers:  # Dash replaces its own server there
        _ensure_port_free(host, port)
    server_url = _behind_jupyterhub(app, port, server_url)
    try:
        original(
            app, mode=mode, width=width, height=height, host=host, port=port, server_url=server_url
        )
    except SystemExit:
        # werkzeug exits when the port was taken between our check and its bind.
        if _port_busy(host, port):
            raise PortInUseError(host, port, free_port_near(host, port)) from None
        raise RuntimeError(
            f"the Dash server could not start on {host}:{port}: see the message above"
        ) from None
    shown_mode = mode if mode is not None else jupyter_dash.default_mode
    if _loaded is not None and shown_mode != "_none":
        _show_panel(_loaded, app, (host, port))


def _show_panel(state: _Loaded, app: dash.Dash, address: tuple[str, int]) -> None:
    from IPython.display import display

    previous = state.panels.pop(address, None)
    if previous is not None:
        previous.close()
    state.panels[address] = shown = panel(app)
    display(shown)


def _behind_jupyterhub(app: dash.Dash, port: int, server_url: str | None) -> str | None:
    """Route the app through jupyter-server-proxy when the kernel runs under JupyterHub.

    The browser then loads ``{prefix}proxy/{port}/`` from the hub's own
    origin, so the iframe URL is relative (``server_url=""``).
    """
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
    if not prefix:
        return server_url
    base = prefix.rstrip("/")
    current = app.config.get("requests_pathname_prefix") or "/"
    if current == "/" or re.fullmatch(re.escape(base) + r"/proxy/\d+/", current):
        # Dash locks its config after construction; its own notebook runner
        # writes this key the same way.
        dict.__setitem__(app.config, "requests_pathname_prefix", f"{base}/proxy/{port}/")
    return "" if server_url is None else server_url


def _port_busy(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _ensure_port_free(host: str, port: int) -> None:
    if _port_busy(host, port):
        raise PortInUseError(host, port, free_port_near(host, port))


def free_port_near(host: str, port: int) -> int:
    """The first free port after ``port``, or any free port."""
    for candidate in range(port + 1, min(port + 1 + PORT_SEARCH, 65536)):
        if not _port_busy(host, candidate):
            return candidate
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
