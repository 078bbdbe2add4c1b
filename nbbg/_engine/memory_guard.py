"""The per-job memory limit, and each job's peak memory and CPU time, from one sampler.

A callback that allocates without bound (a wrong loop, a join that explodes)
would grow its worker until the machine swaps or the operating system's
out-of-memory killer picks a victim, often the Jupyter kernel or server,
which loses the user's whole session. So one kernel-side thread samples the
resident memory (RSS) of every worker that runs a job, every
``SAMPLE_INTERVAL`` s from the second tick that finds the job running (a
short job is never sampled), and only while jobs run. A job whose worker is over
the limit is ended through the engine (``Engine.fail_running``): its worker is
killed and replaced as on a cancel, the job ends with
:class:`MemoryLimitError`, and other jobs and the kernel go on.

::

    engine ── "running" events ──► MemoryGuard thread (sleeps 2 s after the last job)
       ▲                                 │ every 50 ms: engine.workers() -> busy pids,
       │                                 │ psutil RSS + CPU times of each
       ├──── record_usage(job, peak, cpu) ◄┤
       └──── fail_running(job, pid) ◄──────┘ over the limit -> stop

The same samples give a running job's peak resident memory and CPU time so
far (the worker's user + system time since its previous job ended), written
to the job with ``Engine.record_usage``: the panel shows them live. When the
job ends, its worker's own figures come with its outcome (``run_job``: the
CPU time it counted, its memory at the end) and are final; sampling the
worker once more from here cost the kernel two ``/proc`` reads at every
job's end. Jobs are sampled whether or not a limit is set. A sample costs
~50 µs of the kernel's time per running job, 20 times a second.

The default limit is half of the memory this kernel may use: the machine's
RAM, or its container's limit when lower (a 2 GB Binder reports the host's
RAM through ``psutil`` but is killed at 2 GB). One runaway job then leaves the
other half to the kernel, the Jupyter server and the other jobs: 8 GiB per job
on a 16 GiB laptop, 1 GiB on a 2 GB Binder.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from .._errors import MemoryLimitError
from .jobs import JobEvent, JobFailure, JobState

if TYPE_CHECKING:
    from .engine import Engine

SAMPLE_INTERVAL = 0.05
"""Seconds between two samples of the running workers' memory."""

KEEP_BEAT = 2.0
"""Seconds the sampler keeps its beat with no job running before it sleeps until one starts.

Dash callbacks are mostly short: between two of them no worker may be running.
Sleeping until the next start would wake this thread at nearly every job, a
thread switch in the kernel per job; on the beat, the next tick finds a job
that started, as it finds one starting while others run.
"""

CPU_EVERY = 5
"""Samples per read of a running worker's CPU time (its RSS is read at every one)."""

MAX_REMEMBERED_WORKERS = 64
"""Workers whose CPU time at their last job's end is kept before the dead ones are pruned."""

DEFAULT_SHARE = 0.5
"""The default limit, as a share of the memory the kernel may use."""

MINIMUM_DEFAULT = 256 * 2**20
"""The default limit never goes below this (a warm worker alone holds ~100 MiB)."""

CGROUP_LIMIT_FILES = (
    "/sys/fs/cgroup/memory.max",  # cgroup v2
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",  # cgroup v1
)

MemoryLimitSpec = int | str | None
"""What ``LokyManager(memory_limit=...)`` takes: bytes, ``"4GiB"``, ``"auto"`` or ``None``."""

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)
ACCEPTED_FORMS = (
    'a number of bytes (an int), a size such as "4GiB", "300MB" or "1.5 GB" '
    "(units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB), "
    '"auto" for half of this machine\'s memory, or None for no limit'
)


@dataclass
class _Usage:
    """What the samples of one running job found so far."""

    pid: int
    cpu_at_start: float
    peak: int = 0
    cpu: float = 0.0
    samples: int = 0


