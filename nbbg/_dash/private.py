"""Every use of a name Dash or Flask keeps private, in one place.

nbbg needs a few of them (Dash has no public way to set an app's manager
after construction, to encode JSON as the renderer expects, or to set up
the callback context in a job process). When Dash changes one, this module
is the only place to look.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def to_json(value: Any) -> str:
    """Encode as Dash encodes a callback's answer (plotly's encoder, orjson when present)."""
    from dash._utils import to_json as dash_to_json

    return str(dash_to_json(value))


def install_callback_context(
    context: dict[str, Any], set_props: Callable[[str, dict[str, Any]], None]
) -> None:
    """Make ``dash.ctx`` and ``dash.set_props`` work inside a job, as Dash's managers do."""
    from dash._callback_context import context_value
    from dash._utils import AttributeDict
    from dash.background_callback._proxy_set_props import ProxySetProps

    callback_context = AttributeDict(**context)
    callback_context.ignore_register_page = False
    callback_context.updated_props = ProxySetProps(set_props)
    context_value.set(callback_context)


def serving_app_id() -> int | None:
    """``id()`` of the Flask server handling the current request, if any."""
    try:
        import flask

        if flask.has_app_context():
            return id(flask.current_app._get_current_object())  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - another backend (Quart, FastAPI): owner unknown
        return None
    return None


def background_manager(app: Any) -> Any:
    """The app's default background-callback manager (None when it has none)."""
    return getattr(app, "_background_manager", None)


def set_background_manager(app: Any, manager: Any) -> None:
    # Dash has no setter; dash.hooks.setup runs after Dash.__init__ assigns it.
    app._background_manager = manager


def progress_key(manager: Any, key: str) -> str:
    """Where a Dash manager stores a job's progress."""
    return str(manager._make_progress_key(key))


def jupyter_runner() -> Any:
    """Dash's notebook runner (``app.run`` in Jupyter goes through its ``run_app``)."""
    from dash._jupyter import jupyter_dash

    return jupyter_dash


def inline_display_slot(runner: Any) -> tuple[Any, str]:
    """Where Dash's notebook runner keeps how it shows an app: ``(owner, attribute)``.

    A static method ``(url, port, mode, width, height)``, called on the class
    (``JupyterDash._display_in_jupyter``), so replacing it means patching the class.
    """
    return type(runner), "_display_in_jupyter"


def notebook_servers() -> dict[tuple[str, int], Any]:
    """The servers Dash's notebook runner has started, by ``(host, port)``."""
    return dict(type(jupyter_runner())._servers)


def set_requests_prefix(app: Any, prefix: str) -> None:
    # Dash locks its config after construction; its own notebook runner
    # writes this key the same way.
    dict.__setitem__(app.config, "requests_pathname_prefix", prefix)
