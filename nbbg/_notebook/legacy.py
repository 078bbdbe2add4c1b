"""``JupyterDash`` as the ``jupyter_dash`` package had it, working on today's Dash.

jupyter-dash 0.4.2 fails on Dash >= 3 (``run_server`` calls a method Dash
removed), yet many notebooks start with::

    from jupyter_dash import JupyterDash
    app = JupyterDash(__name__)
    ...
    app.run_server(mode="inline")

This ``JupyterDash`` is a ``dash.Dash`` whose ``run_server`` maps to
``app.run(jupyter_mode=...)``. While the extension is loaded,
:func:`install` makes ``from jupyter_dash import JupyterDash`` return it:
it replaces the attribute of an already imported ``jupyter_dash`` module, or
else registers a stand-in module (whose submodules still load from the real
package, when installed).
"""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any

import dash

from .patching import patch_attribute

MODES = ("inline", "external", "jupyterlab", "tab")


class JupyterDash(dash.Dash):
    """A ``dash.Dash`` with jupyter_dash 0.4.2's constructor and ``run_server``.

    :param server_url: the URL the browser reaches the app at, when it is not
        ``http://host:port`` (e.g. behind a proxy).
    """

    default_mode: str | None = None
    """Mode of ``run_server()`` without one; None follows Dash (inline with ``%load_ext nbbg``)."""

    default_server_url: str | None = None

    def __init__(
        self, name: str | None = None, server_url: str | None = None, **kwargs: Any
    ) -> None:
        with warnings.catch_warnings():
            # Dash warns about any class named JupyterDash; this one is the supported path.
            warnings.filterwarnings("ignore", message="JupyterDash is deprecated")
            super().__init__(name=name, **kwargs)
        self.server_url = server_url

    @classmethod
    def infer_jupyter_proxy_config(cls) -> None:
        """Accepted and ignored.

        The original asks the front end over a comm and waits, which hangs or
        raises on ipykernel 7. Behind JupyterHub, ``%load_ext nbbg`` sets the
        proxy path from ``JUPYTERHUB_SERVICE_PREFIX`` instead.
        """

    def run_server(
        self,
        mode: str | None = None,
        width: str = "100%",
        height: int = 650,
        inline_exceptions: bool | None = None,
        **kwargs: Any,
    ) -> None:
        """Serve the app as ``jupyter_dash`` did: ``mode`` is inline, external, jupyterlab or tab.

        ``inline_exceptions`` is accepted for compatibility (Dash prints
        callback errors in the notebook itself). Other keyword arguments
        (``host``, ``port``, ``debug``, ``dev_tools_*``) go to ``Dash.run``.
        """
        mode = self._mode(mode)
        debug = kwargs.pop("debug", True)
        if debug:
            # As jupyter_dash did: no dev-tools overlay inside the notebook, and
            # no hot reload (a file-watching thread in the kernel).
            kwargs.setdefault("dev_tools_ui", mode not in (None, "inline"))
            kwargs.setdefault("dev_tools_hot_reload", False)
        self.run(
            jupyter_mode=mode,  # type: ignore[arg-type]
            jupyter_width=width,
            jupyter_height=height,
            jupyter_server_url=self.server_url or self.default_server_url,
            debug=debug,
            **kwargs,
        )

    def _mode(self, mode: str | None) -> str | None:
        mode = mode if mode is not None else self.default_mode
        if mode is None:
            return None
        if not isinstance(mode, str) or mode.lower() not in MODES:
            raise ValueError(f"run_server(mode={mode!r}): the mode is one of {', '.join(MODES)}")
        return mode.lower()


def install() -> Callable[[], None]:
    """Make ``from jupyter_dash import JupyterDash`` give this class; return the undo."""
    module = sys.modules.get("jupyter_dash")
    if module is not None:
        return patch_attribute(module, "JupyterDash", JupyterDash)
    stand_in = types.ModuleType("jupyter_dash", "jupyter_dash's JupyterDash, provided by nbbg")
    stand_in.JupyterDash = JupyterDash  # type: ignore[attr-defined]
    real = importlib.util.find_spec("jupyter_dash")
    if real is not None and real.submodule_search_locations:
        stand_in.__path__ = list(real.submodule_search_locations)
    sys.modules["jupyter_dash"] = stand_in

    def uninstall() -> None:
        if sys.modules.get("jupyter_dash") is stand_in:
            del sys.modules["jupyter_dash"]

    return uninstall
