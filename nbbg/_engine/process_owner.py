"""Which process owns an engine, and what a forked copy of it must never do.

An engine's job table, its listener thread and its workers' executors live in
the process that created it. A server that forks after the manager was built
(``gunicorn --preload -w 2``, any pre-fork server, ``multiprocessing`` with
fork from the kernel) gives each child a copy of the manager without those
threads: a job submitted there never runs, and a poll reaching a process that
does not know the job answers "not running", which the browser takes for a
cancel. So every use in another process is refused with
:class:`WrongProcessError`, and a forked child never touches the owner's
workers, also when it exits (its copy of the engine's and of
multiprocessing's exit handlers would otherwise kill them).

``os.register_at_fork`` keeps the current pid in a module global, so the check
costs one comparison rather than a system call.
"""

from __future__ import annotations

import os

from .._errors import WrongProcessError

_current_pid = os.getpid()


def current_pid() -> int:
    return _current_pid


def _after_fork_in_child() -> None:
    global _current_pid
    _current_pid = os.getpid()
    _forget_inherited_children()


def _forget_inherited_children() -> None:
    """Drop the parent's child processes from multiprocessing's bookkeeping.

    A plain ``os.fork`` (gunicorn's) copies that set; at exit the child's
    copy of multiprocessing's exit handler would then terminate the parent's
    daemon processes and fail to join the others (loky's workers: an
    ``AssertionError`` printed at every exit of a server process).
    multiprocessing resets the set itself in the children it starts; this
    does the same for other forks.
    """
    from multiprocessing import process

    children = getattr(process, "_children", None)
    if not isinstance(children, set):
        return
    for child in list(children):
        if getattr(child, "_parent_pid", None) != _current_pid:
            children.discard(child)


if hasattr(os, "register_at_fork"):  # no fork on Windows: the pid never changes
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ProcessOwner:
    """Records the creating process; ``check()`` refuses use from any other."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.pid = current_pid()

    @property
    def is_current(self) -> bool:
        return current_pid() == self.pid

    def check(self) -> None:
        if current_pid() != self.pid:
            raise WrongProcessError(self.what, self.pid, current_pid())
