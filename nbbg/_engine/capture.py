"""Worker side of a job's output: ``print``, ``sys.stderr``, ``logging`` and ``warnings``, per job.

A worker inherits the kernel's file descriptors, which ipykernel forwards to
whichever cell happens to run: without this, a job's ``print`` lands in an
unrelated cell, mixed with other jobs' output. So :func:`install_capture` (once per
worker) replaces ``sys.stdout`` and ``sys.stderr`` with :class:`CapturedStream`\\ s
and ``logging.lastResort`` with a handler of its own; :func:`capturing` (once per
job) routes all of it, and ``warnings``, to the job's :class:`OutputBuffer`::

    job: print / sys.stderr.write / logging / warnings.warn
        └─► OutputBuffer.write: append (stream, text) to a deque, wake the flush thread
                                       (~0.3 µs; never blocks, never formats)
    flush thread (channel.ProgressSender) every >= 2 ms:
        OutputBuffer.take: cut into lines, bound them ─► Report(OUTPUT, OutputChunk)

Outside a job the streams write to the originals. What is captured is Python's
view of the streams: a C library or a subprocess writing to file descriptor 1
directly is not (it goes where the worker's descriptors go).

``logging``: records that no handler of the job takes (the usual case: a
worker has none configured) become ``log`` lines with their level and logger
name; handlers the job sets up itself write where they were told (a
``StreamHandler`` to ``sys.stderr`` gives ``stderr`` lines). ``warnings``: each job
runs in ``warnings.catch_warnings()``, so the filters it changes do not leak into
the next job and a warning shown once per location is shown once per job (as
in a fresh process), not once per worker.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import warnings
from collections import deque
from collections.abc import Iterator
from itertools import groupby, repeat
from operator import itemgetter
from typing import Any, TextIO

from .output import (
    LOG,
    MAX_BYTES,
    MAX_LINE,
    MAX_LINES,
    STDERR,
    STDOUT,
    WARNING,
    OutputChunk,
    OutputLine,
)

_Pending = tuple[str, str] | tuple[str, str, int]
"""``(stream, text)`` from a stream, ``(stream, text, level)`` from logging and warnings."""
_Segment = tuple[str, list[str], int, int]
"""Consecutive lines of one stream: ``(stream, newest lines, level, older lines skipped)``."""


class OutputBuffer:
    """What one job wrote since the last flush; written by the job, taken by the flush thread."""

    __slots__ = ("_partial", "_pending", "_wake", "signalled")

    def __init__(self, wake: threading.Event) -> None:
        self._wake = wake
        self._pending: deque[_Pending] = deque()  # append/popleft are atomic: no lock
        self._partial: dict[str, str] = {}
        self.signalled = False
        """Whether the flush thread was woken since its last take (an attribute: the
        cheapest check in the job's hot path)."""

    def write(self, stream: str, text: str, level: int = 0) -> None:
        self._pending.append((stream, text, level))
        if not self.signalled:
            self.signal()

    def signal(self) -> None:
        self.signalled = True
        self._wake.set()

    def take(self, final: bool = False) -> OutputChunk | None:
        """Complete lines written since the last take (``final``: the unfinished ones too),
        at most ``MAX_LINES`` / ``MAX_BYTES`` of the newest, with how many were dropped."""
        self.signalled = False  # before draining: a later write wakes the flush thread again
        pop = self._pending.popleft
        items = [pop() for _ in repeat(None, len(self._pending))]
        segments: list[_Segment] = []
        for stream, group in groupby(items, key=itemgetter(0)):
            if stream in (STDOUT, STDERR):  # a run of writes to one stream, cut once
                text = self._partial.get(stream, "") + "".join(map(itemgetter(1), group))
                complete, skipped = _last_lines(text)
                rest = _last_rewrite(complete.pop())
                if len(rest) > MAX_LINE:  # a line that never ends (a progress bar): emit it
                    complete.append(rest)
                    rest = ""
                self._partial[stream] = rest
                segments.append((stream, complete, 0, skipped))
            else:  # log records and warnings: complete in themselves
                for item in group:
                    level = item[2] if len(item) == 3 else 0
                    segments.append((stream, item[1].splitlines(), level, 0))
        if final:
            segments += [(stream, [text], 0, 0) for stream, text in self._partial.items() if text]
            self._partial.clear()
        return _bounded(segments)


def _last_lines(text: str) -> tuple[list[str], int]:
    """The newest ``MAX_LINES`` lines of ``text`` and its unfinished end (the last item),
    and how many older lines were not split out (they would be dropped anyway)."""
    newlines = text.count("\n")
    if newlines <= MAX_LINES:
        return text.split("\n"), 0
    parts = text.rsplit("\n", MAX_LINES + 1)
    del parts[0]  # the older lines, in one piece
    return parts, newlines - MAX_LINES


def _last_rewrite(text: str) -> str:
    """What a terminal shows of a line rewritten with carriage returns."""
    if "\r" not in text:
        return text
    parts = [part for part in text.split("\r") if part]
    return parts[-1] if parts else ""


def _line(stream: str, text: str, level: int) -> OutputLine:
    text = _last_rewrite(text)
    if len(text) > MAX_LINE:
        text = f"{text[:MAX_LINE]}… [{len(text) - MAX_LINE} more characters]"
    if not text.isascii():
        # Lone surrogates (undecodable bytes, bad escapes) cannot go to the
        # front end as JSON: show them escaped instead.
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return OutputLine(stream, text, level)


def _bounded(segments: list[_Segment]) -> OutputChunk | None:
    """The newest lines that fit ``MAX_LINES`` and ``MAX_BYTES``, and how many did not.

    Only the kept lines are built: a flood of output costs a split per flush,
    not an object per line.
    """
    kept: list[OutputLine] = []
    total = chars = 0
    for stream, texts, level, skipped in reversed(segments):
        total += len(texts) + skipped
        for text in reversed(texts):
            if len(kept) >= MAX_LINES or chars > MAX_BYTES:
                break
            line = _line(stream, text, level)
            chars += len(line.text) + 1
            if chars > MAX_BYTES:
                break
            kept.append(line)
    if not total:
        return None
    kept.reverse()
    return OutputChunk(tuple(kept), total - len(kept))


# ---------------------------------------------------------------- the worker's streams
_active: OutputBuffer | None = None
"""The running job's buffer (one job at a time per worker), None between jobs."""


def _as_text(data: Any) -> str:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data).decode("utf-8", "replace")
    raise TypeError(f"write() argument must be str, not {type(data).__name__}")


