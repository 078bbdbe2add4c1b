"""Ship callbacks to workers with the objects they read, as they are now.

At every submit the kernel walks the callable as cloudpickle would send it (a
function defined in the notebook goes by value, with the globals, closure
cells and default arguments it reads, recursively through helper functions)
and takes a *content* digest of each value it reads (``_content``): an object
edited in place gets a new digest, so the job sees the edit.

The callable is then pickled once per version (its *key*: code identities plus
value digests) with the small values inline and each large value (buffers, or
a stream of 64 KiB or more) replaced by a reference to its digest. Workers keep
large values by digest (``_object_cache``) and receive only those they lack,
through shared memory (``_parcels``). The kernel keeps digests and small
payloads, never a pickled copy of a large value.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import pickle
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
from cachetools import LRUCache

from .._errors import UnpicklableCallbackError
from .content import Pickled, pickled
from .kernel_state import KernelState
from .object_cache import PERSISTENT_TAG
from .parcels import Parcel, parcel_for, shelved

_MAX_DEPTH = 16
EXTERNAL_MIN_BYTES = 64 * 1024
"""A value whose pickle is this large (or has buffers) is shipped on its own, by digest."""

_SMALL_ATOMS = (int, float, complex, bool, str, bytes, type(None))

try:  # cloudpickle's own rule for "by reference", so the walk follows what it sends
    from cloudpickle.cloudpickle import _should_pickle_by_reference
except ImportError:  # pragma: no cover - a cloudpickle without it
    _should_pickle_by_reference = None


def _code_global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_global_names(const)
    return names


def _is_by_value(fn: types.FunctionType) -> bool:
    """Whether cloudpickle sends ``fn`` by value (else by module reference)."""
    if _should_pickle_by_reference is not None:
        with contextlib.suppress(Exception):  # else the simple rule below
            return not _should_pickle_by_reference(fn)
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
    for name, value in (fn.__kwdefaults__ or {}).items():
        values.append((f"default argument `{name}`", value))
    return values


@dataclass(frozen=True)
class ObjectRef:
    """A large value a job reads, shipped on its own."""

    digest: bytes
    label: str
    size: int


class _Walk:
    """One fingerprint of a callable: its key, and the large values it reads."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.keep_alive: list[Any] = []  # objects whose id() is in the key
        self.external: dict[int, tuple[Pickled, str, Any]] = {}
        self.seen: set[int] = set()  # by-value functions walked

    def callable(self, obj: Any, depth: int = 0) -> tuple[Any, ...]:
        self.keep_alive.append(obj)
        if isinstance(obj, types.MethodType):
            owner = self.value(obj.__self__, "the object of the bound method")
            return ("method", self.callable(obj.__func__, depth), owner)
        if not isinstance(obj, types.FunctionType):
            return ("callable", self.value(obj, f"callback `{self.name}`"))
        if not _is_by_value(obj):
            return ("ref", id(obj))
        if id(obj) in self.seen:  # recursion, or a helper reached twice: its values are in
            return ("again", id(obj))
        if depth > _MAX_DEPTH:  # a very deep chain of helpers: digest all of it
            return ("deep", self.value(obj, f"helper function `{obj.__qualname__}`"))
        self.seen.add(id(obj))
        parts: list[Any] = ["function", id(obj), obj.__code__]
        for label, value in _referenced_values(obj):
            if isinstance(value, (types.FunctionType, types.MethodType)):
                parts.append(self.callable(value, depth + 1))
            else:
                parts.append(self.value(value, label))
        return tuple(parts)

    def value(self, value: Any, label: str) -> Any:
        """The key part of one value: itself if a small atom, else its content digest."""
        kind = type(value)
        if kind in _SMALL_ATOMS and (kind not in (str, bytes) or len(value) < 256):
            return (kind, value)
        if isinstance(value, types.ModuleType):
            self.keep_alive.append(value)
            return ("module", id(value))  # by reference; reloads are followed apart
        for attempt in range(3):
            try:
                content = pickled(value)
                break
            except RuntimeError as exc:  # "changed size during iteration": another
                if attempt == 2:  # thread (a cell) edits it right now; try again
                    raise UnpicklableCallbackError(self.name, label, exc) from exc
            except Exception as exc:
                raise UnpicklableCallbackError(self.name, label, exc) from exc
        if content.buffers or len(content.inband) >= EXTERNAL_MIN_BYTES:
            self.external[id(value)] = (content, label, value)
            return ("object", content.digest)
        return ("value", content.digest)


