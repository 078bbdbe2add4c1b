"""Every job sees the kernel as it is at submit, through the jobs API with real workers.

Callbacks here are defined in a ``__main__`` namespace, as notebook cells
define them, so cloudpickle sends them by value with the globals they read:
the case where warm workers used to keep stale copies. One manager with a
single worker makes every job reuse the warm worker that ran the previous one.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nbbg
from tests.conftest import wait_until


class Notebook:
    """A ``__main__`` namespace to run cells in, like a kernel's."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {"__name__": "__main__"}

    def run(self, cell: str) -> None:
        exec(textwrap.dedent(cell), self.namespace)  # the test's own cells

    def __getitem__(self, name: str) -> Any:
        return self.namespace[name]


@pytest.fixture
def one_worker(store_dir: Path) -> Iterator[nbbg.LokyManager]:
    manager = nbbg.LokyManager(max_workers=1, cache=str(store_dir))
    try:
        yield manager
    finally:
        manager.shutdown()


@pytest.fixture
def kernel_state() -> Iterator[None]:
    """Put back the test process's environment, directory and sys.path."""
    environ, cwd, path = dict(os.environ), os.getcwd(), list(sys.path)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd)
        sys.path[:] = path


def run(manager: nbbg.LokyManager, fn: Any, *args: Any) -> Any:
    return manager.wait(manager.submit(fn, *args), timeout=60)


def occupy(manager: nbbg.LokyManager, fn: Any, *args: Any) -> str:
    """Submit ``fn`` and return its job id once it runs, so the jobs after it queue."""
    job_id = manager.submit(fn, *args)
    wait_until(lambda: manager.job(job_id).state is nbbg.JobState.RUNNING, what="the blocker")
    return job_id


EDITS = {
    "list": ("data = [1, 2, 3]", "data.append(4)", "sum(data)", 6, 10),
    "dict": ("data = {'scale': 1}", "data['scale'] = 5", "data['scale']", 1, 5),
    "set": ("data = {1, 2}", "data.add(7)", "sum(data)", 3, 10),
    "instance": (
        "class Box:\n    def __init__(self): self.value = 1\ndata = Box()",
        "data.value = 42",
        "data.value",
        1,
        42,
    ),
    "numpy": (
        "import numpy as np\ndata = np.zeros(4_000_000)",  # 32 MB: write-watched, shared memory
        "data[123_456] = 9.5",
        "float(data.sum())",
        0.0,
        9.5,
    ),
    "pandas": (
        "import numpy as np, pandas as pd\n"
        "data = pd.DataFrame({'price': np.ones(2_000_000), 'qty': np.arange(2_000_000.0)})",
        "data['price'] *= 1.5\ndata.drop(index=0, inplace=True)",
        "float(data['price'].sum())",
        2_000_000.0,
        1.5 * 1_999_999,
    ),
}


@pytest.mark.parametrize("kind", list(EDITS))
def test_object_edited_in_place_between_two_jobs_reaches_the_second(
    one_worker: nbbg.LokyManager, kind: str
) -> None:
    setup, edit, expression, before, after = EDITS[kind]
    notebook = Notebook()
    notebook.run(setup)
    notebook.run(f"def read():\n    return {expression}")
    assert run(one_worker, notebook["read"]) == before
    first_worker = one_worker.workers()[0].pid
    notebook.run(edit)
    assert run(one_worker, notebook["read"]) == after
    assert one_worker.workers()[0].pid == first_worker, "the same warm worker ran both"
    assert run(one_worker, notebook["read"]) == after, "and the cached copy is the new one"


def test_closure_and_default_argument_edited_in_place_reach_the_next_job(
    one_worker: nbbg.LokyManager,
) -> None:
    cells = {"rows": [1]}

    def total(extra: list[int] = [10]) -> int:  # noqa: B006 - the default is what is edited
        return sum(cells["rows"]) + sum(extra)

    assert run(one_worker, total) == 11
    cells["rows"].append(5)
    total.__defaults__[0].append(100)  # type: ignore[index]
    assert run(one_worker, total) == 116


def test_edit_of_a_global_read_only_by_a_helper_of_a_helper_reaches_the_next_job(
    one_worker: nbbg.LokyManager,
) -> None:
    notebook = Notebook()
    notebook.run(
        """
        table = {"rate": 1}
        def level_5(): return table["rate"]
        def level_4(): return level_5()
        def level_3(): return level_4()
        def level_2(): return level_3()
        def level_1(): return level_2()
        def countdown(n): return level_1() if n == 0 else countdown(n - 1)
        def read(): return countdown(3)
        """
    )
    assert run(one_worker, notebook["read"]) == 1
    notebook["table"]["rate"] = 7
    assert run(one_worker, notebook["read"]) == 7


