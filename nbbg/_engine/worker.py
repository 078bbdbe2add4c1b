"""What runs inside a loky worker process.

``initialize`` runs once per worker: it ignores SIGINT (a notebook "interrupt
kernel" signals the whole process group and must not kill jobs), lowers the
worker's CPU priority below the kernel's (so Dash's requests, the panel and
the next cell get the CPU first when every core is busy), starts a
watchdog that ends the worker when the kernel that owns it dies, and opens the
progress channel. ``run_job`` runs one job: it puts the worker in the
kernel's state as of the job's submit (environment, directory, ``sys.path``,
reloaded modules: ``_kernel_state``), unpickles the callable from its payload
(cached by token) with its large values from the per-worker object cache or
the shared-memory parcels that came with the job, calls it through the job's
runner, flushes the last progress, writes a large result to the store (a
small one goes back with the outcome, for the kernel to store: ``write_behind``)
and reports how the job ended, with the CPU time and memory it took. The
callable is unpickled afresh for every job, so values it carries inline
(small lists, dicts) never keep a previous job's edits.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import cloudpickle
from cachetools import LRUCache

from .._errors import ModuleImportError, StoreError, UnpicklableResultError
from . import parcels as _parcels
from .capture import capturing, install_capture
from .channel import JobReporter, ProgressSender
from .jobs import JobFailure
from .kernel_state import ImportedFiles, KernelState
from .kernel_state import environ_data as _environ_data
from .object_cache import ObjectCache, persistent_load
from .platform import lower_priority, resident_memory, unblock_sigint
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
    kernel: KernelState | None = None
    objects: tuple[tuple[bytes, int], ...] = ()  # (digest, size) of the large values
    parcels: dict[bytes, _parcels.ParcelRef] | None = None  # those the worker lacks
    environ: dict[str, str] | None = None  # sent when the worker lacks this environment
    drops: tuple[bytes, ...] = ()  # superseded objects to drop from the cache
    result_inline_limit: int = 0
    """A pickled result up to this size goes back with the outcome, for the kernel to store."""


@dataclass
class WorkerOutcome:
    """How a job ended in its worker: a message, filled in once by ``run_job``."""

    kind: Literal["ok", "error", "missing"]
    messages_sent: int = 0
    failure: JobFailure | None = None
    missing: tuple[bytes, ...] = ()  # digests of large values the worker lacks
    missing_function: bool = False
    missing_environ: bool = False
    result: bytes | None = None  # the pickled result, when the kernel stores it
    cpu_time: float | None = None
    """CPU seconds the worker process spent from receiving the job to its outcome."""
    memory: int | None = None
    """The worker's resident memory (bytes) at the job's end."""


class Sender(Protocol):
    """Where a job's reports go: the kernel's socket (loky) or the task's stream (Ray)."""

    def begin(self, job_id: str) -> JobReporter: ...

    def end(self, reporter: JobReporter) -> int: ...


class _WorkerState:
    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.payloads: LRUCache[int, bytes] = LRUCache(FUNCTION_CACHE_SIZE)
        self.objects: ObjectCache[_parcels.Received] = ObjectCache()
        self.stores: dict[str, Store] = {}
        self.environ_token = 0
        self.environ: dict[str, str] = {}
        self.environ_data: Any = None  # os.environ's raw dict as last applied
        self.module_generations: dict[str, int] = {}
        self.imported_files = ImportedFiles()


_state: _WorkerState | None = None


def _watch_owner(owner_pid: int) -> None:
    while True:
        time.sleep(WATCHDOG_INTERVAL)
        if os.getppid() != owner_pid:
            os._exit(0)


def initialize(owner_pid: int, channel_address: Any, authkey: bytes, nice: int, token: str) -> None:
    global _state
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The kernel spawned us with SIGINT blocked; a pending one is now dropped.
    unblock_sigint()
    lower_priority(nice)  # the kernel did already, unless it came too late
    threading.Thread(
        target=_watch_owner, args=(owner_pid,), name="nbbg-watchdog", daemon=True
    ).start()
    _state = _WorkerState(ProgressSender(channel_address, authkey, token))
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
        _state.imported_files = ImportedFiles()  # what warm-up imported is not the jobs'


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


