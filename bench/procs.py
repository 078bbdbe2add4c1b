"""Process accounting from outside a server: trees, PSS, the busy child, stops, leftovers.

Everything here looks at processes the benchmark started (a server and its
descendants) and kills only those, by PID, after checking the PID still
names the same process (same creation time).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

import psutil

MIB = 2**20


def descendants(roots: list[int]) -> list[psutil.Process]:
    """The live processes under ``roots`` (roots excluded)."""
    found: dict[int, psutil.Process] = {}
    for pid in roots:
        try:
            for child in psutil.Process(pid).children(recursive=True):
                found[child.pid] = child
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def tree(roots: list[int]) -> list[psutil.Process]:
    """``roots`` and their live descendants."""
    alive = []
    for pid in roots:
        try:
            alive.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return alive + [p for p in descendants(roots) if p.pid not in roots]


def pss_mib(processes: list[psutil.Process]) -> float:
    """Proportional set size of ``processes``, summed (shared pages counted once)."""
    total = 0
    for process in processes:
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return total / MIB


def pss_by_process(processes: list[psutil.Process]) -> list[tuple[str, float]]:
    """``(command line, PSS MiB)`` of each process, largest first."""
    found = []
    for process in processes:
        try:
            found.append((" ".join(process.cmdline())[-80:], process.memory_full_info().pss / MIB))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return sorted(found, key=lambda item: -item[1])


def _cpu_seconds(process: psutil.Process) -> float | None:
    try:
        times = process.cpu_times()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    return float(times.user + times.system)


def _cpu_used_over(roots: list[int], window: float) -> dict[int, float]:
    """CPU seconds each descendant used over the next ``window`` s (those that ended: left out)."""
    before = {p.pid: (p, _cpu_seconds(p)) for p in descendants(roots)}
    time.sleep(window)
    used = {}
    for pid, (process, start) in before.items():
        end = _cpu_seconds(process)
        if start is not None and end is not None:
            used[pid] = end - start
    return used


def wait_until_quiet(roots: list[int], window: float = 0.1, timeout: float = 5.0) -> bool:
    """Return once no descendant used more than a fifth of ``window`` s of CPU in a window.

    Run before a job whose process is found by its CPU use: a worker that a
    previous cancel replaced may still be importing its modules (loky's warm
    start, ~0.5 s of CPU), and taken for the job's process it never "stops".
    False if the descendants were still busy after ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if max(_cpu_used_over(roots, window).values(), default=0.0) <= window / 5:
            return True
    return False


def busiest_descendant(roots: list[int], window: float = 0.25) -> int | None:
    """The descendant that used most CPU over ``window`` s, if it used at least half of it."""
    best_pid, best_used = None, window / 2
    for pid, used in _cpu_used_over(roots, window).items():
        if used >= best_used:
            best_pid, best_used = pid, used
    return best_pid


_SIGKILL_BIT = 1 << (9 - 1)


def _status(pid: int) -> tuple[str, bool] | None:
    """``(state letter, SIGKILL pending)`` from ``/proc/<pid>/status``; None if gone.

    The state is "R" when any thread of the process is runnable: a Ray task runs
    the job on a thread of its own while the process's main thread sleeps, and
    the main thread's state alone read as "stopped" within a sample of the cancel.
    Read directly: psutil costs several times more per sample, and the
    sampling loop shares the machine with what it measures.
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            lines = status.read().splitlines()
    except OSError:
        return None
    fields = dict(line.split(b":", 1) for line in lines if b":" in line)
    if b"State" not in fields:
        return None
    pending = int(fields[b"SigPnd"], 16) | int(fields[b"ShdPnd"], 16)
    state = fields[b"State"].strip()[:1].decode()
    if state != "R" and _any_thread_runnable(pid):
        state = "R"
    return state, bool(pending & _SIGKILL_BIT)


def _any_thread_runnable(pid: int) -> bool:
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/stat", "rb") as stat:
                # "pid (comm) S ...": the state follows the last ")" (comm may hold one).
                if stat.read().rpartition(b")")[2].split(None, 1)[0] == b"R":
                    return True
        except (OSError, IndexError):
            continue
    return False


def wait_until_idle(pid: int, since: float, timeout: float = 5.0) -> float | None:
    """Seconds from ``since`` (``perf_counter``) until ``pid`` stops running its job.

    Stopped means gone, a zombie, SIGKILL pending (it runs no more user code:
    on a busy machine a CPU-heavy process can wait tens of ms for the
    scheduler to let it die), or not runnable in two samples in a row
    (sampled every 0.5 ms; a spinning job is always runnable). ``None`` if it
    still runs after ``timeout``.
    """
    deadline = since + timeout
    first_idle: float | None = None
    while time.perf_counter() < deadline:
        now = time.perf_counter()
        status = _status(pid)
        if status is None or status[0] in ("Z", "X") or status[1]:
            return now - since
        if status[0] == "R":
            first_idle = None
        elif first_idle is None:
            first_idle = now
        else:
            return first_idle - since
        time.sleep(0.0005)
    return None


@dataclass
class Ledger:
    """Every process seen under a server, so leftovers can be found after it stops."""

    seen: dict[int, float] = field(default_factory=dict)
    """pid -> creation time (tells a leftover from a reused PID)."""

    def observe(self, roots: list[int]) -> None:
        for process in tree(roots):
            try:
                self.seen.setdefault(process.pid, process.create_time())
            except psutil.NoSuchProcess:
                continue

    def survivors(self) -> list[psutil.Process]:
        alive = []
        for pid, created in self.seen.items():
            try:
                process = psutil.Process(pid)
                if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except psutil.NoSuchProcess:
                continue
        return alive

    def wait_for_exit(self, timeout: float) -> list[psutil.Process]:
        """Survivors after waiting up to ``timeout`` s for them to exit on their own."""
        deadline = time.monotonic() + timeout
        left = self.survivors()
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = self.survivors()
        return left

    def kill_survivors(self) -> int:
        """SIGKILL what is left of the processes we started; return how many."""
        left = self.survivors()
        for process in left:
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        return len(left)
