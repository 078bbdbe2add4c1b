"""``app.run()`` in a notebook with the extension: inline, on a free port, behind JupyterHub.

Wraps Dash's notebook runner (``run_app``): inline is the default mode,
behind JupyterHub the app is reached through
``{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/``, a busy port raises
:class:`PortInUseError` naming a free one (Dash would exit the kernel's
interpreter loop with ``SystemExit``), and ``show_panel`` is called with the
app once it serves. ``infer_jupyter_proxy_config()`` is never called: it
hangs or raises on ipykernel 7.
"""

from __future__ import annotations

import errno
import os
import re
import socket
from collections.abc import Callable
from typing import Any

import dash

from .._dash.private import notebook_servers, set_requests_prefix
from .._errors import PortInUseError

PORT_SEARCH = 100
"""How many ports after a busy one to try before asking the OS for any free port."""

ShowPanel = Callable[[dash.Dash, tuple[str, int]], None]


def wrap_run_app(original: Callable[..., None], show_panel: ShowPanel) -> Callable[..., None]:
    """Dash's ``run_app`` with the changes above; ``show_panel(app, (host, port))`` after it."""

    def run_app(app: dash.Dash, *args: Any, **kwargs: Any) -> None:
        run_inline(original, show_panel, app, *args, **kwargs)

    return run_app


def run_inline(
    original: Callable[..., None],
    show_panel: ShowPanel,
    app: dash.Dash,
    mode: str | None = None,
    width: str = "100%",
    height: int = 650,
    host: str = "127.0.0.1",
    port: int = 8050,
    server_url: str | None = None,
) -> None:
    port = int(port)
    if (host, port) not in notebook_servers():  # Dash replaces its own server there
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
    if mode != "_none":
        show_panel(app, (host, port))


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
        set_requests_prefix(app, f"{base}/proxy/{port}/")
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