def _missing(state: _WorkerState, spec: JobSpec) -> WorkerOutcome | None:
    """What the kernel believed this worker held but it does not (None: all there)."""
    parcels = spec.parcels or {}
    missing = tuple(d for d, _ in spec.objects if d not in state.objects and d not in parcels)
    missing_function = spec.payload is None and spec.token not in state.payloads
    missing_environ = (
        spec.kernel is not None
        and spec.environ is None
        and spec.kernel.environ_token != state.environ_token
    )
    if missing or missing_function or missing_environ:
        return WorkerOutcome(
            "missing",
            missing=missing,
            missing_function=missing_function,
            missing_environ=missing_environ,
        )
    return None


def _function(state: _WorkerState, spec: JobSpec) -> Callable[..., Any]:
    """Unpickle the job's callable, its large values from the cache or the parcels."""
    parcels = spec.parcels or {}
    for digest in spec.drops:
        state.objects.discard(digest)
    state.objects.use(
        (digest, size, _parcels.Received(parcels[digest]) if digest in parcels else None)
        for digest, size in spec.objects
    )
    if spec.payload is not None:
        state.payloads[spec.token] = spec.payload
    payload = state.payloads[spec.token]  # the kernel's mirror uses it in the same order
    rebuilt: dict[bytes, Any] = {}  # one object per digest within a job

    def rebuild(digest: bytes) -> Any:
        if digest not in rebuilt:
            received = state.objects.get(digest)
            if received is None:
                raise KeyError(f"object {digest.hex()} missing from the worker's cache")
            rebuilt[digest] = received.value()
        return rebuilt[digest]

    unpickler = pickle.Unpickler(io.BytesIO(payload))
    unpickler.persistent_load = persistent_load(rebuild)  # type: ignore[method-assign]
    fn: Callable[..., Any] = unpickler.load()
    return fn


def _apply_kernel_state(state: _WorkerState, spec: JobSpec) -> None:
    """Give the job the kernel's environment, directory, sys.path and module versions."""
    kernel = spec.kernel
    if kernel is None:
        return
    if spec.environ is not None:
        state.environ, state.environ_token = spec.environ, kernel.environ_token
        state.environ_data = None  # apply it below
    if _environ_data() != state.environ_data:  # changed by the kernel, or by the previous job
        os.environ.clear()
        os.environ.update(state.environ)
        state.environ_data = dict(_environ_data())
    if list(kernel.sys_path) != sys.path:
        sys.path[:] = kernel.sys_path
        importlib.invalidate_caches()
    if kernel.cwd and os.getcwd() != kernel.cwd:
        os.chdir(kernel.cwd)
    for name, generation in kernel.local_modules:
        module = sys.modules.get(name)
        if module is None or generation == 0:
            continue  # never reloaded by the kernel: the copy here is as good
        if state.module_generations.get(name) != generation:
            # The kernel reloaded it since this worker imported it.
            state.module_generations[name] = generation
            _reload(spec, name)
    for name in state.imported_files.changed({name for name, _ in kernel.local_modules}):
        _reload(spec, name)


def _reload(spec: JobSpec, name: str) -> None:
    try:
        importlib.reload(sys.modules[name])
    except ImportError as exc:
        raise ModuleImportError(spec.name, name, sys.path, exc) from exc


def _note_imported_modules(state: _WorkerState, spec: JobSpec) -> None:
    """Modules the job imported come from disk: as current as the kernel's reload."""
    if spec.kernel is not None:
        for name, generation in spec.kernel.local_modules:
            if name in sys.modules:
                state.module_generations.setdefault(name, generation)
    state.imported_files.note_new_imports()


def _store(state: _WorkerState, directory: str) -> Store:
    store = state.stores.get(directory)
    if store is None:
        store = Store(directory)  # no settings: keep the ones the kernel wrote
        state.stores[directory] = store
    return store


