"""The benchmark's process floor keeps Dash's manager contract: progress, set_props, results.

The benchmark only times no-op jobs on it, but a reference that answered a
callback wrongly would make every "÷ process floor" ratio meaningless; this
drives it the way Dash's poll handler does, with real forked workers.
"""

from __future__ import annotations

import time
from typing import Any

from dash import set_props

from bench.process_floor import ProcessFloorManager
from tests.support.helpers import wait_until

CONTEXT: dict[str, Any] = {"triggered_inputs": [], "inputs_list": [], "states_list": []}


def reports_then_returns(set_progress, n):
    set_progress((1, n))
    set_props("side", {"children": "halfway"})
    time.sleep(0.3)  # the poll below sees the progress before the result
    return n * 2


def fails(n):
    raise ValueError(f"bad {n}")


def test_process_floor_answers_progress_props_results_and_errors() -> None:
    manager = ProcessFloorManager(max_workers=1)  # one worker: the second job waits its turn
    try:
        reporting = manager.make_job_fn(reports_then_returns, True)
        failing = manager.make_job_fn(fails, False)
        first = manager.call_job_fn("a" * 64, reporting, [21], CONTEXT)
        second = manager.call_job_fn("b" * 64, failing, [3], CONTEXT)
        assert manager.job_running(first) and manager.job_running(second)

        assert wait_until(lambda: manager.get_progress("a" * 64), what="progress") == [1, 21]
        assert manager.get_updated_props("a" * 64) == {"side": {"children": "halfway"}}
        wait_until(lambda: manager.result_ready("a" * 64), what="the first result")
        assert manager.get_result("a" * 64, first) == 42
        assert not manager.job_running(first)

        wait_until(lambda: manager.result_ready("b" * 64), what="the queued job's error")
        error = manager.get_result("b" * 64, second)["background_callback_error"]
        assert error["msg"] == "bad 3" and "ValueError" in error["tb"]
    finally:
        manager.shutdown()
