"""The ``%nbbg`` line magic: status, cancel, workers, memory, restart, panel, history, backend.

It acts on the kernel's manager (the one ``%load_ext nbbg`` created) and,
for ``cancel``, on every job the kernel's managers know. The line is parsed
with IPython's ``magic_arguments`` (``%nbbg?`` shows its help); a bad
command prints the usage, it never raises into the cell.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from IPython.core import magic_arguments
from IPython.core.error import UsageError as IPythonUsageError

from .._dash.manager import EngineManager
from .._engine.jobs import JobSnapshot
from .._errors import NbbgError
from .history_view import history_table
from .rows import text_table
from .sources import JobSource, kernel_managers, source_for

USAGE = """\
usage:
  %nbbg                    workers and jobs of this kernel
  %nbbg cancel <id|all>    stop a queued or running job (its id, or the first characters) or all
  %nbbg workers <n>        run n jobs at once (resize the worker pool)
  %nbbg memory <size|none> stop a job whose worker uses more (e.g. 4GiB, 500MB, auto, none)
  %nbbg restart            fresh workers, e.g. after editing an imported module
  %nbbg panel              show the jobs panel of every job in this kernel
  %nbbg history [n]        the last n finished jobs of this store (default 20), also of
                           earlier kernels: see nbbg.history() for records to work with
  %nbbg backend ray [addr] run the jobs of apps created from now on on Ray (a local one, or addr)
  %nbbg backend loky       ... on this machine's loky workers again"""

STATUS_ROWS = 20
HISTORY_ROWS = 20


class UsageError(Exception):
    """A command the magic does not understand; the message says which part."""


def _kernel_jobs() -> list[tuple[JobSource, JobSnapshot]]:
    sources = [source_for(manager, None) for manager in kernel_managers()]
    return [(source, job) for source in sources for job in source.jobs()]


def _worker_text(pid: int | None, node: str | None, job_id: str | None) -> str:
    where = f"pid {pid}" + (f" on {node}" if node else "")
    return f"{where} running {job_id[:8]}" if job_id else f"{where} idle"


def status(manager: EngineManager) -> str:
    workers = manager.workers()
    described = ", ".join(_worker_text(w.pid, w.node, w.job_id) for w in workers)
    lines = []
    cluster = getattr(manager, "cluster", None)
    if cluster is not None:
        lines.append(f"nbbg: {type(manager).__name__} on {cluster()}")
    lines.append(f"nbbg: {len(workers)} worker{'s' if len(workers) != 1 else ''} ({described})")
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


def _positive_number(text: str | None, command: str = "workers") -> int:
    try:
        count = int(text or "")
    except ValueError:
        raise UsageError(f"`%nbbg {command}` takes a whole number, not {text!r}") from None
    if count < 1:
        raise UsageError(f"`%nbbg {command}` takes a number of at least 1")
    return count


def memory_text(manager: EngineManager) -> str:
    limit = manager.memory_limit
    return f"memory limit per job: {limit if limit is not None else 'none'}"


def _set_memory_limit(manager: EngineManager, text: str) -> str:
    try:
        manager.memory_limit = text
    except ValueError:
        raise UsageError(
            "`%nbbg memory` takes a size such as 4GiB, 300MB or 1.5 GB, auto (half of this "
            f"machine's memory) or none (no limit); not {text!r}"
        ) from None
    return f"nbbg: {memory_text(manager)}"


@magic_arguments.magic_arguments()  # type: ignore[untyped-decorator]
@magic_arguments.argument(  # type: ignore[untyped-decorator]
    "command",
    nargs="?",
    default="status",
    choices=["status", "cancel", "workers", "memory", "restart", "panel", "history", "backend"],
    help="what to do (default: status)",
)
@magic_arguments.argument(  # type: ignore[untyped-decorator]
    "argument",
    nargs="*",
    help=(
        "cancel: a job id, its first characters, or all; workers: n; memory: a size, auto or "
        "none; history: how many jobs; backend: ray [address] or loky"
    ),
)
def _arguments(line: str) -> None:
    """Background jobs of this kernel (nbbg)."""


ARGUMENT_WORDS = {
    "cancel": (1, 1),
    "workers": (1, 1),
    "memory": (1, 2),
    "history": (0, 1),
    "backend": (1, 2),
}
"""How many words each command takes ("1.5 GB" is two); the others take none."""


def parse(line: str) -> tuple[str, str | None]:
    """``(command, argument)`` of a ``%nbbg`` line, or ``UsageError``."""
    try:
        parsed = magic_arguments.parse_argstring(_arguments, line)
    except IPythonUsageError as problem:
        raise UsageError(f"%nbbg {line.strip()}: {problem}") from None
    words = parsed.argument
    fewest, most = ARGUMENT_WORDS.get(parsed.command, (0, 0))
    if not fewest <= len(words) <= most:
        raise UsageError(f"unknown command or arguments: %nbbg {line.strip()}")
    return parsed.command, " ".join(words) if words else None


UseBackend = Callable[..., EngineManager]


def _switch_backend(argument: str, use_backend: UseBackend) -> str:
    name, _, address = argument.partition(" ")
    if name not in ("ray", "loky") or (name == "loky" and address):
        raise UsageError(f"`%nbbg backend` takes ray [address] or loky, not {argument!r}")
    manager = use_backend(name, address or None)
    cluster = getattr(manager, "cluster", None)
    where = str(cluster()) if cluster is not None else f"{manager.max_workers} loky workers"
    return f"nbbg: apps created from now on run their jobs on {where}"


def run(
    manager: EngineManager,
    line: str,
    show: Callable[[Any], None],
    use_backend: UseBackend | None = None,
) -> str | None:
    """Carry out one ``%nbbg`` line; return the text to print."""
    command, argument = parse(line)
    if command == "backend":
        if use_backend is None:
            raise UsageError("`%nbbg backend` needs the nbbg extension loaded")
        return _switch_backend(str(argument), use_backend)
    if command == "cancel":
        return cancel(str(argument))
    if command == "workers":
        count = _positive_number(argument)
        manager.resize(count)
        return f"nbbg: {count} worker{'s' if count != 1 else ''}"
    if command == "memory":
        return _set_memory_limit(manager, str(argument))
    if command == "restart":
        manager.restart()
        return "nbbg: fresh workers (running jobs finish on their old worker first)"
    if command == "history":
        count = HISTORY_ROWS if argument is None else _positive_number(argument, "history")
        return history_table(manager.history(limit=count))
    if command == "panel":
        from .panel import panel

        show(panel())
        return None
    return status(manager)


def register(
    ipython: Any, manager: Callable[[], EngineManager], use_backend: UseBackend | None = None
) -> Callable[[], None]:
    """Add ``%nbbg`` for the kernel's current ``manager()``; return the function that removes it."""
    from IPython.display import display

    def nbbg(line: str) -> None:
        try:
            text = run(manager(), line, display, use_backend)
        except UsageError as problem:
            text = f"{problem}\n{USAGE}"
        except NbbgError as problem:
            text = f"nbbg: {problem}"
        if text:
            print(text)

    nbbg.__doc__ = f"{USAGE}\n\n{_arguments.__doc__}"  # what `%nbbg?` shows
    ipython.register_magic_function(nbbg, magic_kind="line", magic_name="nbbg")

    def unregister() -> None:
        ipython.magics_manager.magics["line"].pop("nbbg", None)

    return unregister
