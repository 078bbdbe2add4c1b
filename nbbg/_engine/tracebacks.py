"""Tracebacks of failed jobs that point at the user's code: the notebook's cells and lines.

The worker formats a failed job's traceback as Python does; in the kernel,
:func:`localize` rewrites that text:

- The leading frames of nbbg itself (the worker loop, the Dash runner) go: the
  first frame shown is the user's callback. (Workers run the kernel's nbbg, so
  its directory is the same on both sides.)
- cloudpickle ships a
  function by value with its file name replaced by ``<dynamic-code>`` (line
  numbers kept), and a function defined in a notebook cell has a file name such
  as ``/tmp/ipykernel_<pid>/<hash>.py`` that exists only in the kernel's
  ``linecache`` anyway (IPython puts each cell's source there). So each
  ``<dynamic-code>`` frame is matched, by function name and line, to a code
  object the job's callable reaches (its own, nested ones, the functions of its
  globals and closure: what cloudpickle shipped), then named as IPython names
  it (``Cell In[5], line 7, in f``) and given its source line from ``linecache``.

Rewriting in the kernel keeps the worker's side to Python's own formatting.

The engine does not import IPython: when a shell runs in this process,
IPython is in ``sys.modules`` and its compiler knows each cell's name.
"""

from __future__ import annotations

import linecache
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import CodeType, FunctionType
from typing import Any

_PACKAGE_DIR = str(Path(__file__).resolve().parent.parent) + "/"
_FRAME = re.compile(
    r'^(?P<indent>\s*)File "(?P<file>[^"]+)", line (?P<line>\d+)(?:, in (?P<name>.*))?$'
)
SHIPPED_FILE = "<dynamic-code>"
"""The file name cloudpickle gives every code object it ships by value."""
MAX_CODES = 500
"""Code objects looked at per callable, at most (a callable reaching a whole library)."""


def cell_name(filename: str) -> str | None:
    """``Cell In[5]`` for a file name IPython gave a cell of this kernel, else None."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    try:
        shell = get_ipython() if callable(get_ipython) else None
        format_code_name = getattr(getattr(shell, "compile", None), "format_code_name", None)
        named = format_code_name(filename) if callable(format_code_name) else None
    except Exception:  # noqa: BLE001 - a foreign shell: keep the file name
        return None
    if not named:
        return None
    return " ".join(str(part) for part in named)


def _functions_of(fn: Any) -> list[FunctionType]:
    """The plain functions behind ``fn`` (a bound method, a ``functools.wraps`` chain)."""
    found: list[FunctionType] = []
    current: Any = fn
    for _ in range(10):
        current = getattr(current, "__func__", current)
        if isinstance(current, FunctionType):
            found.append(current)
        wrapped = getattr(current, "__wrapped__", None)
        if wrapped is None:
            break
        current = wrapped
    return found


def shipped_codes(fn: Any) -> list[CodeType]:
    """The code objects defined outside files that ``fn`` reaches: what cloudpickle renamed."""
    codes: list[CodeType] = []
    seen: set[int] = set()
    pending: list[FunctionType] = _functions_of(fn)
    while pending and len(codes) < MAX_CODES:
        function = pending.pop()
        if id(function.__code__) in seen:
            continue
        nested = [function.__code__]
        while nested:
            code = nested.pop()
            if id(code) in seen:
                continue
            seen.add(id(code))
            codes.append(code)
            nested += [c for c in code.co_consts if isinstance(c, CodeType)]
            for name in code.co_names:
                value = function.__globals__.get(name)
                if isinstance(value, FunctionType) and _by_value(value):
                    pending.append(value)
        for cell in function.__closure__ or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if isinstance(value, FunctionType) and _by_value(value):
                pending.append(value)
    return codes


def _by_value(function: FunctionType) -> bool:
    """Whether cloudpickle ships this function's code (it is not importable from a file)."""
    module = sys.modules.get(function.__module__ or "")
    return (
        module is None
        or function.__module__ == "__main__"
        or getattr(module, "__file__", None) is None
    )


def _real_file(codes: list[CodeType], name: str, lineno: int) -> str | None:
    """The file of the innermost code object named ``name`` that spans ``lineno``."""
    best: tuple[int, str] | None = None
    for code in codes:
        if code.co_name != name:
            continue
        lines = [line for _start, _end, line in code.co_lines() if line is not None]
        lines.append(code.co_firstlineno)
        if min(lines) <= lineno <= max(lines):
            span = max(lines) - min(lines)
            if best is None or span < best[0]:
                best = (span, code.co_filename)
    return best[1] if best is not None else None


def localize(text: str, fn: Callable[..., Any] | None = None) -> str:
    """Name the kernel's cells in a worker's traceback and add their source lines.

    ``fn`` is the job's callable, which tells ``<dynamic-code>`` frames apart.
    """
    if not text or 'File "' not in text:
        return text
    codes: list[CodeType] | None = None
    lines = _without_nbbg_frames(text.split("\n"))
    out: list[str] = []
    for k, line in enumerate(lines):
        match = _FRAME.match(line)
        if match is None:
            out.append(line)
            continue
        indent, filename, lineno = match["indent"], match["file"], int(match["line"])
        rest = f", in {match['name']}" if match["name"] is not None else ""
        if filename == SHIPPED_FILE and fn is not None and match["name"]:
            if codes is None:
                codes = _safely(shipped_codes, fn)
            filename = _real_file(codes, match["name"], lineno) or filename
        name = cell_name(filename)
        if name:
            out.append(f"{indent}{name}, line {lineno}{rest}")
        else:
            out.append(f'{indent}File "{filename}", line {lineno}{rest}')
        following = lines[k + 1] if k + 1 < len(lines) else ""
        has_source = following.startswith(indent + " ") and not _FRAME.match(following)
        if not has_source:
            source = linecache.getline(filename, lineno).strip()
            if source:
                out.append(f"{indent}  {source}")
    return "\n".join(out)


def _without_nbbg_frames(lines: list[str]) -> list[str]:
    """Each traceback's leading frames in nbbg's own files left out (its last frame kept)."""
    out: list[str] = []
    k = 0
    while k < len(lines):
        out.append(lines[k])
        if lines[k] != "Traceback (most recent call last):":
            k += 1
            continue
        k += 1
        frames = _frame_spans(lines, k)
        leading = 0
        while leading < len(frames) - 1 and frames[leading][2].startswith(_PACKAGE_DIR):
            leading += 1
        if frames:
            k = frames[leading][0]
    return out


def _frame_spans(lines: list[str], start: int) -> list[tuple[int, int, str]]:
    """``(first line, end, file)`` of each frame of the traceback starting at ``start``."""
    spans: list[tuple[int, int, str]] = []
    k = start
    while k < len(lines):
        match = _FRAME.match(lines[k])
        if match is None:
            break
        end = k + 1
        while end < len(lines) and lines[end].startswith(match["indent"] + " "):
            end += 1  # the source line, the carets
        spans.append((k, end, match["file"]))
        k = end
    return spans


def _safely(find: Callable[[Any], list[CodeType]], fn: Any) -> list[CodeType]:
    try:
        return find(fn)
    except Exception:  # noqa: BLE001 - an odd callable: leave its frames as they are
        return []
