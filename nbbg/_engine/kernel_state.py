"""The parts of the kernel a job must see besides its callback's objects.

A fork would give a job the kernel's environment variables, current
directory, ``sys.path`` and the code of the modules as last (re)loaded. Warm
workers started earlier, so each job carries them: ``KernelState`` is a small
snapshot taken at submit, and the worker applies it before the callback runs
(and again before the next job, so a job that changes its own environment or
directory does not leak into the next one).

The environment travels only when it changed (by token). Local modules (files
of the user's, not the standard library or site-packages, which do not change
while a kernel runs) follow one of two rules:

- a module the kernel has imported travels as (name, generation); the
  generation goes up each time the kernel reloads it (``importlib.reload``,
  ``%autoreload``), and a worker whose copy is older reloads it;
- a module only jobs imported follows its file, as a fork importing it would:
  the worker reloads it when the file changed since (``ImportedFiles``).
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
    local_modules: tuple[tuple[str, int], ...]  # (name, reload generation)


def environ_data() -> dict[bytes, bytes] | dict[str, str]:
    # os.environ decodes every item on iteration; its raw dict compares in ~2 us.
    return getattr(os.environ, "_data", None) or dict(os.environ)


def is_local_module(name: str, module: object, installed: tuple[str, ...]) -> bool:
    """A module from a file of the user's (not the stdlib, site-packages or nbbg)."""
    if name == "__main__" or name.split(".")[0] == "nbbg" or not isinstance(module, ModuleType):
        return False
    path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py"):
        return False
    # A string test, no syscall: ``installed`` holds each prefix as given and resolved.
    return not path.startswith(installed)


def installed_prefixes() -> tuple[str, ...]:
    paths = set(sysconfig.get_paths().values())
    paths.update(getattr(site, "getsitepackages", list)())
    paths.add(site.getusersitepackages())
    paths.update({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix})
    paths.update(os.path.realpath(p) for p in list(paths) if p)
    return tuple(sorted(os.path.join(p, "") for p in paths if p))


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
        self._prefixes = installed_prefixes()
        self._modules_seen: tuple[int, str | None] = (-1, None)
        self._local: dict[str, _Module] = {}
        self._classified: set[str] = set()  # names already looked at
        self._local_tuple: tuple[tuple[str, int], ...] = ()

    def snapshot(self) -> KernelState:
        with self._lock:
            environ_token = self._environ()
            local = self._local_modules()
        try:
            cwd = os.getcwd()
        except OSError:  # the kernel's directory was deleted: the worker keeps its own
            cwd = ""
        return KernelState(environ_token, cwd, tuple(sys.path), local)

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

    def _local_modules(self) -> tuple[tuple[str, int], ...]:
        modules = sys.modules
        seen = (len(modules), next(reversed(modules), None))
        changed = False
        if seen != self._modules_seen:  # modules were imported or removed
            self._modules_seen = seen
            changed = self._find_local_modules()
        for name, entry in self._local.items():
            module = modules.get(name)
            if module is None:
                continue
            if module is not entry.module or module.__spec__ is not entry.spec:
                # importlib.reload gives the module a new spec; a re-import a new module
                entry.module, entry.spec = module, module.__spec__
                entry.generation += 1
                changed = True
        if changed:
            self._local_tuple = tuple((n, e.generation) for n, e in self._local.items())
        return self._local_tuple

    def _find_local_modules(self) -> bool:
        found = False
        for name, module in list(sys.modules.items()):
            if name in self._classified:
                continue
            self._classified.add(name)
            if is_local_module(name, module, self._prefixes):
                assert isinstance(module, ModuleType)
                self._local[name] = _Module(module, module.__spec__)
                found = True
        return found


class ImportedFiles:
    """Worker side: local modules that jobs imported and the kernel has not.

    A fork would import such a module afresh from its file, so the worker
    reloads its copy when the file changed since it was (re)loaded.
    """

    def __init__(self) -> None:
        self._installed: tuple[str, ...] | None = None  # sysconfig costs ~1 MiB: only if needed
        self._known = set(sys.modules)  # imported before any job (warm-up): not jobs'
        self._count = len(sys.modules)
        self._files: dict[str, tuple[str, int, int]] = {}  # name -> (path, mtime_ns, size)

    def note_new_imports(self) -> None:
        if len(sys.modules) == self._count:
            return
        self._count = len(sys.modules)
        for name, module in list(sys.modules.items()):
            if name in self._known:
                continue
            self._known.add(name)
            if self._installed is None:
                self._installed = installed_prefixes()
            if is_local_module(name, module, self._installed):
                path = getattr(module, "__file__", "")
                self._files[name] = (path, *_stat(path))

    def changed(self, kernel_modules: set[str]) -> list[str]:
        """Modules to reload: their file changed and the kernel does not own them."""
        changed = []
        for name, (path, mtime, size) in self._files.items():
            if name not in kernel_modules and name in sys.modules and _stat(path) != (mtime, size):
                changed.append(name)
                self._files[name] = (path, *_stat(path))
        return changed


def _stat(path: str) -> tuple[int, int]:
    try:
        status = os.stat(path)
    except OSError:
        return (-1, -1)
    return (status.st_mtime_ns, status.st_size)