def pickle_result(spec: JobSpec, value: Any) -> bytes | JobFailure:
    try:
        data: bytes = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - any pickling failure
        error = UnpicklableResultError(spec.name, exc)
        return JobFailure(str(error), _format_traceback(exc))
    return data


def _save_result(state: _WorkerState, spec: JobSpec, value: Any) -> JobFailure | bytes | None:
    """Write the result to the store; a small one is returned instead, for the kernel to store."""
    data = pickle_result(spec, value)
    if isinstance(data, JobFailure) or len(data) <= spec.result_inline_limit:
        return data
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


Saver = Callable[[_WorkerState, JobSpec, Any], "JobFailure | bytes | None"]
"""Keeps a job's result: a failure if it could not, the pickled result for the outcome."""


def serve_jobs() -> None:
    """Run the jobs the kernel writes to this worker's socket, one at a time, for ever.

    loky runs this as one long task after ``warm_up``: each job then costs one
    write and one read on the socket, and none of loky's per-task threads in
    the kernel. The worker ends when it is killed (cancel) or the kernel is gone.
    """
    state = _state
    assert state is not None, "nbbg worker used without its initializer"
    sender = state.sender
    assert isinstance(sender, ProgressSender)
    while True:
        data = sender.receive()
        try:
            spec: JobSpec = pickle.loads(data)
        except Exception as exc:  # noqa: BLE001 - e.g. a class the worker cannot import
            message = f"the job could not be read in the worker: {describe_exception(exc)}"
            failure = JobFailure(message, _format_traceback(exc))
            sender.send_outcome("", WorkerOutcome("error", 0, failure))
            continue
        outcome = run_job(spec)
        result, outcome.result = outcome.result, None  # it travels beside the outcome
        sender.send_outcome(spec.job_id, outcome, result)


def run_job(spec: JobSpec, save: Saver = _save_result) -> WorkerOutcome:
    """Run one job; ``save`` keeps its result (into the store, by default).

    The outcome says what the job cost the worker: its CPU time, counted here
    rather than by the kernel's sampler (which would read two ``/proc`` files
    from the kernel's side at every job's end), and its memory at the end.
    """
    started = time.process_time()
    outcome = _run_job(spec, save)
    if outcome.kind == "missing":
        return outcome
    outcome.cpu_time = time.process_time() - started
    outcome.memory = resident_memory()
    return outcome


def _run_job(spec: JobSpec, save: Saver) -> WorkerOutcome:
    state = _state
    assert state is not None, "nbbg worker used without its initializer"
    missing = _missing(state, spec)
    if missing is not None:
        return missing
    try:
        _apply_kernel_state(state, spec)
        fn = _function(state, spec)
        call = cloudpickle.loads(spec.args_payload)
    except ImportError as exc:
        error = exc if isinstance(exc, ModuleImportError) else None
        if error is None:
            error = ModuleImportError(spec.name, exc.name, sys.path, exc)
        return WorkerOutcome("error", 0, JobFailure(str(error), _format_traceback(exc)))
    except Exception as exc:  # noqa: BLE001 - e.g. the kernel's directory is gone here
        message = f"`{spec.name}` could not be set up in the worker: {describe_exception(exc)}"
        return WorkerOutcome("error", 0, JobFailure(message, _format_traceback(exc)))
    reporter = state.sender.begin(spec.job_id)
    failure: JobFailure | None = None
    value: Any = None
    try:
        with capturing(reporter.output):
            value = spec.runner(fn, reporter, call)
    except BaseException as exc:  # noqa: BLE001 - the job's own errors, SystemExit included
        failure = JobFailure(describe_exception(exc), _format_traceback(exc))
    finally:
        _note_imported_modules(state, spec)
    messages_sent = state.sender.end(reporter)
    if failure is not None:
        return WorkerOutcome("error", messages_sent, failure)
    saved = save(state, spec, value)
    if isinstance(saved, JobFailure):
        return WorkerOutcome("error", messages_sent, saved)
    return WorkerOutcome("ok", messages_sent, result=saved)
