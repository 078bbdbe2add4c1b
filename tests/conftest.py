"""Shared fixtures: headless Chromium for ``dash_duo``, managers, process accounting."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.chrome.options import Options

import nbbg
from tests.support.browser import CHROMIUM, CHROMIUM_FLAGS
from tests.support.helpers import free_port, pid_gone, wait_until
from tests.support.server_thread import ServerThreadRunner

__all__ = ["free_port", "pid_gone", "wait_until", "worker_pids"]

# Ray reports usage statistics to an outside server unless told not to; its
# clusters and the kernels joining them use token authentication (~/.ray/auth_token).
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("RAY_AUTH_MODE", "token")


def pytest_setup_options() -> Options:
    """Dash's hook: the browser ``dash_duo`` drives (Debian's chromium)."""
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", *CHROMIUM_FLAGS):
        options.add_argument(flag)
    return options


def pytest_configure(config: pytest.Config) -> None:
    config.option.headless = True


@pytest.fixture(autouse=True)
def _dash_duo_port_free_now() -> None:
    """Give ``dash_duo`` a port that is free now, before every test.

    It counts up from 58050, inside the range the OS hands out for port 0, where
    other tests' servers (and parallel runs) live. A taken port makes its server
    thread die, and Dash's runner then retries, raising SystemExit into every
    thread started since.
    """
    from dash.testing.application_runners import BaseDashRunner

    BaseDashRunner._next_port = free_port()  # type: ignore[attr-defined]


@pytest.fixture
def dash_thread_server() -> Iterator[ServerThreadRunner]:
    """Overrides dash[testing]'s fixture of this name, which ``dash_duo`` uses."""
    with ServerThreadRunner() as runner:
        yield runner


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def manager(store_dir: Path) -> Iterator[nbbg.LokyManager]:
    """A two-worker manager with a private store, shut down after the test."""
    mgr = nbbg.LokyManager(max_workers=2, cache=str(store_dir))
    yield mgr
    mgr.shutdown()


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One real Ray on 127.0.0.1 for the test module (it takes seconds and ~620 MB)."""
    from tests.support.ray_helpers import start_local_ray, stop_local_ray

    start_local_ray()
    yield
    stop_local_ray()


@pytest.fixture(params=["loky", "ray"])
def any_manager(request: pytest.FixtureRequest, store_dir: Path) -> Iterator[Any]:
    """A two-worker ``LokyManager``, then a ``RayManager`` on a local Ray."""
    if request.param == "ray":
        request.getfixturevalue("local_ray")
        mgr: Any = nbbg.RayManager(max_workers=2, cache=str(store_dir))
    else:
        mgr = nbbg.LokyManager(max_workers=2, cache=str(store_dir))
    yield mgr
    mgr.shutdown()


def worker_pids(mgr: nbbg.LokyManager) -> set[int]:
    return {w.pid for w in mgr.workers() if w.pid is not None}