def test_environment_directory_and_sys_path_set_in_the_kernel_reach_the_next_job(
    one_worker: nbbg.LokyManager, kernel_state: None, tmp_path: Path
) -> None:
    notebook = Notebook()
    notebook.run(
        """
        import os
        def where():
            import kernel_state_helper
            return os.environ.get("NBBG_TEST_SETTING"), os.getcwd(), kernel_state_helper.ANSWER
        def plain():
            return os.environ.get("NBBG_TEST_SETTING"), os.getcwd()
        """
    )
    first = run(one_worker, notebook["plain"])
    assert first == (None, os.getcwd())
    folder = tmp_path / "later_on_path"
    folder.mkdir()
    (folder / "kernel_state_helper.py").write_text("ANSWER = 'found'\n")
    os.environ["NBBG_TEST_SETTING"] = "on"
    os.chdir(tmp_path)
    sys.path.insert(0, str(folder))
    assert run(one_worker, notebook["where"]) == ("on", str(tmp_path), "found")
    del os.environ["NBBG_TEST_SETTING"]
    assert run(one_worker, notebook["plain"]) == (None, str(tmp_path))


def test_job_that_changes_its_own_environment_and_directory_does_not_leak(
    one_worker: nbbg.LokyManager, tmp_path: Path
) -> None:
    notebook = Notebook()
    notebook.run(
        f"""
        import os
        def meddle():
            os.environ["NBBG_LEAK"] = "leaked"
            os.chdir({str(tmp_path)!r})
            return os.getcwd()
        def look():
            return os.environ.get("NBBG_LEAK"), os.getcwd()
        """
    )
    assert run(one_worker, notebook["meddle"]) == str(tmp_path)
    assert run(one_worker, notebook["look"]) == (None, os.getcwd())


def test_job_that_edits_what_it_reads_does_not_change_the_next_jobs_copy(
    one_worker: nbbg.LokyManager,
) -> None:
    notebook = Notebook()
    notebook.run(
        """
        import numpy as np
        big = np.zeros(1_000_000)
        small = [0]
        def scribble():
            before = (float(big.sum()), list(small))
            big[:] = 1.0
            small.append(1)
            return before
        """
    )
    assert run(one_worker, notebook["scribble"]) == (0.0, [0])
    assert run(one_worker, notebook["scribble"]) == (0.0, [0]), "as a fork, not a thread"
    assert float(notebook["big"].sum()) == 0.0 and notebook["small"] == [0]


