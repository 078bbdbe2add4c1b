"""What it costs a job to see the kernel as it is (issue 12), through the jobs API.

Run from the repository root::

    PYTHONPATH=$PWD python -m bench.shipping            # 3 runs
    PYTHONPATH=$PWD python -m bench.shipping --runs 5

Each run starts a fresh one-worker ``LokyManager`` (so every call reuses the
same warm worker) and measures, as medians of its calls:

- no-op: submit -> result of a callback that reads nothing (the baseline);
- unchanged 100 MB numpy array / DataFrame: a callback reading it, minus no-op;
- first call after an in-place edit of one element of that array / DataFrame,
  minus no-op (the edit itself is not timed; its cost is the next rows);
- an in-place write to all of a 100 MB array, watched vs not watched: what
  the write watch costs the notebook (one page fault per page after a scan);
- a full xxh3 of 100 MB: what an unchanged array would cost per call without
  the write watch (Linux < 6.7, or memory numpy does not own);
- fingerprint of a callback with 10 small globals: one ``ship`` (walk, digests,
  registry look-up) plus the kernel-state snapshot, in-process;
- kernel RSS after 20 calls with a 100 MB global, minus RSS with the global.

Callbacks are compiled in a ``__main__`` namespace, as notebook cells are.
Targets (issue 12): unchanged <= 2 ms, first after edit <= 150 ms, fingerprint
<= 50 us, RSS growth < 10 MB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import psutil
import xxhash

import nbbg
from nbbg._engine.kernel_state import KernelStateTracker
from nbbg._engine.shipping import FunctionRegistry

MB100 = 100 * 1024 * 1024
CALLS = 30
EDITS = 7

CELLS = """
import numpy as np, pandas as pd
array = np.random.rand(MB100 // 8)
frame = pd.DataFrame(np.random.rand(MB100 // 80, 10), columns=[f"c{i}" for i in range(10)])
small = dict(a=1, b=2.5, c="label", d="another label", e=True, f=None, g=7,
             h={"x": 1, "y": [1, 2]}, i={"scale": 3}, j=(1, 2, 3))
globals().update(small)

def noop():
    return None

def read_array():
    return array.shape[0]

def read_frame():
    return frame.shape[0]

def ten_globals():
    return (a, b, c, d, e, f, g, h, i, j)
"""


def _namespace() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "__main__", "MB100": MB100}
    exec(CELLS, namespace)  # the bench's own cells
    return namespace


def _call_ms(manager: nbbg.LokyManager, fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    manager.wait(manager.submit(fn), timeout=120)
    return (time.perf_counter() - started) * 1000


def _median_ms(manager: nbbg.LokyManager, fn: Callable[[], Any], calls: int = CALLS) -> float:
    _call_ms(manager, fn)  # the first call ships what the worker lacks
    return statistics.median(_call_ms(manager, fn) for _ in range(calls))


def _after_edit_ms(
    manager: nbbg.LokyManager, fn: Callable[[], Any], edit: Callable[[], None]
) -> float:
    _call_ms(manager, fn)
    samples = []
    for _ in range(EDITS):
        edit()
        samples.append(_call_ms(manager, fn))
    return statistics.median(samples)


def _write_all_ms(array: np.ndarray) -> float:
    started = time.perf_counter()
    array += 1.0
    return (time.perf_counter() - started) * 1000


def _full_hash_ms(array: np.ndarray) -> float:
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        xxhash.xxh3_128_digest(array.data)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def _fingerprint_us(fn: Callable[[], Any]) -> float:
    registry, tracker = FunctionRegistry(), KernelStateTracker()
    registry.ship(fn, "ten_globals")
    samples = []
    for _ in range(20):
        started = time.perf_counter()
        for _ in range(200):
            registry.ship(fn, "ten_globals")
            tracker.snapshot()
        samples.append((time.perf_counter() - started) / 200 * 1e6)
    return statistics.median(samples)


def _two_workers_ms(namespace: dict[str, Any]) -> float:
    """The same with two workers: calls go to the first while the second idles."""
    manager = nbbg.LokyManager(max_workers=2)
    try:
        return _median_ms(manager, namespace["read_array"]) - _median_ms(manager, namespace["noop"])
    finally:
        manager.shutdown()


def _rss_mb() -> float:
    return float(psutil.Process().memory_info().rss / 2**20)


def one_run() -> dict[str, float]:
    namespace = _namespace()
    manager = nbbg.LokyManager(max_workers=1)
    try:
        noop = _median_ms(manager, namespace["noop"])
        row: dict[str, float] = {"no-op call (ms)": noop}
        row["unchanged 100 MB array: overhead (ms)"] = (
            _median_ms(manager, namespace["read_array"]) - noop
        )
        row["unchanged 100 MB DataFrame: overhead (ms)"] = (
            _median_ms(manager, namespace["read_frame"]) - noop
        )
        array = namespace["array"]

        def edit_array() -> None:
            array[12345] += 1.0

        def edit_frame() -> None:
            namespace["frame"].iloc[12345, 3] += 1.0

        row["first call after an edit, array: overhead (ms)"] = (
            _after_edit_ms(manager, namespace["read_array"], edit_array) - noop
        )
        row["first call after an edit, DataFrame: overhead (ms)"] = (
            _after_edit_ms(manager, namespace["read_frame"], edit_frame) - noop
        )
        row["write all of a watched 100 MB array (ms)"] = _write_all_ms(array)
        row["write all of an unwatched 100 MB array (ms)"] = _write_all_ms(
            np.random.rand(MB100 // 8)
        )
        row["full xxh3 of 100 MB, the fallback without the watch (ms)"] = _full_hash_ms(array)
        row["fingerprint, 10 small globals (us)"] = _fingerprint_us(namespace["ten_globals"])

        row["unchanged 100 MB array, 2 workers: overhead (ms)"] = _two_workers_ms(namespace)
        del namespace["frame"]
        exec(
            "held = np.random.rand(MB100 // 8)\ndef read_held():\n    return held.shape", namespace
        )
        baseline = _rss_mb()  # with the new 100 MB global, before any call ships it
        for _ in range(20):
            manager.wait(manager.submit(namespace["read_held"]), timeout=120)
        row["kernel RSS growth after 20 calls with a 100 MB global (MB)"] = _rss_mb() - baseline
    finally:
        manager.shutdown()
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    runs = []
    for number in range(args.runs):
        print(f"run {number + 1}/{args.runs} ...", file=sys.stderr, flush=True)
        runs.append(one_run())
    print(
        f"nbbg {nbbg.__version__}, Python {sys.version.split()[0]}, numpy {np.__version__}, "
        f"pandas {pd.__version__}, {os.cpu_count()} cores, {args.runs} runs, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
    )
    print("| row | median of runs | runs |")
    print("|---|---|---|")
    for name in runs[0]:
        values = [run[name] for run in runs]
        shown = ", ".join(f"{v:.3g}" for v in values)
        print(f"| {name} | {statistics.median(values):.3g} | {shown} |")


if __name__ == "__main__":
    main()