@dataclass(frozen=True)
class MemoryLimit:
    """A limit in bytes, shown in the units it was given in (MB or MiB)."""

    bytes: int
    decimal: bool = False

    def format(self, amount: int) -> str:
        """``amount`` bytes in this limit's units: ``4.3 GiB``, ``300 MB``."""
        step, names = (1000, "kB MB GB TB") if self.decimal else (1024, "KiB MiB GiB TiB")
        value, unit = float(amount), "B"
        for name in names.split():
            if value < step:
                break
            value, unit = value / step, name
        text = f"{value:.1f}".removesuffix(".0")
        return f"{text} {unit}"

    def __str__(self) -> str:
        return self.format(self.bytes)


def parse_memory_limit(value: Any) -> MemoryLimit | None:
    """``memory_limit=`` as given -> a limit, or ``None`` for no limit.

    Raises ``ValueError`` naming the accepted forms for anything else.
    """
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value > 0:
            return MemoryLimit(value)
    elif isinstance(value, str):
        if value.strip().lower() == "auto":
            return default_memory_limit()
        if value.strip().lower() == "none":
            return None
        match = _SIZE.fullmatch(value)
        unit = match.group(2).lower() if match else ""
        if match and unit in _UNITS:
            amount = math.floor(float(match.group(1)) * _UNITS[unit])
            if amount > 0:
                return MemoryLimit(amount, decimal=unit in ("kb", "mb", "gb", "tb"))
    raise ValueError(f"memory_limit takes {ACCEPTED_FORMS}; not {value!r}")


def usable_memory() -> int:
    """The memory this process may use: RAM, or its container's limit when lower."""
    total = int(psutil.virtual_memory().total)
    for path in CGROUP_LIMIT_FILES:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) or a huge number (v1) mean no limit
            total = min(total, int(text))
    return total


def default_memory_limit() -> MemoryLimit:
    """Half of :func:`usable_memory`, at least ``MINIMUM_DEFAULT``."""
    return MemoryLimit(max(MINIMUM_DEFAULT, int(usable_memory() * DEFAULT_SHARE)))


