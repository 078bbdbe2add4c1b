"""What runs inside a loky worker process.

``initialize`` runs once per worker: it ignores SIGINT (a notebook "interrupt
kernel" signals the whole process group and must not kill jobs), lowers the
worker's CPU priority below the kernel's (so Dash's requests, the panel and
the next cell get the CPU first when every core is busy), starts a
watchdog that ends the worker when the kernel that owns it dies, and opens the
progress channel. ``run_job`` runs one job: it takes the callable from the
per-worker cache (or unpickles the payload that came with the job), calls it
through the job's runner, flushes the last progress, writes the result to the
store and reports how the job ended.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import cloudpickle

from .._errors import StoreError, UnpicklableResultError
from .capture import capturing, install_capture
from .channel import JobReporter, ProgressSender
from .jobs import JobFailure
from .platform import lower_priority, unblock_sigint
from .store import Store

FUNCTION_CACHE_SIZE = 32
WATCHDOG_INTERVAL = 0.2

Runner = Callable[[Callable[..., Any], JobReporter, Any], Any]


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to run one job (small, except a first payload)."""

    job_id: str
    name: str
    token: int
    payload: bytes | None
    runner: Runner
    args_payload: bytes
    store_directory: str
    result_key: str
    expire: float | None


@dataclass(frozen=True)
class WorkerOutcome:
    kind: Literal["ok", "error", "missing_function"]
    messages_sent: int = 0
    failure: JobFailure | None = None


class _WorkerState:
    def __init__(self, sender: ProgressSender) -> None:
        self.sender = sender
        self.functions: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self.stores: dict[str, Store] = {}


_state: _WorkerState | None = None


def _watch_owner(owner_pid: int) -> None:
    while True:
        time.sleep(WATCHDOG_INTERVAL)
        if os.getppid() != owner_pid:
            os._exit(0)


def initialize(owner_pid: int, channel_address: Any, authkey: bytes) -> None:
    global _state
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The kernel spawned us with SIGINT blocked; a pending one is now dropped.
    unblock_sigint()
    lower_priority()
    threading.Thread(
        target=_watch_owner, args=(owner_pid,), name="nbbg-watchdog", daemon=True
    ).start()
    _state = _WorkerState(ProgressSender(channel_address, authkey))
    install_capture()  # the job's print/logging/warnings go to the job (capture.py)


def in_worker() -> bool:
    """Whether this process is an nbbg worker (its initializer has run)."""
    return _state is not None


def warm_up(modules: tuple[str, ...], store_directory: str) -> None:
    """Import what jobs will need and open the store, so the first job does not pay for it.

    IPython is hidden meanwhile: dash imports it for its notebook display,
    which a worker never uses, at ~200 ms and ~28 MiB per worker (measured by
    bench/). Jobs can still import IPython themselves.
    """
    hide_ipython = "IPython" not in sys.modules
    if hide_ipython:
        sys.modules["IPython"] = None  # type: ignore[assignment]  # "import IPython" raises
    try:
        for module in modules:
            importlib.import_module(module)
    finally:
        if hide_ipython and "IPython" in sys.modules and sys.modules["IPython"] is None:
            del sys.modules["IPython"]
    if _state is not None:
        _store(_state, store_directory)


def call_plain(fn: Callable[..., Any], reporter: JobReporter, call: Any) -> Any:
    """The default runner: ``fn(*args, **kwargs)``."""
    args, kwargs = call
    return fn(*args, **kwargs)


def describe_exception(exc: BaseException) -> str:
    """``Type: message``, even when the exception's ``str()`` itself raises."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001
        text = "<the exception's message could not be produced: str() raised>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _format_traceback(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(exc))
    except Exception:  # noqa: BLE001 - str() of the exception may raise
        return "".join(traceback.format_tb(exc.__traceback__)) + describe_exception(exc)


def _function(state: _WorkerState, spec: JobSpec) -> Callable[..., Any] | None:
    fn: Callable[..., Any] | None
    if spec.payload is not None:
        fn = cloudpickle.loads(spec.payload)
        state.functions[spec.token] = fn
    else:
        fn = state.functions.get(spec.token)
        if fn is None:
            return None
    state.functions.move_to_end(spec.token)
    while len(state.functions) > FUNCTION_CACHE_SIZE:
        state.functions.popitem(last=False)
    return fn


def _store(state: _WorkerState, directory: str) -> Store:
    store = state.stores.get(directory)
    if store is None:
        store = Store(directory)  # no settings: keep the ones the kernel wrote
        state.stores[directory] = store
    return store


def _save_result(state: _WorkerState, spec: JobSpec, value: Any) -> JobFailure | None:
    try:
        data = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - any pickling failure
        error = UnpicklableResultError(spec.name, exc)
        return JobFailure(str(error), _format_traceback(exc))
    store = None
    try:
        # Store the pickled bytes so that diskcache never needs to pickle.
        store = _store(state, spec.store_directory)
        store.set(spec.result_key, data, expire=spec.expire, tag="nbbg")
    except Exception as exc:  # noqa: BLE001 - disk full, corrupt database, ...
        if store is not None:
            store.recover(exc)  # so that the next job finds a working store
        return JobFailure(str(StoreError(spec.store_directory, exc)), _format_traceback(exc))
    return None


def run_job(spec: JobSpec) -> WorkerOutcome:
    state = _state
    assert state is not None, "nbbg worker used without its initializer"
    fn = _function(state, spec)
    if fn is None:
        return WorkerOutcome("missing_function")
    reporter = state.sender.begin(spec.job_id)
    failure: JobFailure | None = None
    value: Any = None
    try:
        call = cloudpickle.loads(spec.args_payload)
        with capturing(reporter.output):
            value = spec.runner(fn, reporter, call)
    except BaseException as exc:  # noqa: BLE001 - the job's own errors, SystemExit included
        failure = JobFailure(describe_exception(exc), _format_traceback(exc))
    messages_sent = state.sender.end(reporter)
    if failure is None:
        failure = _save_result(state, spec, value)
    if failure is not None:
        return WorkerOutcome("error", messages_sent, failure)
    return WorkerOutcome("ok", messages_sent)
