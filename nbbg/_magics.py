"""The ``%nbbg`` line magic: status, cancel, worker count, memory limit, restart, panel.

It acts on the kernel's manager (the one ``%load_ext nbbg`` created) and,
for ``cancel``, on every job the kernel's managers know. A bad command
prints the usage; it never raises into the cell.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._errors import NbbgError
from ._jobs import JobSnapshot
from ._manager import LokyManager
from ._rows import text_table
from ._sources import JobSource, kernel_managers, source_for

USAGE = """\
usage:
  %nbbg                    workers and jobs of this kernel
  %nbbg cancel <id|all>    stop a queued or running job (its id, or the first characters) or all
  %nbbg workers <n>        run n jobs at once (resize the worker pool)
  %nbbg memory <size|none> stop a job whose worker uses more (e.g. 4GiB, 500MB, auto, none)
  %nbbg restart            fresh workers, e.g. after editing an imported module
  %nbbg panel              show the jobs panel of every job in this kernel"""

STATUS_ROWS = 20


class UsageError(Exception):
    """A command the magic does not understand; the message says which part."""


def _kernel_jobs() -> list[tuple[JobSource, JobSnapshot]]:
    sources = [source_for(manager, None) for manager in kernel_managers()]
    return [(source, job) for source in sources for job in source.jobs()]


def status(manager: LokyManager) -> str:
    workers = manager.workers()
    described = ", ".join(
        f"pid {w.pid} " + (f"running {w.job_id[:8]}" if w.job_id else "idle") for w in workers
    )
    lines = [f"nbbg: {len(workers)} worker{'s' if len(workers) != 1 else ''} ({described})"]
    lines.append(memory_text(manager))
    lines.append(text_table("jobs", [job for _source, job in _kernel_jobs()], STATUS_ROWS))
    return "\n".join(lines)


def cancel(target: str) -> str:
    active = [(source, job) for source, job in _kernel_jobs() if job.state.active]
    if target == "all":
        stopped = sum(source.cancel(job.id) for source, job in active)
        return f"cancelled {stopped} job{'s' if stopped != 1 else ''}"
    matches = [(source, job) for source, job in active if job.id.startswith(target)]
    if not matches:
        return f"no queued or running job has an id starting with {target!r} (see %nbbg)"
    if len(matches) > 1:
        return f"{target!r} starts the ids of {len(matches)} jobs: give more characters"
    source, job = matches[0]
    source.cancel(job.id)
    return f"cancelled {job.id[:8]} ({job.name})"


def _worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise UsageError(f"`%nbbg workers` takes a whole number, not {text!r}") from None
    if count < 1:
        raise UsageError("`%nbbg workers` takes a number of at least 1")
    return count


def memory_text(manager: LokyManager) -> str:
    limit = manager.memory_limit
    return f"memory limit per job: {limit if limit is not None else 'none'}"


def _set_memory_limit(manager: LokyManager, text: str) -> str:
    try:
        manager.memory_limit = text
    except ValueError:
        raise UsageError(
            "`%nbbg memory` takes a size such as 4GiB, 300MB or 1.5 GB, auto (half of this "
            f"machine's memory) or none (no limit); not {text!r}"
        ) from None
    return f"nbbg: {memory_text(manager)}"


def run(manager: LokyManager, line: str, show: Callable[[Any], None]) -> str | None:
    """Carry out one ``%nbbg`` line; return the text to print."""
    command, *args = line.split() or ["status"]
    if command == "status" and not args:
        return status(manager)
    if command == "cancel" and len(args) == 1:
        return cancel(args[0])
    if command == "workers" and len(args) == 1:
        count = _worker_count(args[0])
        manager.resize(count)
        return f"nbbg: {count} worker{'s' if count != 1 else ''}"
    if command == "memory" and args:
        return _set_memory_limit(manager, " ".join(args))  # "1.5 GB" is two words
    if command == "restart" and not args:
        manager.restart()
        return "nbbg: fresh workers (running jobs finish on their old worker first)"
    if command == "panel" and not args:
        from ._panel import panel

        show(panel())
        return None
    raise UsageError(f"unknown command or arguments: %nbbg {line.strip()}")


def register(ipython: Any, manager: LokyManager) -> Callable[[], None]:
    """Add ``%nbbg`` to the shell; return the function that removes it."""
    from IPython.display import display

    def nbbg(line: str) -> None:
        try:
            text = run(manager, line, display)
        except UsageError as problem:
            text = f"{problem}\n{USAGE}"
        except NbbgError as problem:
            text = f"nbbg: {problem}"
        if text:
            print(text)

    nbbg.__doc__ = USAGE  # what `%nbbg?` shows
    ipython.register_magic_function(nbbg, magic_kind="line", magic_name="nbbg")

    def unregister() -> None:
        ipython.magics_manager.magics["line"].pop("nbbg", None)

    return unregister
