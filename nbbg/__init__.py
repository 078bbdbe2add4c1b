"""nbbg: Dash background callbacks that run well in Jupyter notebooks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import (
    BadProgressError,
    JobCancelledError,
    JobFailedError,
    ModuleImportError,
    NbbgError,
    ObjectChangedError,
    PortInUseError,
    ShippingError,
    ShutdownError,
    StoreError,
    UnknownJobError,
    UnpicklableArgumentsError,
    UnpicklableCallbackError,
    UnpicklableResultError,
    UnreadableResultError,
    WorkerDiedError,
)
from ._jobs import JobEvent, JobFailure, JobSnapshot, JobState

if TYPE_CHECKING:
    from ._engine import Engine, WorkerInfo
    from ._extension import kernel_manager, load_ipython_extension, unload_ipython_extension
    from ._legacy import JupyterDash
    from ._manager import LokyManager
    from ._panel import JobsPanel, panel

__version__ = "0.1.0"

__all__ = [
    "BadProgressError",
    "Engine",
    "JobCancelledError",
    "JobEvent",
    "JobFailedError",
    "JobFailure",
    "JobSnapshot",
    "JobState",
    "JobsPanel",
    "JupyterDash",
    "LokyManager",
    "ModuleImportError",
    "NbbgError",
    "ObjectChangedError",
    "PortInUseError",
    "ShippingError",
    "ShutdownError",
    "StoreError",
    "UnknownJobError",
    "UnpicklableArgumentsError",
    "UnpicklableCallbackError",
    "UnpicklableResultError",
    "UnreadableResultError",
    "WorkerDiedError",
    "WorkerInfo",
    "__version__",
    "kernel_manager",
    "load_ipython_extension",
    "panel",
    "unload_ipython_extension",
]

# Loaded on first use. Worker processes import nbbg (for nbbg._worker) before
# their initializer starts the owner watchdog and ignores SIGINT: importing Dash
# (the manager), IPython and ipywidgets (the notebook layer) there would keep a
# worker of a killed kernel alive, or open to "interrupt kernel", for a second.
_LAZY_NAMES = {
    "Engine": "._engine",
    "WorkerInfo": "._engine",
    "LokyManager": "._manager",
    "JobsPanel": "._panel",
    "panel": "._panel",
    "JupyterDash": "._legacy",
    "kernel_manager": "._extension",
    "load_ipython_extension": "._extension",
    "unload_ipython_extension": "._extension",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'nbbg' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module_name, __name__), name)
