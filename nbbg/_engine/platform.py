"""What differs between Linux, macOS and Windows, in one place.

nbbg is developed and tested on Linux. Four things it does there do not exist
everywhere, and each has a small fallback here; a fifth, how a worker reads its
own memory, is only faster on Linux:

==========================  ===============================  =====================================
capability                  Linux / macOS                    fallback (Windows)
==========================  ===============================  =====================================
kill a worker at once       ``os.kill(pid, SIGKILL)``        ``psutil.Process(pid).kill()``
spawn with SIGINT blocked   ``signal.pthread_sigmask``       no mask (Windows sends no SIGINT to
                                                             the process group)
progress connection         abstract AF_UNIX name (Linux),   the family ``multiprocessing`` picks
                            socket file (macOS)              for the platform (named pipes)
worker CPU priority         ``os.setpriority``               ``psutil.Process(pid).nice()``
a worker's own memory       ``/proc/self/statm`` (Linux)     ``psutil.Process().memory_info()``
==========================  ===============================  =====================================

The capability flags are module attributes so that a test can turn them off
on Linux and run real jobs through every fallback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import connection

HAS_SIGKILL = hasattr(signal, "SIGKILL")
HAS_SIGMASK = hasattr(signal, "pthread_sigmask")
HAS_SETPRIORITY = hasattr(os, "setpriority")
HAS_ABSTRACT_SOCKETS = sys.platform.startswith("linux")
HAS_PROC_STATM = os.path.exists("/proc/self/statm")
CONNECTION_FAMILY: str = connection.default_family  # type: ignore[attr-defined]  # not in typeshed
"""``AF_UNIX`` on Linux and macOS, ``AF_PIPE`` on Windows (multiprocessing's choice)."""

WORKER_NICE_INCREMENT = 10
"""How much lower a worker's CPU priority is than the kernel's (``nice``'s own default step).

With every core busy, Linux then gives a nice-0 thread about ten times the CPU
share of a worker: Dash's request threads, the jobs panel and the next cell
run first, and the jobs still get every cycle the kernel leaves idle.
"""

MAX_NICE = 19
"""The lowest priority ``nice`` allows."""


def kill_process(pid: int) -> None:
    """End ``pid`` at once (no cleanup in it); a process already gone is fine."""
    if HAS_SIGKILL:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return
    import psutil  # only here: workers import this module and start faster without it

    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).kill()  # TerminateProcess on Windows


@contextmanager
def sigint_blocked() -> Iterator[None]:
    """Run the block with SIGINT blocked in this thread, where signal masks exist.

    Processes started inside inherit the mask, so a notebook's "interrupt
    kernel" (SIGINT to the whole process group) cannot reach a worker before
    its initializer ignores SIGINT.
    """
    if not HAS_SIGMASK:
        yield
        return
    # multiprocessing's resource tracker starts at the first spawn and, when
    # it starts, unblocks SIGINT in the calling thread: start it first.
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def unblock_sigint() -> None:
    """Undo the mask a worker was spawned with (after it ignores SIGINT)."""
    if HAS_SIGMASK:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def listener_address() -> str | tuple[str, int]:
    """A fresh address for the kernel's progress listener.

    Linux has abstract socket names (nothing on disk to clean up); elsewhere
    multiprocessing picks the family and a fresh address in it (a socket file
    in a private temporary directory, or a named pipe). ``Client(address)``
    infers the family from the address, so workers need nothing more.
    """
    if HAS_ABSTRACT_SOCKETS and CONNECTION_FAMILY == "AF_UNIX":
        return f"\0nbbg-{uuid.uuid4().hex}"
    if CONNECTION_FAMILY == "AF_UNIX":
        return os.path.join(tempfile.mkdtemp(prefix="nbbg-"), "progress.sock")
    if CONNECTION_FAMILY == "AF_INET":
        return ("127.0.0.1", 0)  # the OS picks a free loopback port
    return str(connection.arbitrary_address(CONNECTION_FAMILY))  # type: ignore[attr-defined]


def worker_nice() -> int:
    """The ``nice`` value of workers: the calling thread's plus ``WORKER_NICE_INCREMENT``."""
    current = os.getpriority(os.PRIO_PROCESS, 0) if HAS_SETPRIORITY else 0
    return min(MAX_NICE, current + WORKER_NICE_INCREMENT)


def lower_priority(nice: int, pid: int = 0) -> None:
    """Run process ``pid`` (0: this one) at ``nice``, unless it runs lower already (best effort).

    The kernel calls it right after spawning a worker, so that the new
    interpreter's start does not compete with the kernel either (a replacement
    worker starts just when a cancel is being answered), and the worker's
    initializer calls it again, for a process the kernel's call came too late for.
    """
    if HAS_SETPRIORITY:
        try:
            if os.getpriority(os.PRIO_PROCESS, pid) < nice:
                os.setpriority(os.PRIO_PROCESS, pid, nice)
        except OSError:
            pass  # gone already, or a sandbox that forbids it: the kernel's priority
        return
    import psutil

    try:
        process = psutil.Process(pid or None)
        below_normal = getattr(psutil, "BELOW_NORMAL_PRIORITY_CLASS", None)  # Windows only
        if below_normal is not None:
            process.nice(below_normal)
        elif process.nice() < nice:
            process.nice(nice)
    except (OSError, psutil.Error):
        pass  # gone already, or a sandbox that forbids it: the kernel's priority


_statm: tuple[int, int] | None = None  # (pid, descriptor) of this process's /proc/self/statm


def resident_memory() -> int | None:
    """This process's resident memory in bytes (None if it cannot be read).

    A worker reads it at every job's end. On Linux that is one ``pread`` of
    ``/proc/self/statm``, kept open (~1.5 us); psutil opens and parses the file
    each time (~12 us), and is the fallback elsewhere.
    """
    global _statm
    if HAS_PROC_STATM:
        try:
            if _statm is None or _statm[0] != os.getpid():  # a fork reads its own
                _statm = (os.getpid(), os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC))
            return int(os.pread(_statm[1], 128, 0).split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass  # an unusual /proc: ask psutil
    import psutil

    try:
        return int(psutil.Process().memory_info().rss)
    except psutil.Error:
        return None