class MemoryGuard:
    """Samples the workers that run jobs: records each job's peak RSS and CPU time,
    and stops the job of any worker whose RSS goes over ``limit``."""

    def __init__(self, engine: Engine, limit: MemoryLimit | None) -> None:
        self._engine = engine
        self._limit = limit
        self._wake = threading.Event()
        self._sleeping = False
        """Waiting for a job to start (not on the beat): only then does a start wake the thread."""
        self._closed = False
        self._processes: dict[int, psutil.Process] = {}
        self._usage: dict[str, _Usage] = {}
        self._seen_running: set[str] = set()  # the jobs the last tick found running
        self._cpu_after_job: dict[int, float] = {}
        """Each worker's CPU time at its last job's last sample: where its next job's count
        starts (an idle worker spends next to none), rather than at that job's first sample."""
        self._usage_lock = threading.Lock()
        self._unsubscribe = engine.subscribe(self._on_event)
        threading.Thread(target=self._watch, name="nbbg-memory-guard", daemon=True).start()

    @property
    def limit(self) -> MemoryLimit | None:
        return self._limit

    @limit.setter
    def limit(self, limit: MemoryLimit | None) -> None:
        self._limit = limit
        self._wake.set()  # jobs already running are held to the new limit at once

    def close(self) -> None:
        self._closed = True
        self._unsubscribe()
        self._wake.set()

    def _on_event(self, event: JobEvent) -> None:
        if event.kind != "state":
            return
        if event.job.state is JobState.RUNNING:
            if self._sleeping:  # on the beat, the next tick finds the job
                self._wake.set()
        elif not event.job.state.active:
            self._forget(event.job.id)

    def _watch(self) -> None:
        last_running = time.monotonic()
        while not self._closed:
            self._wake.clear()  # before looking: a job starting after this sets it again
            running = self._running_workers()
            if not running:
                if time.monotonic() - last_running < KEEP_BEAT:
                    self._wake.wait(SAMPLE_INTERVAL)  # a new limit or close still wakes it
                    continue
                self._sleeping = True  # from now on a job's start wakes this thread
                if not self._running_workers():  # one that started before the flag was set
                    self._wake.wait()
                self._sleeping = False
                last_running = time.monotonic()
                continue
            last_running = time.monotonic()
            limit = self._limit
            # A job is sampled from the second tick that finds it running: most Dash
            # callbacks have ended by then, and a sample reads /proc files from the
            # kernel's side (each read gives the GIL away). One running from the start
            # of a tick is stopped at most two ticks after it crossed the limit.
            seen_before, self._seen_running = self._seen_running, {job for job, _ in running}
            for job_id, pid in running:
                if job_id not in seen_before:
                    continue
                used = self._sample(job_id, pid)
                if limit is not None and used is not None and used > limit.bytes:
                    self._stop(job_id, pid, used, limit)
            time.sleep(SAMPLE_INTERVAL)

    def _sample(self, job_id: str, pid: int) -> int | None:
        """Sample ``pid`` for ``job_id``: record its peak and CPU time; return its RSS.

        The RSS is read every time (the limit needs it); the CPU time, shown live
        only (the worker's own count is final), every ``CPU_EVERY`` samples: each
        is one more ``/proc`` file read from the kernel's side.
        """
        with self._usage_lock:
            usage = self._usage.get(job_id)
            read_cpu = usage is None or usage.pid != pid or usage.samples % CPU_EVERY == 0
        try:
            process = self._processes.get(pid)
            if process is None:
                process = self._processes[pid] = psutil.Process(pid)
            rss = int(process.memory_info().rss)
            times = process.cpu_times() if read_cpu else None
        except psutil.Error:
            return None  # the worker just ended or was replaced
        cpu = None if times is None else float(times.user + times.system)
        with self._usage_lock:
            usage = self._usage.get(job_id)
            if usage is None or usage.pid != pid:
                if cpu is None:
                    return rss  # forgotten and begun again meanwhile: the next sample counts
                start = self._cpu_after_job.get(pid, cpu)
                usage = self._usage[job_id] = _Usage(pid, start)
            usage.samples += 1
            usage.peak = max(usage.peak, rss)
            if cpu is not None:
                usage.cpu = max(usage.cpu, cpu - usage.cpu_at_start)
            peak, spent = usage.peak, usage.cpu
        self._engine.record_usage(job_id, peak, spent)
        return rss

    def _forget(self, job_id: str) -> None:
        """The job ended: its worker's next job counts CPU from where its last sample left off."""
        with self._usage_lock:
            usage = self._usage.pop(job_id, None)
            if usage is not None:
                self._cpu_after_job[usage.pid] = usage.cpu_at_start + usage.cpu

    def _running_workers(self) -> list[tuple[str, int]]:
        workers = self._engine.workers()
        running = [(w.job_id, w.pid) for w in workers if w.job_id and w.pid]
        # Kept while the worker lives, busy or idle: a new psutil.Process reads /proc once more.
        alive = {w.pid for w in workers}
        for pid in [pid for pid in self._processes if pid not in alive]:
            del self._processes[pid]
        if len(self._cpu_after_job) > MAX_REMEMBERED_WORKERS:  # replaced workers pile up
            with self._usage_lock:
                for pid in [pid for pid in self._cpu_after_job if not psutil.pid_exists(pid)]:
                    del self._cpu_after_job[pid]
        return running

    def _stop(self, job_id: str, pid: int, used: int, limit: MemoryLimit) -> None:
        snapshot = self._engine.get(job_id)
        name = snapshot.name if snapshot is not None else "the job"
        error = MemoryLimitError(name, limit.format(used), str(limit))
        self._engine.fail_running(job_id, pid, JobFailure(str(error)))
