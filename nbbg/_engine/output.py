"""A job's output as the kernel keeps it: lines tagged with their stream, and a bounded tail.

The worker (``capture``) cuts what a job writes into :class:`OutputLine`\\ s and
sends them in :class:`OutputChunk`\\ s over the reports channel; the engine
adds each chunk to the job's :class:`OutputTail`, which keeps the newest
``MAX_LINES`` lines and ``MAX_BYTES`` characters and counts what it dropped, so
a job printing millions of lines costs the kernel a fixed amount of memory.
Snapshots carry the tail as an immutable tuple.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from typing import NamedTuple

MAX_LINES = 500
"""Lines of output the kernel keeps per job (the newest)."""

MAX_BYTES = 256 * 1024
"""Characters of output the kernel keeps per job (the newest lines that fit)."""

MAX_LINE = 10_000
"""Characters kept of one line; the rest is replaced by a note saying how much was cut."""

STDOUT = "stdout"
STDERR = "stderr"
LOG = "log"
WARNING = "warning"


class OutputLine(NamedTuple):
    """One line a job wrote (without its newline).

    ``stream`` is ``stdout``, ``stderr``, ``log`` (a ``logging`` record no
    handler of the job took) or ``warning`` (``warnings.warn``); ``level`` is
    the record's level for ``log`` and ``logging.WARNING`` for ``warning``.
    """

    stream: str
    text: str
    level: int = 0

    @property
    def prominent(self) -> bool:
        """Whether the line should stand out: stderr, warnings, log records of WARNING or more."""
        return self.stream in (STDERR, WARNING) or self.level >= logging.WARNING


class OutputChunk(NamedTuple):
    """Lines sent in one flush, and how many the worker already dropped before sending."""

    lines: tuple[OutputLine, ...]
    dropped: int = 0


class OutputTail:
    """The newest lines of one job's output, bounded in count and size (not thread-safe)."""

    __slots__ = ("_chars", "dropped", "lines")

    def __init__(self) -> None:
        self.lines: deque[OutputLine] = deque()
        self.dropped = 0
        self._chars = 0

    def add(self, chunk: OutputChunk) -> None:
        self.dropped += chunk.dropped
        self.extend(chunk.lines)

    def extend(self, lines: Iterable[OutputLine]) -> None:
        for line in lines:
            self.lines.append(line)
            self._chars += len(line.text) + 1
        while self.lines and (len(self.lines) > MAX_LINES or self._chars > MAX_BYTES):
            gone = self.lines.popleft()
            self._chars -= len(gone.text) + 1
            self.dropped += 1

    def __len__(self) -> int:
        return len(self.lines)


def output_text(lines: Iterable[OutputLine], dropped: int = 0) -> str:
    """The lines as plain text (stderr lines tagged), after a note on how many were dropped."""
    head = [f"[{dropped} earlier lines not kept]"] if dropped else []
    return "\n".join(head + [_tagged(line) for line in lines])


def _tagged(line: OutputLine) -> str:
    return f"[stderr] {line.text}" if line.stream == STDERR else line.text