class _ShippingPickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle is untyped
    """cloudpickle, with each large value replaced by a reference to its digest."""

    def __init__(self, stream: io.BytesIO, external: dict[int, tuple[Pickled, str, Any]]) -> None:
        super().__init__(stream, protocol=pickle.HIGHEST_PROTOCOL)
        self._external = external

    def persistent_id(self, obj: Any) -> Any:
        entry = self._external.get(id(obj))
        if entry is None:
            return None
        return (PERSISTENT_TAG, entry[0].digest)


def _dumps(fn: Callable[..., Any], walk: _Walk) -> bytes:
    stream = io.BytesIO()
    try:
        _ShippingPickler(stream, walk.external).dump(fn)
    except Exception as exc:
        raise UnpicklableCallbackError(walk.name, _find_unpicklable(fn), exc) from exc
    return stream.getvalue()


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


@dataclass
class ShippedFunction:
    """One version of a callable: its token and small payload (large values by digest)."""

    token: int
    payload: bytes
    objects: tuple[ObjectRef, ...]
    keep_alive: list[Any]
    replaces: tuple[bytes, ...] = ()
    """Digests of the previous version's large values that this one no longer reads:
    a worker may drop them (an array edited ten times is not kept ten times)."""


@dataclass
class Cargo:
    """What one job needs sent to whichever worker takes it.

    ``values`` holds this submit's large values (the objects themselves, not
    copies) and ``parcels`` their snapshots for workers that lack them; both
    are let go when the job ends.
    """

    function: ShippedFunction
    kernel: KernelState
    environ: dict[str, str]
    values: dict[bytes, tuple[Pickled | None, str, Any]] = field(default_factory=dict)
    parcels: dict[bytes, Parcel] = field(default_factory=dict)
    resends: int = 0

    def snapshot(self, digest: bytes) -> Parcel | None:
        """The submit-time snapshot of one value, made now if still unchanged."""
        parcel = self.parcels.get(digest) or shelved(digest)
        if parcel is not None:
            self.parcels[digest] = parcel
            return parcel
        entry = self.values.get(digest)
        if entry is None:
            return None
        content, _label, value = entry
        if content is None:  # dropped after submit: is the object still as it was?
            try:
                content = pickled(value)
            except Exception:  # noqa: BLE001 - changed into something unpicklable
                return None
            if content.digest != digest:
                return None
        parcel = self.parcels[digest] = parcel_for(content)
        return parcel

    def forget_streams(self) -> None:
        """Drop this submit's pickle streams (buffer views keep memory alive)."""
        for digest, (_content, label, value) in list(self.values.items()):
            self.values[digest] = (None, label, value)

    def release(self, *, background: bool = True) -> None:
        for parcel in self.parcels.values():
            parcel.release(background=background)
        self.parcels.clear()
        self.values.clear()


class FunctionRegistry:
    """Key (code identities + value digests) -> small payload, bounded, newest kept.

    When a new version of a function arrives (same function identity, new
    values), older versions of it are dropped at once.
    """

    def __init__(self, max_entries: int = 32) -> None:
        self._entries: LRUCache[tuple[Any, ...], ShippedFunction] = LRUCache(max_entries)
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()
        # (module, qualname) -> digests of the large values its newest version reads
        self._latest_objects: LRUCache[tuple[Any, Any], tuple[bytes, ...]] = LRUCache(
            4 * max_entries
        )

    def ship(
        self, fn: Callable[..., Any], name: str
    ) -> tuple[ShippedFunction, dict[bytes, tuple[Pickled | None, str, Any]]]:
        """The callable's current version and its large values (digest -> stream, label, value)."""
        walk = _Walk(name)
        key = walk.callable(fn)
        values: dict[bytes, tuple[Pickled | None, str, Any]] = {
            content.digest: (content, label, value)
            for content, label, value in walk.external.values()
        }
        with self._lock:
            shipped = self._entries.get(key)
            if shipped is not None:
                return shipped, values
        payload = _dumps(fn, walk)
        objects = tuple(
            {
                content.digest: ObjectRef(content.digest, label, content.size)
                for content, label, _ in walk.external.values()
            }.values()
        )
        with self._lock:
            shipped = self._entries.get(key)
            if shipped is None:
                self._drop_versions_of(key)
                current = tuple(ref.digest for ref in objects)
                name_key = (getattr(fn, "__module__", None), getattr(fn, "__qualname__", name))
                previous = self._latest_objects.pop(name_key, ())
                self._latest_objects[name_key] = current
                replaces = tuple(d for d in previous if d not in current)
                shipped = ShippedFunction(
                    next(self._tokens), payload, objects, walk.keep_alive, replaces
                )
                self._entries[key] = shipped
            return shipped, values

    def _drop_versions_of(self, key: tuple[Any, ...]) -> None:
        identity = key[:3] if key and key[0] == "function" else None
        if identity is None:
            return
        for old_key in [k for k in self._entries if k[:3] == identity]:
            del self._entries[old_key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
