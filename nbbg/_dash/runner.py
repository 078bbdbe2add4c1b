"""Worker side of a Dash background callback.

Sets up what Dash's own managers set up in their job process: the callback
context (``ctx.triggered_id``, ``set_props``), the ``set_progress`` argument,
``async def`` callbacks and ``PreventUpdate``. Imported by reference in the
worker, so it costs nothing to ship.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from contextvars import copy_context
from typing import Any

from .._engine.channel import JobReporter
from .private import install_callback_context

NO_UPDATE = {"_dash_no_update": "_dash_no_update"}


def run_dash_callback(fn: Callable[..., Any], reporter: JobReporter, call: Any) -> Any:
    """Run ``fn`` as Dash would; ``call`` is ``(args, context, has_progress)``."""
    from dash.exceptions import PreventUpdate

    args, context, has_progress = call
    leading = [reporter.set_progress] if has_progress else []

    def invoke() -> Any:
        install_callback_context(context, reporter.set_props)
        if isinstance(args, dict):
            output = fn(*leading, **args)
        elif isinstance(args, (list, tuple)):
            output = fn(*leading, *args)
        else:
            output = fn(*leading, args)
        if inspect.isawaitable(output):
            output = asyncio.run(_await(output))
        return output

    try:
        return copy_context().run(invoke)
    except PreventUpdate:
        return NO_UPDATE


async def _await(awaitable: Any) -> Any:
    return await awaitable
