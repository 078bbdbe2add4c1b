"""The layers hold (import-linter), and the code is typed (mypy --strict) and lint-clean (ruff)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.helpers import REPO

LINT_IMPORTS = ["-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]


def _run(
    args: list[str], cwd: Path, env_path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = None
    if env_path is not None:
        import os

        env = dict(os.environ, PYTHONPATH=str(env_path))
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )


def test_the_three_layers_import_only_downwards() -> None:
    checked = _run(LINT_IMPORTS, REPO)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "3 kept, 0 broken" in checked.stdout


def test_an_engine_module_importing_dash_breaks_the_contract(tmp_path: Path) -> None:
    shutil.copytree(REPO / "nbbg", tmp_path / "nbbg")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    table = tmp_path / "nbbg" / "_engine" / "table.py"
    table.write_text(table.read_text() + "\nimport dash  # noqa\n")
    checked = _run(LINT_IMPORTS, tmp_path, env_path=tmp_path)
    assert checked.returncode != 0
    assert "the engine imports no Dash" in checked.stdout and "BROKEN" in checked.stdout
    assert "nbbg._engine.table -> dash" in checked.stdout


def test_mypy_strict_finds_nothing() -> None:
    checked = _run(["-m", "mypy"], REPO)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_ruff_finds_nothing() -> None:
    checked = _run(["-m", "ruff", "check", "nbbg", "tests", "bench"], REPO)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    formatted = _run(["-m", "ruff", "format", "--check", "nbbg", "tests", "bench"], REPO)
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr
