"""The benchmark runs end to end against LokyManager and leaves no process behind.

A check that ``python -m bench`` works (the renderer-protocol client, the
server subprocess, every metric), not a timing assertion.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]


def _bench_processes(ports: set[str]) -> list[psutil.Process]:
    """Processes of this run: servers and all they spawn inherit ``BENCH_PORT``."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("BENCH_PORT") in ports:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_quick_bench_against_loky_works_and_leaves_no_processes(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--managers", "loky", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "| no-op job turnaround" in completed.stdout

    [results_file] = tmp_path.glob("results-*.json")
    samples = json.loads(results_file.read_text())["samples"]["loky"]
    assert all(ms is not None for ms in samples["turnaround"][0]["ms"])
    assert samples["throughput"][0]["lost"] == 0
    assert samples["set_progress_cost"][0]["outcome"] == "done"
    assert samples["progress_latency"][0]["seen"] > 0
    cancel = samples["cancel"][0]
    assert cancel["found_process"] == [True] and None not in cancel["stop_ms"]
    assert cancel["cancelled_job_outcome"] == ["ended"]
    assert cancel["concurrent_unharmed"] == [True]
    assert samples["refire"][0]["new_job_outcome"] == ["done"]
    assert samples["memory"][0]["outcomes"] == ["done"] * 4
    assert [rep["processes"] for rep in samples["leftover"]] == [0]

    logs = tmp_path.glob("server-*.log")
    ports = {log.name.rsplit("-", 1)[1].removesuffix(".log") for log in logs}
    assert ports
    assert _bench_processes(ports) == []
