"""Ship callbacks to workers once, not on every job.

cloudpickle sends a function defined in a notebook cell *by value*, together
with every global it reads. Doing that per job makes a callback that reads a
100 MB array pay for pickling it on every call. Instead the kernel computes a
cheap *fingerprint* of the function (its identity, code, the identity of the
globals and closure cells it reads, recursively through helper functions) and
pickles it only when the fingerprint is new. Workers keep unpickled functions
by token; the kernel remembers which worker holds which token.

Rebinding a global (``data = load()``) or redefining a function changes the
fingerprint and the new version is shipped. Mutating an object in place
(``data[0] = 1``) does not: call ``restart()`` (``%nbbg restart``) after that.
"""

from __future__ import annotations

import itertools
import pickle
import threading
import types
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from .._errors import UnpicklableCallbackError

_MAX_DEPTH = 4


def _code_global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_global_names(const)
    return names


def _is_by_value(fn: types.FunctionType) -> bool:
    """Whether cloudpickle sends ``fn`` by value (else by module reference)."""
    module = getattr(fn, "__module__", None)
    if module is None or module == "__main__":
        return True
    qualname = getattr(fn, "__qualname__", "")
    return "<locals>" in qualname or "<lambda>" in qualname


def _referenced_values(fn: types.FunctionType) -> list[tuple[str, Any]]:
    """The globals and closure values that pickling ``fn`` would carry."""
    values: list[tuple[str, Any]] = []
    fn_globals = fn.__globals__
    for name in sorted(_code_global_names(fn.__code__)):
        if name in fn_globals:
            values.append((f"global `{name}`", fn_globals[name]))
    if fn.__closure__:
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__, strict=True):
            try:
                values.append((f"closure variable `{name}`", cell.cell_contents))
            except ValueError:  # empty cell
                continue
    for position, value in enumerate(fn.__defaults__ or ()):
        values.append((f"default argument #{position}", value))
    return values


def fingerprint(obj: Any, keep_alive: list[Any], depth: int = 0) -> tuple[Any, ...]:
    """A hashable summary that changes when ``obj`` would pickle differently.

    Every object whose ``id`` enters the fingerprint is appended to
    ``keep_alive``: holding them keeps their ids from being reused while the
    fingerprint is cached.
    """
    keep_alive.append(obj)
    if isinstance(obj, types.MethodType):
        return ("method", fingerprint(obj.__func__, keep_alive, depth), id(obj.__self__))
    if not isinstance(obj, types.FunctionType) or depth > _MAX_DEPTH:
        return ("object", id(obj))
    if not _is_by_value(obj):
        return ("ref", id(obj))
    parts: list[Any] = ["function", id(obj), obj.__code__]
    for _label, value in _referenced_values(obj):
        if isinstance(value, (types.FunctionType, types.MethodType)):
            parts.append(fingerprint(value, keep_alive, depth + 1))
        else:
            keep_alive.append(value)
            parts.append(id(value))
    return tuple(parts)


def _find_unpicklable(fn: Any) -> str | None:
    """Name the first global, closure variable or default that cannot be pickled."""
    if isinstance(fn, types.MethodType):
        fn = fn.__func__
    if not isinstance(fn, types.FunctionType):
        return None
    for label, value in _referenced_values(fn):
        try:
            cloudpickle.dumps(value)
        except Exception:  # noqa: BLE001 - any failure names the culprit
            return label
    return None


def dumps_callable(fn: Callable[..., Any], name: str) -> bytes:
    """Pickle ``fn`` for a worker, or raise an error that names the culprit."""
    try:
        payload: bytes = cloudpickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
        return payload
    except Exception as exc:
        raise UnpicklableCallbackError(name, _find_unpicklable(fn), exc) from exc


@dataclass
class ShippedFunction:
    """One version of a callable, pickled once."""

    token: int
    payload: bytes
    keep_alive: list[Any]


class FunctionRegistry:
    """Fingerprint -> pickled payload, bounded, newest kept.

    When a new version of a function arrives (same function identity or code,
    new globals), older versions of it are dropped at once so stale 100 MB
    globals are not kept alive.
    """

    def __init__(self, max_entries: int = 32) -> None:
        self._entries: OrderedDict[tuple[Any, ...], ShippedFunction] = OrderedDict()
        self._max_entries = max_entries
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()

    def ship(self, fn: Callable[..., Any], name: str) -> ShippedFunction:
        keep_alive: list[Any] = []
        key = fingerprint(fn, keep_alive)
        with self._lock:
            shipped = self._entries.get(key)
            if shipped is not None:
                self._entries.move_to_end(key)
                return shipped
        payload = dumps_callable(fn, name)
        with self._lock:
            shipped = self._entries.get(key)
            if shipped is None:
                self._drop_versions_of(key)
                shipped = ShippedFunction(next(self._tokens), payload, keep_alive)
                self._entries[key] = shipped
                while len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
            return shipped

    def _drop_versions_of(self, key: tuple[Any, ...]) -> None:
        identity = key[:3] if key and key[0] == "function" else None
        if identity is None:
            return
        for old_key in [k for k in self._entries if k[:3] == identity]:
            del self._entries[old_key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