def test_local_module_edited_and_reloaded_runs_its_new_code_in_the_next_job(
    one_worker: nbbg.LokyManager, kernel_state: None, tmp_path: Path
) -> None:
    source = tmp_path / "edited_helper.py"
    source.write_text("def version():\n    return 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import edited_helper  # type: ignore[import-not-found]

        notebook = Notebook()
        notebook.namespace["edited_helper"] = edited_helper
        notebook.run(
            """
            def by_global():
                return edited_helper.version()
            def by_import():
                import edited_helper as inside
                return inside.version()
            """
        )
        assert run(one_worker, notebook["by_global"]) == 1
        assert run(one_worker, notebook["by_import"]) == 1
        source.write_text("def version():\n    return 'two'\n")  # another size: no stale .pyc
        importlib.reload(edited_helper)
        assert run(one_worker, notebook["by_global"]) == "two"
        assert run(one_worker, notebook["by_import"]) == "two"
    finally:
        sys.modules.pop("edited_helper", None)


def test_module_only_jobs_import_runs_the_file_as_it_is_now(
    one_worker: nbbg.LokyManager, kernel_state: None, tmp_path: Path
) -> None:
    source = tmp_path / "jobs_only_helper.py"
    source.write_text("def version():\n    return 1\n")
    sys.path.insert(0, str(tmp_path))
    notebook = Notebook()
    notebook.run(
        """
        def by_import():
            import jobs_only_helper
            return jobs_only_helper.version()
        """
    )
    assert run(one_worker, notebook["by_import"]) == 1
    assert "jobs_only_helper" not in sys.modules, "the kernel never imported it"
    source.write_text("def version():\n    return 'two'\n")
    assert run(one_worker, notebook["by_import"]) == "two", "as a fork importing it now"


def test_edit_made_while_a_job_runs_or_waits_does_not_change_that_job(
    one_worker: nbbg.LokyManager, tmp_path: Path
) -> None:
    notebook = Notebook()
    notebook.run(
        f"""
        import os, time, numpy as np
        data = np.ones(2_000_000)
        def slow_sum():
            open(os.path.join({str(tmp_path)!r}, "started"), "w").close()
            time.sleep(1.0)
            return float(data.sum())
        """
    )
    running = one_worker.submit(notebook["slow_sum"])
    wait_until(lambda: (tmp_path / "started").exists(), timeout=30, what="the job to start")
    queued = one_worker.submit(notebook["slow_sum"])
    notebook["data"][:] = 3.0  # the running job read its copy; the queued one was submitted
    assert one_worker.job(queued).state is nbbg.JobState.QUEUED
    assert one_worker.wait(running, timeout=30) == 2_000_000.0
    assert one_worker.wait(queued, timeout=30) == 2_000_000.0, "the queued job saw its submit"
    assert run(one_worker, notebook["slow_sum"]) == 6_000_000.0


def test_queued_job_reading_an_object_its_worker_lacks_gets_its_submit_time_copy(
    one_worker: nbbg.LokyManager,
) -> None:
    notebook = Notebook()
    notebook.run(
        """
        import time, numpy as np
        fresh = np.ones(2_000_000)
        def total():
            return float(fresh.sum())
        def block(seconds):
            time.sleep(seconds)
        """
    )
    occupy(one_worker, notebook["block"], 1.0)
    first = one_worker.submit(notebook["total"])  # the worker has never seen `fresh`
    notebook["fresh"][:] = 2.0
    second = one_worker.submit(notebook["total"])
    notebook["fresh"][:] = 3.0
    assert one_worker.job(first).state is nbbg.JobState.QUEUED
    assert one_worker.wait(first, timeout=30) == 2_000_000.0
    assert one_worker.wait(second, timeout=30) == 4_000_000.0
    assert run(one_worker, notebook["total"]) == 6_000_000.0


def test_large_values_travel_through_the_temporary_directory_without_dev_shm(
    one_worker: nbbg.LokyManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbbg._engine import parcels as _parcels

    # As in a container whose /dev/shm is missing (or too small for the value).
    monkeypatch.setattr(_parcels, "PARCEL_DIRECTORIES", (str(tmp_path / "no-shm"), str(tmp_path)))
    notebook = Notebook()
    notebook.run("import numpy as np\ndata = np.ones(2_000_000)\ndef total(): return data.sum()")
    assert run(one_worker, notebook["total"]) == 2_000_000.0
    notebook["data"][0] = 10.0
    assert run(one_worker, notebook["total"]) == 2_000_009.0
    wait_until(lambda: not list(tmp_path.glob("nbbg-parcel-*")), what="the parcels to be deleted")


def test_job_whose_directory_vanished_before_it_started_fails_clearly_and_the_next_runs(
    one_worker: nbbg.LokyManager, kernel_state: None, tmp_path: Path
) -> None:
    notebook = Notebook()
    notebook.run(
        """
        import time, numpy as np
        data = np.ones(2_000_000)
        def total():
            return float(data.sum())
        def block(seconds):
            time.sleep(seconds)
        """
    )
    occupy(one_worker, notebook["block"], 1.0)
    doomed_dir = tmp_path / "gone"
    doomed_dir.mkdir()
    os.chdir(doomed_dir)
    doomed = one_worker.submit(notebook["total"])  # queued, with the kernel in `gone`
    os.chdir(tmp_path)
    doomed_dir.rmdir()
    with pytest.raises(nbbg.JobFailedError, match="could not be set up in the worker"):
        one_worker.wait(doomed, timeout=30)
    # The worker never loaded what that job carried; the next job still gets it.
    assert run(one_worker, notebook["total"]) == 2_000_000.0


def test_queued_job_whose_copy_is_gone_and_object_changed_fails_clearly(
    one_worker: nbbg.LokyManager, tmp_path: Path
) -> None:
    notebook = Notebook()
    notebook.run(
        """
        import time, numpy as np
        data = np.ones(2_000_000)
        def total():
            return float(data.sum())
        def block():
            time.sleep(60)
        """
    )
    assert run(one_worker, notebook["total"]) == 2_000_000.0  # the worker holds `data` now
    blocker = occupy(one_worker, notebook["block"])
    waiting = one_worker.submit(notebook["total"])  # every worker holds it: no copy is made
    notebook["data"][0] = 5.0
    one_worker.cancel(blocker)  # its worker is replaced: the fresh one holds nothing
    with pytest.raises(nbbg.JobFailedError, match=r"global `data`.*changed before the job"):
        one_worker.wait(waiting, timeout=30)
    assert run(one_worker, notebook["total"]) == 2_000_004.0, "the next job runs"


def test_unpicklable_global_and_unimportable_module_give_clear_errors_then_jobs_run(
    one_worker: nbbg.LokyManager, kernel_state: None, tmp_path: Path
) -> None:
    notebook = Notebook()
    notebook.namespace["lock"] = threading.Lock()
    notebook.run("def locked():\n    with lock:\n        return 1\n")
    with pytest.raises(nbbg.UnpicklableCallbackError, match="global `lock`"):
        one_worker.submit(notebook["locked"])

    (tmp_path / "kernel_only_helper.py").write_text("def f():\n    return 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import kernel_only_helper  # type: ignore[import-not-found]

        sys.path.remove(str(tmp_path))  # the kernel keeps the module; the path is gone
        notebook.namespace["helper"] = kernel_only_helper.f
        notebook.run("def uses_helper():\n    return helper()\n")
        job = one_worker.submit(notebook["uses_helper"])
        with pytest.raises(nbbg.JobFailedError) as failed:
            one_worker.wait(job, timeout=30)
        message = failed.value.message
        assert "`kernel_only_helper`" in message and "cannot import" in message
        assert repr(sys.path[0]) in message, "the worker's sys.path is named"
        assert "died" not in message
    finally:
        sys.modules.pop("kernel_only_helper", None)
    notebook.run("def fine():\n    return 'served'\n")
    assert run(one_worker, notebook["fine"]) == "served"


# ------------------------------------------------------------ in a real kernel
DASH_APP = """
%load_ext nbbg
%load_ext autoreload
%autoreload 2
import sys, dash, numpy as np, pandas as pd
from dash import html, Input, Output
sys.path.insert(0, {folder!r})
import pricing

class Box:
    def __init__(self):
        self.value = 1

items, options, tags, box = [1, 2], {{"scale": 1}}, {{"a"}}, Box()
weights = np.ones(1_000_000)
df = pd.DataFrame({{"price": [1.0, 2.0, 3.0, None]}})
app = dash.Dash(__name__)
app.layout = html.Div([html.Button(id="go"), html.Div(id="out")])

@app.callback(Output("out", "children"), Input("go", "n_clicks"), background=True,
              prevent_initial_call=True, interval=100)
def total(n):
    seen = (sum(items), options["scale"], sorted(tags), box.value, int(weights.sum()))
    return f"{{pricing.label()}} {{df['price'].sum():.2f}} {{len(df)}} {{seen}}"

app.run(port={port})
"""

EDIT_CELL = """
items.append(3)
options["scale"] = 2
tags.add("b")
box.value = 5
weights[:10] = 0.0
"""


def test_dash_app_in_a_kernel_sees_in_place_edits_of_each_kind_and_autoreloaded_code(
    tmp_path: Path,
) -> None:
    from nbbg.client import DashClient
    from tests.support.helpers import free_port
    from tests.support.kernel_helpers import kernel

    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "pricing.py").write_text("def label():\n    return 'v1'\n")
    port = free_port()

    def click(client: DashClient, n: int) -> Any:
        result = client.wait(client.submit("out", {"go": n}), 60)
        assert result.outcome == "done", result
        return result.value["out"]["children"]

    with kernel(tmp_path) as session:
        session.run(DASH_APP.format(folder=str(folder), port=port), timeout=120)
        client = DashClient.open(f"http://127.0.0.1:{port}/")
        before = "(3, 1, ['a'], 1, 1000000)"
        after = "(6, 2, ['a', 'b'], 5, 999990)"
        assert click(client, 1) == f"v1 6.00 4 {before}"
        session.run('df["price"] *= 10')
        assert click(client, 2) == f"v1 60.00 4 {before}"
        session.run("df.dropna(inplace=True)\ndf.loc[0, 'price'] = 0.5")
        assert click(client, 3) == f"v1 50.50 3 {before}"
        session.run(EDIT_CELL)
        assert click(client, 4) == f"v1 50.50 3 {after}"
        (folder / "pricing.py").write_text("def label():\n    return 'version 2'\n")
        session.run("pass")  # %autoreload reloads changed modules before a cell runs
        assert click(client, 5) == f"version 2 50.50 3 {after}"
