"""The result store: a ``diskcache.Cache`` shared by the kernel and its workers.

Workers write each job's pickled result under the job's result key; the
kernel reads it when Dash (or ``wait()``) asks. ``cache_by`` entries live here
too, so they survive a kernel restart when the same directory is used.
"""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path
from typing import Any

import diskcache

from ._errors import StoreError

DEFAULT_SIZE_LIMIT = 2**30
"""1 GiB: diskcache evicts the least recently stored entries beyond it."""


def default_store_directory() -> Path:
    """``$XDG_CACHE_HOME/nbbg/store`` (``~/.cache/nbbg/store``), private to the user."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nbbg" / "store"


def _make_private_directory(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o077:
        os.chmod(directory, 0o700)


def open_store(cache: diskcache.Cache | str | os.PathLike[str] | None) -> diskcache.Cache:
    """A ``diskcache.Cache`` from what the user passed (see ``LokyManager``)."""
    if isinstance(cache, diskcache.Cache):
        return cache
    if isinstance(cache, diskcache.FanoutCache):
        raise TypeError(
            "LokyManager(cache=...) takes a diskcache.Cache or a directory path, "
            "not a FanoutCache: pass diskcache.Cache(directory) or the directory"
        )
    if cache is None:
        directory = default_store_directory()
        _make_private_directory(directory)
    elif isinstance(cache, (str, os.PathLike)):
        directory = Path(cache)
        _make_private_directory(directory)
    else:
        raise TypeError(
            f"LokyManager(cache=...) takes a diskcache.Cache or a directory path, "
            f"not {type(cache).__name__}"
        )
    try:
        return diskcache.Cache(str(directory), size_limit=DEFAULT_SIZE_LIMIT)
    except Exception as exc:
        raise StoreError(str(directory), exc) from exc


MISSING = object()


def read_result(store: diskcache.Cache, key: str) -> Any:
    """The unpickled value stored under ``key``, or ``MISSING``."""
    try:
        data = store.get(key, MISSING)
    except Exception as exc:
        raise StoreError(store.directory, exc) from exc
    if data is MISSING:
        return MISSING
    return pickle.loads(data)
