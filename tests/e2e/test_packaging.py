"""What ``pip install nbbg`` would get: the sdist and the wheel, built as a release builds them.

``python -m build`` makes the sdist from this checkout and the wheel from that
sdist, in an isolated environment (its build backend comes from the package
index). The checks hold for any layout of ``nbbg/``: every module in the source
tree must be in the wheel, whatever subpackage it lives in.
"""

from __future__ import annotations

import email
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.helpers import REPO

PACKAGE = REPO / "nbbg"
PROJECT_URL = "https://github.com/nbbg/nbbg"


def _source_version() -> str:
    found = re.search(r'^__version__ = "([^"]+)"', (PACKAGE / "__init__.py").read_text(), re.M)
    assert found, "nbbg/__init__.py sets __version__"
    return found.group(1)


VERSION = _source_version()


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path


def _run(argv: list[str], cwd: Path, timeout: float) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)], out, 600)
    [sdist] = out.glob("nbbg-*.tar.gz")
    [wheel] = out.glob("nbbg-*.whl")
    return Dists(sdist, wheel)


def _source_modules() -> set[str]:
    """Every ``.py`` file of the package in this checkout, as ``nbbg/...`` paths."""
    return {
        path.relative_to(REPO).as_posix()
        for path in PACKAGE.rglob("*.py")
        if "__pycache__" not in path.parts
    }


def _wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_wheel_holds_every_module_of_the_source_tree_and_py_typed(dists: Dists) -> None:
    names = _wheel_names(dists.wheel)
    modules = _source_modules()
    assert "nbbg/__init__.py" in modules
    assert modules - names == set()
    assert "nbbg/py.typed" in names


def test_wheel_carries_the_license_and_nothing_but_the_package(dists: Dists) -> None:
    names = _wheel_names(dists.wheel)
    dist_info = f"nbbg-{VERSION}.dist-info/"
    assert {name.split("/")[0] + "/" for name in names} == {"nbbg/", dist_info}
    with zipfile.ZipFile(dists.wheel) as archive:
        license_text = archive.read(f"{dist_info}licenses/LICENSE").decode()
    assert license_text == (REPO / "LICENSE").read_text()
    assert "MIT License" in license_text and "the nbbg developers" in license_text


def test_wheel_metadata_names_version_license_and_project_urls(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as archive:
        metadata = email.message_from_bytes(archive.read(f"nbbg-{VERSION}.dist-info/METADATA"))
    assert metadata["Name"] == "nbbg" and metadata["Version"] == VERSION
    assert metadata["License-Expression"] == "MIT"
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL") or [])
    assert urls["Source"] == PROJECT_URL and urls["Issues"] == f"{PROJECT_URL}/issues"
    assert "Typing :: Typed" in (metadata.get_all("Classifier") or [])
    assert metadata["Description-Content-Type"] == "text/markdown"


def test_sdist_holds_the_package_license_changelog_and_build_config(dists: Dists) -> None:
    root = f"nbbg-{VERSION}/"
    with tarfile.open(dists.sdist) as archive:
        names = {name.removeprefix(root) for name in archive.getnames()}
    expected = {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "nbbg/py.typed"}
    assert (expected | _source_modules()) - names == set()


def test_twine_accepts_both_for_upload(dists: Dists) -> None:
    out = _run(
        [sys.executable, "-m", "twine", "check", "--strict", str(dists.sdist), str(dists.wheel)],
        REPO,
        120,
    )
    assert out.count("PASSED") == 2, out


def test_installed_wheel_imports_every_module(dists: Dists, tmp_path: Path) -> None:
    """Installed alone (dependencies from this environment), the wheel's nbbg imports whole."""
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
    _run([*pip, str(dists.wheel)], tmp_path, 300)
    # -I: not this checkout (PYTHONPATH, the current directory), only the installed wheel.
    # A __main__ module is a command, not a module to import.
    check = (
        f"import sys; sys.path.insert(0, {str(target)!r})\n"
        "import importlib, pkgutil, nbbg\n"
        f"assert nbbg.__file__.startswith({str(target)!r}), nbbg.__file__\n"
        "names = [m.name for m in pkgutil.walk_packages(nbbg.__path__, 'nbbg.')]\n"
        "names = [name for name in names if not name.endswith('.__main__')]\n"
        "for name in names: importlib.import_module(name)\n"
        "print(len(names), nbbg.LokyManager.__name__)\n"
    )
    imported, manager = _run([sys.executable, "-I", "-c", check], tmp_path, 120).split()
    modules = {m for m in _source_modules() if not m.endswith("__main__.py")}
    assert int(imported) == len(modules) - 1  # each but nbbg/__init__.py is one import
    assert manager == "LokyManager"
