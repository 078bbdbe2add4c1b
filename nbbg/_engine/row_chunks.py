"""Rows cut into a few statement sizes: many rows to a statement, few distinct statements.

Each SQLite statement the kernel runs gives the GIL away (a thread switch under
load), so batches of results and of job records go in as multi-row statements.
Only a few sizes are used: each distinct size is one more prepared statement in
the connection's cache, and a prepared multi-row ``INSERT`` takes tens of KiB.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

Row = TypeVar("Row")


def chunks(rows: Sequence[Row], sizes: tuple[int, ...]) -> Iterator[Sequence[Row]]:
    """``rows`` in order, cut into chunks of the given ``sizes`` only (largest first; the
    last size must be 1)."""
    start = 0
    for size in sizes:
        while len(rows) - start >= size:
            yield rows[start : start + size]
            start += size
