"""No usable home directory: the default store falls back to a temporary one, with a warning."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nbbg
from tests.support.helpers import REPO


def _unusable_home(tmp_path: Path) -> Path:
    """A home under a regular file: no directory can be made in it, not even by root."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    return blocker / "home"


def test_no_usable_home_gives_a_temporary_store_and_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = _unusable_home(tmp_path)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    with pytest.warns(nbbg.TemporaryStoreWarning) as caught:
        manager = nbbg.LokyManager(max_workers=1)
    try:
        assert len(caught) == 1
        message = str(caught[0].message)
        assert f"cannot create its result store in {home}/.cache/nbbg/store" in message
        assert "will not outlive this kernel" in message
        assert "XDG_CACHE_HOME" in message and "LokyManager(cache=" in message
        store = Path(manager.handle.directory)
        assert store.is_dir() and str(home) not in str(store)
        assert store.stat().st_mode & 0o077 == 0, "private to the user"
        assert manager.wait(manager.submit(sum, [1, 2, 3]), timeout=30) == 6
    finally:
        manager.shutdown()


def test_a_directory_the_user_names_is_never_replaced(tmp_path: Path) -> None:
    named = _unusable_home(tmp_path) / "store"
    with pytest.raises(nbbg.StoreError, match="cannot be used") as failed:
        nbbg.LokyManager(cache=str(named), prewarm=False)
    assert str(named) in str(failed.value)


def test_the_temporary_store_is_removed_when_the_kernel_exits(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, warnings
        import nbbg
        warnings.simplefilter("default")
        manager = nbbg.LokyManager(max_workers=1)
        print(manager.handle.directory, flush=True)
        if os.fork() == 0:  # a forked child's exit must leave the store alone
            raise SystemExit(0)
        os.wait()
        print(os.path.isdir(manager.handle.directory), flush=True)
        print(manager.wait(manager.submit(sum, [1, 2]), timeout=30), flush=True)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"}
    env.update(HOME=str(_unusable_home(tmp_path)), PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    directory, alive_after_child, result = done.stdout.split()
    assert (alive_after_child, result) == ("True", "3")
    assert not os.path.exists(directory), "removed at exit"
    assert done.stderr.count("TemporaryStoreWarning") == 1, done.stderr