class _BinaryView:
    """``sys.stdout.buffer``: bytes written there are decoded (invalid UTF-8 replaced)."""

    def __init__(self, stream: CapturedStream) -> None:
        self._stream = stream

    def write(self, data: bytes) -> int:
        self._stream.write(_as_text(data))
        return len(data)

    def flush(self) -> None:
        pass


class CapturedStream:
    """``sys.stdout`` / ``sys.stderr`` of a worker: the running job's buffer, else the original.

    ``close()`` is ignored (a job closing its ``sys.stdout`` must not break the
    next job's output); bytes are accepted and decoded.
    """

    encoding = "utf-8"
    errors = "replace"
    newlines = None

    def __init__(self, stream: str, original: TextIO | None) -> None:
        self.stream = stream
        self.original = original
        self.buffer = _BinaryView(self)

    def write(self, text: str) -> int:
        if text.__class__ is not str:
            text = _as_text(text)
        buffer = _active
        if buffer is None:
            self._forward(text)
        else:  # OutputBuffer.write, inlined: this is the job's hot path
            buffer._pending.append((self.stream, text))
            if not buffer.signalled:
                buffer.signal()
        return len(text)

    def _forward(self, text: str) -> None:
        with contextlib.suppress(Exception):  # the original may be closed or gone
            if self.original is not None:
                self.original.write(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if _active is None and self.original is not None:
            with contextlib.suppress(Exception):
                self.original.flush()

    def fileno(self) -> int:
        if self.original is None:
            raise OSError("no file descriptor")
        return self.original.fileno()

    def isatty(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return False

    def close(self) -> None:
        pass


class _LastResortHandler(logging.Handler):
    """``logging.lastResort`` in a worker: records no handler took become ``log`` lines."""

    def __init__(self, fallback: logging.Handler | None) -> None:
        super().__init__(logging.WARNING)
        self._fallback = fallback
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def handle(self, record: logging.LogRecord) -> bool:
        buffer = _active
        if buffer is None:
            return self._fallback.handle(record) if self._fallback is not None else False
        try:
            text = self.format(record)
        except Exception as exc:  # noqa: BLE001 - a bad format string or a failing __str__
            text = f"{record.levelname} {record.name}: <could not format: {exc!r}>"
        buffer.write(LOG, text, record.levelno)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    buffer = _active
    try:
        text = warnings.formatwarning(message, category, filename, lineno, line)
    except Exception as exc:  # noqa: BLE001 - the warning's own str() may raise
        text = f"{category.__name__}: <could not format: {exc!r}>"
    if buffer is None:
        sys.stderr.write(text)
    else:
        buffer.write(WARNING, text, logging.WARNING)


_streams: tuple[CapturedStream, CapturedStream] | None = None


def install_capture() -> None:
    """Replace this worker's ``sys.stdout``, ``sys.stderr`` and ``logging.lastResort`` (once)."""
    global _streams
    if _streams is not None:
        return
    _streams = (CapturedStream(STDOUT, sys.stdout), CapturedStream(STDERR, sys.stderr))
    sys.stdout, sys.stderr = _streams
    logging.lastResort = _LastResortHandler(logging.lastResort)


@contextlib.contextmanager
def capturing(buffer: OutputBuffer) -> Iterator[None]:
    """Route everything the job writes to ``buffer`` while the block runs."""
    global _active
    if _streams is not None:
        sys.stdout, sys.stderr = _streams  # a previous job may have replaced them
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        _active = buffer
        try:
            yield
        finally:
            _active = None
            if _streams is not None:
                sys.stdout, sys.stderr = _streams
