"""Shared fixtures: headless Chromium for ``dash_duo``, managers, process accounting."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from selenium.webdriver.chrome.options import Options

import nbbg

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def pytest_setup_options() -> Options:
    """Dash's hook: the browser ``dash_duo`` drives (Debian's chromium)."""
    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    return options


def pytest_configure(config: pytest.Config) -> None:
    config.option.headless = True


@pytest.fixture(autouse=True)
def _dash_duo_port_free_now() -> None:
    """Give ``dash_duo`` a port that is free now, before every test.

    It counts up from 58050, inside the range the OS hands out for port 0, where
    other tests' servers (and parallel runs) live. A taken port makes its server
    thread die, and ``dash_duo`` then stops that dead thread by raising
    SystemExit into whatever thread reuses its id.
    """
    from dash.testing.application_runners import BaseDashRunner

    BaseDashRunner._next_port = free_port()  # type: ignore[attr-defined]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def manager(store_dir: Path) -> Iterator[nbbg.LokyManager]:
    """A two-worker manager with a private store, shut down after the test."""
    mgr = nbbg.LokyManager(max_workers=2, cache=str(store_dir))
    yield mgr
    mgr.shutdown()


def worker_pids(mgr: nbbg.LokyManager) -> set[int]:
    return {w.pid for w in mgr.workers() if w.pid is not None}


def wait_until(condition, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"):
    """Poll ``condition`` until truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def child_pids() -> set[int]:
    return {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}
