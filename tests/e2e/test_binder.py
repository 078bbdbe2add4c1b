"""Binder, the way it builds: a fresh environment from ``binder/`` alone runs every notebook.

repo2docker installs ``binder/requirements.txt`` and then runs ``binder/postBuild``
from the repository root. This test does the same in a new virtual environment
(nothing from the test environment leaks in), then executes each notebook with
nbval there, with ``JUPYTERHUB_SERVICE_PREFIX`` set as on Binder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import tomllib

from tests.support.helpers import REPO

PREFIX = "/user/test/"

IFRAME_CHECK = textwrap.dedent(
    """
    import json, socket, sys
    import nbformat
    from nbclient import NotebookClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext nbbg"),
        nbformat.v4.new_code_cell(
            "from dash import Dash, html\\n"
            "app = Dash(__name__)\\n"
            "app.layout = html.Div('hi')\\n"
            f"app.run(port={port})"
        ),
    ]
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    html = [o["data"]["text/html"] for o in nb.cells[1].outputs if "text/html" in o.get("data", {})]
    print(json.dumps({"port": port, "html": html}))
    """
)


def _run(command: list[str], env: dict[str, str], cwd: Path, timeout: float) -> str:
    done = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, (
        f"{' '.join(command)} failed ({done.returncode}):\n"
        f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    return done.stdout


@pytest.mark.slow
def test_fresh_binder_environment_runs_every_notebook(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "VIRTUAL_ENV", "JUPYTER", "PYTEST"))
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["HOME"] = str(tmp_path / "home")  # no user-level kernels, config or caches
    env["XDG_CACHE_HOME"] = str(tmp_path / "home" / ".cache")
    env["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    requirements = REPO / "binder" / "requirements.txt"
    _run([python, "-m", "pip", "install", "-q", "-r", str(requirements)], env, REPO, 900)
    build_repo = tmp_path / "repo"  # postBuild builds from a copy: the checkout stays clean
    shutil.copytree(REPO, build_repo, ignore=shutil.ignore_patterns(".git", "*.egg-info", "build"))
    _run(["bash", str(build_repo / "binder" / "postBuild")], env, build_repo, 600)
    build_seconds = time.monotonic() - started
    installed = _run([python, "-c", "import nbbg, sys; print(nbbg.__file__)"], env, tmp_path, 60)
    assert str(venv) in installed, "nbbg must come from the Binder environment"

    env["JUPYTERHUB_SERVICE_PREFIX"] = PREFIX
    notebooks = tmp_path / "notebooks"
    # Binder cannot carry Ray (README, "When one machine is not enough"): its notebook stays out.
    ignored = shutil.ignore_patterns("*.py", "nbbg-*", "10_scale_out_ray.ipynb")
    shutil.copytree(REPO / "notebooks", notebooks, ignore=ignored)
    # The repository's pytest configuration comes along: its options (--timeout, ...)
    # must work with what binder/ installs.
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    started = time.monotonic()
    out = _run(
        [python, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", "notebooks"],
        env,
        tmp_path,
        1200,
    )
    run_seconds = time.monotonic() - started
    assert " passed" in out and "failed" not in out, out[-2000:]

    found = json.loads(_run([python, "-c", IFRAME_CHECK], env, tmp_path, 300).splitlines()[-1])
    assert any(f'src="{PREFIX}proxy/{found["port"]}/"' in html for html in found["html"]), found
    print(f"binder env built in {build_seconds:.0f} s; notebooks ran in {run_seconds:.0f} s")


def test_binder_requirements_cover_every_runtime_dependency() -> None:
    """postBuild installs nbbg with --no-deps: binder/requirements.txt holds its dependencies."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~\[; ]", requirement)[0].lower() for requirement in declared}
    pinned = {
        line.split("==")[0].strip().lower()
        for line in (REPO / "binder" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert names <= pinned, f"missing from binder/requirements.txt: {sorted(names - pinned)}"
