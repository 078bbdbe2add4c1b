"""nbbg: Dash background callbacks that run well in Jupyter notebooks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._engine.jobs import JobEvent, JobFailure, JobSnapshot, JobState
from ._engine.output import OutputLine
from ._engine.records import JobHistory, JobRecord
from ._errors import (
    BadProgressError,
    ExtensionNotLoadedError,
    JobCancelledError,
    JobFailedError,
    MemoryLimitError,
    ModuleImportError,
    NbbgError,
    NotRerunnableError,
    ObjectChangedError,
    PortInUseError,
    RayNotInstalledError,
    RayTaskLostError,
    RayUnreachableError,
    RayVersionMismatchError,
    ResultEvictedError,
    ShippingError,
    ShutdownError,
    StoreError,
    TemporaryStoreWarning,
    UnknownJobError,
    UnpicklableArgumentsError,
    UnpicklableCallbackError,
    UnpicklableResultError,
    UnreadableResultError,
    WorkerDiedError,
    WrongProcessError,
)

if TYPE_CHECKING:
    from ._dash.loky_manager import LokyManager
    from ._dash.ray_manager import RayManager
    from ._notebook.extension import (
        history,
        kernel_manager,
        load_ipython_extension,
        unload_ipython_extension,
        use_backend,
    )
    from ._notebook.legacy import JupyterDash
    from ._notebook.panel import JobsPanel, panel

__version__ = "0.1.0"

__all__ = [
    "BadProgressError",
    "ExtensionNotLoadedError",
    "JobCancelledError",
    "JobEvent",
    "JobFailedError",
    "JobFailure",
    "JobHistory",
    "JobRecord",
    "JobSnapshot",
    "JobState",
    "JobsPanel",
    "JupyterDash",
    "LokyManager",
    "MemoryLimitError",
    "ModuleImportError",
    "NbbgError",
    "NotRerunnableError",
    "ObjectChangedError",
    "OutputLine",
    "PortInUseError",
    "RayManager",
    "RayNotInstalledError",
    "RayTaskLostError",
    "RayUnreachableError",
    "RayVersionMismatchError",
    "ResultEvictedError",
    "ShippingError",
    "ShutdownError",
    "StoreError",
    "TemporaryStoreWarning",
    "UnknownJobError",
    "UnpicklableArgumentsError",
    "UnpicklableCallbackError",
    "UnpicklableResultError",
    "UnreadableResultError",
    "WorkerDiedError",
    "WrongProcessError",
    "__version__",
    "history",
    "kernel_manager",
    "load_ipython_extension",
    "panel",
    "unload_ipython_extension",
    "use_backend",
]

# Loaded on first use. Worker processes import nbbg (for nbbg._engine.worker) before
# their initializer starts the owner watchdog and ignores SIGINT: importing Dash
# (the manager), IPython and ipywidgets (the notebook layer) there would keep a
# worker of a killed kernel alive, or open to "interrupt kernel", for a second.
_LAZY_NAMES = {
    "LokyManager": "._dash.loky_manager",
    "RayManager": "._dash.ray_manager",
    "use_backend": "._notebook.extension",
    "JobsPanel": "._notebook.panel",
    "panel": "._notebook.panel",
    "JupyterDash": "._notebook.legacy",
    "history": "._notebook.extension",
    "kernel_manager": "._notebook.extension",
    "load_ipython_extension": "._notebook.extension",
    "unload_ipython_extension": "._notebook.extension",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'nbbg' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module_name, __name__), name)
