"""The parts of the kernel a job must see besides its callback's objects.

A fork would give a job the kernel's environment variables, current
directory, ``sys.path`` and the code of the modules as last (re)loaded. Warm
workers started earlier, so each job carries them: ``KernelState`` is a small
snapshot taken at submit, and the worker applies it before the callback runs
(and again before the next job, so a job that changes its own environment or
directory does not leak into the next one).

The environment travels only when it changed (by token); local modules the
kernel has reloaded (``importlib.reload``, ``%autoreload``) travel as
(name, generation), and the worker reloads its copy when its generation is
older. Modules from the standard library and site-packages are not followed:
they do not change while a kernel runs.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class KernelState:
    environ_token: int
    cwd: str
    sys_path: tuple[str, ...]
    reloaded_modules: tuple[tuple[str, int], ...]


def environ_data() -> dict[bytes, bytes] | dict[str, str]:
    # os.environ decodes every item on iteration; its raw dict compares in ~2 us.
    return getattr(os.environ, "_data", None) or dict(os.environ)


def _installed_prefixes() -> tuple[str, ...]:
    paths = set(sysconfig.get_paths().values())
    paths.update(getattr(site, "getsitepackages", list)())
    paths.add(site.getusersitepackages())
    paths.update({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix})
    return tuple(sorted(os.path.join(os.path.realpath(p), "") for p in paths if p))


@dataclass
class _Module:
    module: ModuleType
    spec: Any
    generation: int = 0


class KernelStateTracker:
    """Takes ``KernelState`` snapshots cheaply (a few us when nothing changed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._environ_seen: Any = None
        self._environ_token = 0
        self._environs: dict[int, dict[str, str]] = {}
        self._prefixes = _installed_prefixes()
        self._modules_seen: tuple[int, str | None] = (-1, None)
        self._local: dict[str, _Module] = {}
        self._reloaded: dict[str, int] = {}
        self._reloaded_tuple: tuple[tuple[str, int], ...] = ()

    def snapshot(self) -> KernelState:
        with self._lock:
            environ_token = self._environ()
            reloaded = self._reloaded_modules()
        return KernelState(environ_token, os.getcwd(), tuple(sys.path), reloaded)

    def environ(self, token: int) -> dict[str, str]:
        """The environment of a snapshot (kept for the newest few tokens)."""
        with self._lock:
            return self._environs[token]

    def _environ(self) -> int:
        data = environ_data()
        if data != self._environ_seen:
            self._environ_seen = dict(data)
            self._environ_token += 1
            self._environs[self._environ_token] = dict(os.environ)
            for old in [t for t in self._environs if t < self._environ_token - 64]:
                del self._environs[old]
        return self._environ_token

    def _reloaded_modules(self) -> tuple[tuple[str, int], ...]:
        modules = sys.modules
        seen = (len(modules), next(reversed(modules), None))
        if seen != self._modules_seen:  # modules were imported or removed
            self._modules_seen = seen
            self._find_local_modules()
        changed = False
        for name, entry in self._local.items():
            module = modules.get(name)
            if module is None:
                continue
            if module is not entry.module or module.__spec__ is not entry.spec:
                # importlib.reload gives the module a new spec; a re-import a new module
                entry.module, entry.spec = module, module.__spec__
                entry.generation += 1
                self._reloaded[name] = entry.generation
                changed = True
        if changed:
            self._reloaded_tuple = tuple(self._reloaded.items())
        return self._reloaded_tuple

    def _find_local_modules(self) -> None:
        for name, module in list(sys.modules.items()):
            if name in self._local or not isinstance(module, ModuleType):
                continue
            if self._is_local(name, module):
                self._local[name] = _Module(module, module.__spec__)

    def _is_local(self, name: str, module: ModuleType) -> bool:
        """A module from a file of the user's (not the stdlib, site-packages or nbbg)."""
        if name == "__main__" or name.split(".")[0] == "nbbg":
            return False
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not path.endswith(".py"):
            return False
        return not os.path.realpath(path).startswith(self._prefixes)
