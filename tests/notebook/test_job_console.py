"""The jobs panel as a job console, through a real kernel: output, tracebacks, ETA, usage.

The app's callbacks are defined in a notebook cell, so their tracebacks must
name that cell (``Cell In[N], line L``) with its source line, in the panel's
expanded row and in the error the app itself receives (``on_error``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbbg.client import DashClient
from tests.support.helpers import free_port
from tests.support.kernel_helpers import KernelSession, PanelRow, kernel

WAIT = 60.0

APP = """
import logging, os, sys, time, dash
from dash import html, Input, Output
app = dash.Dash(__name__)
app.layout = html.Div([html.Button(id="go"), html.Div(id="out"),
                       html.Button(id="talk"), html.Div(id="said"),
                       html.Button(id="count"), html.Div(id="counted"),
                       html.Progress(id="bar")])

def check(n):
    total = n * 2
    raise ValueError(f"no luck with {{total}}")

@app.callback(Output("out", "children"), Input("go", "n_clicks"), background=True,
              prevent_initial_call=True, interval=100, on_error=lambda exc: str(exc))
def failing(n):
    for k in range(5):
        print(f"step {{k}} of click {{n}}")
    logging.getLogger("demo").warning("careful with click %d", n)
    return check(n)

@app.callback(Output("said", "children"), Input("talk", "n_clicks"), background=True,
              prevent_initial_call=True, interval=100)
def talker(n):
    for k in range(30):
        print(f"talker {{n}} says {{k}}")
        time.sleep(0.02)
    return n

@app.callback(Output("counted", "children"), Input("count", "n_clicks"), background=True,
              progress=[Output("bar", "value"), Output("bar", "max")],
              prevent_initial_call=True, interval=100)
def counter(set_progress, n):
    for k in range(1, 9):
        time.sleep(0.5)
        set_progress((k, 8))
    return n

app.run(port={port})
"""


def app_line(source: str) -> int:
    """The line of ``source`` in the app cell, as IPython numbers it."""
    lines = APP.strip().splitlines()
    return next(k for k, line in enumerate(lines, 1) if line.strip() == source)


class Console:
    def __init__(self, session: KernelSession, panel_id: str, client: DashClient) -> None:
        self.session, self.panel_id, self.client = session, panel_id, client

    def header_button(self, description: str) -> str:
        widgets = self.session.widgets

        def find() -> str:
            header = widgets.children(widgets.models[self.panel_id])[0]
            parts = widgets.children(header)
            return next(p.comm_id for p in parts if p.state.get("description") == description)

        return self.session.read(find)

    def history_view(self) -> str | None:
        widgets = self.session.widgets
        for part in widgets.children(widgets.models[self.panel_id]):
            if "nbbg-history" in part.state.get("_dom_classes", []):
                return str(part.state.get("value", "")) or None
        return None

    def rows(self) -> list[PanelRow]:
        return self.session.read(lambda: self.session.widgets.rows(self.panel_id))

    def wait_row(self, title: str, what: str, check) -> PanelRow:
        def matching() -> PanelRow | None:
            rows = self.session.widgets.rows(self.panel_id)
            found = next((r for r in rows if r.title.endswith(title)), None)
            return found if found is not None and check(found) else None

        return self.session.wait_for(matching, WAIT, f"{title}: {what}")


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    with kernel(tmp_path) as session:
        session.run("%load_ext nbbg\n%nbbg workers 2")
        port = free_port()
        result = session.run(APP.strip().format(port=port))
        open_panels = session.read(lambda: {m.comm_id for m in session.widgets.panels()})
        panels = [i for i in result.widget_ids() if i in open_panels]
        assert len(panels) == 1
        yield Console(session, panels[0], DashClient.open(f"http://127.0.0.1:{port}/"))


def test_a_failed_job_shows_its_output_warning_and_cell_traceback_and_nothing_spills(
    console: Console,
) -> None:
    session = console.session
    app_cell = session.run("print(get_ipython().execution_count)")  # numbers the cells
    app_cell_number = int(app_cell.stdout) - 1
    busy = session.execute("import time\nfor _ in range(40):\n    time.sleep(0.05)", timeout=WAIT)

    result = console.client.run("out", {"go": 1}, timeout=WAIT)
    assert result.outcome == "done", "on_error turns the failure into the output"
    app_error = result.value["out"]["children"]
    assert "ValueError: no luck with 2" in app_error
    raise_line = app_line('raise ValueError(f"no luck with {{total}}")')
    assert f"Cell In[{app_cell_number}], line {raise_line}, in check" in app_error
    assert 'raise ValueError(f"no luck with {total}")' in app_error
    assert "<dynamic-code>" not in app_error and "nbbg/_engine" not in app_error

    # (Each widget of a row updates in a message of its own: wait for both.)
    row = console.wait_row(
        "go.n_clicks=1", "failed, saying why", lambda r: r.state == "error" and r.text
    )
    assert row.text == "ValueError: no luck with 2", "the row itself says why"
    assert row.details is None
    session.click(row.toggle_id)
    row = console.wait_row("go.n_clicks=1", "expanded", lambda r: r.details is not None)
    details = row.details
    for k in range(5):
        assert f"step {k} of click 1" in details
    assert "WARNING demo: careful with click 1" in details
    assert f"Cell In[{app_cell_number}], line {app_line('return check(n)')}, in failing" in details
    assert "return check(n)" in details
    assert row.prominent() == ["WARNING demo: careful with click 1"], "the warning stands out"
    assert 'class="nbbg-traceback"' in (row.details_html or "")

    recorded = session.run(
        "import nbbg\n"
        "record = nbbg.history(name='failing')[0]\n"
        "print(record.state.value, '|', record.error, '|', record.label)\n"
        "print('\\n'.join(line.text for line in record.output))\n"
        "print(record.traceback)\n"
        "try:\n"
        "    record.rerun()\n"
        "except nbbg.NotRerunnableError as exc:\n"
        "    print('rerun:', exc)"
    )
    first, *rest = recorded.stdout.splitlines()
    assert first == "error | ValueError: no luck with 2 | go.n_clicks=1"
    assert "step 4 of click 1" in rest and "WARNING demo: careful with click 1" in rest
    assert f"  Cell In[{app_cell_number}], line {raise_line}, in check" in rest
    assert (
        rest[-1].startswith("rerun: job ") and "trigger the callback in the app again" in rest[-1]
    )
    table = session.run("%nbbg history").stdout
    assert "failing" in table and "ValueError: no luck with 2" in table

    session.click(console.header_button("History"))
    shown = session.wait_for(console.history_view, WAIT, "the panel's history view")
    assert re.search(r"failing</td>.*>error</span>.*ValueError: no luck with 2", shown)

    later = session.run("print('a later cell')")
    for cell in (busy, later):  # (the cells that print them on purpose aside)
        for text in ("step 0 of click", "careful with click", "no luck"):
            assert text not in cell.stdout + cell.stderr, "a job's output stays out of cells"


def test_two_concurrent_jobs_each_show_only_their_own_lines(console: Console) -> None:
    first = console.client.submit("said", {"talk": 1})
    second = console.client.sibling().submit("said", {"talk": 2})
    for call in (first, second):
        assert console.client.sibling().wait(call, WAIT).outcome == "done"
    for n in (1, 2):
        row = console.wait_row(f"talk.n_clicks={n}", "done", lambda r: r.state == "done")
        console.session.click(row.toggle_id)
        row = console.wait_row(f"talk.n_clicks={n}", "expanded", lambda r: r.details is not None)
        said = re.findall(r"talker (\d) says (\d+)", row.details or "")
        assert said == [(str(n), str(k)) for k in range(30)]


ETA = re.compile(r"(\d+)/8 \[(\d\d):(\d\d)<(\d\d):(\d\d), [\d.]+ (?:it/s|s/it)\]")


def test_the_time_left_counts_down_for_value_max_progress(console: Console) -> None:
    call = console.client.submit("counted", {"count": 1})
    seen: list[tuple[int, int]] = []

    def time_left_seen_three_times() -> bool:
        rows = console.session.widgets.rows(console.panel_id)
        row = next((r for r in rows if r.title.endswith("count.n_clicks=1")), None)
        match = ETA.fullmatch(row.bar_text) if row is not None else None
        if match:
            shown = (int(match[1]), int(match[4]) * 60 + int(match[5]))
            if not seen or seen[-1] != shown:
                seen.append(shown)
        return len(seen) >= 3

    console.session.wait_for(time_left_seen_three_times, WAIT, "the ETA text to change")
    assert console.client.wait(call, WAIT).outcome == "done"
    lefts = [left for _value, left in seen]
    assert lefts[-1] < lefts[0], f"the time left went down: {seen}"
    done = console.wait_row(
        "count.n_clicks=1",
        "done, with its rate and usage",
        lambda r: r.state == "done" and r.cancel_id is None and r.bar_text.startswith("8/8"),
    )
    assert re.fullmatch(r"8/8 \[00:0\d, [\d.]+ it/s\]", done.bar_text), done.bar_text
    assert done.usage.endswith("s CPU") and "MiB" in done.usage, "peak memory and CPU shown"


FIRST_SESSION = """
import nbbg, time
def slow_square(x):
    time.sleep(0.2)
    print(f"squaring {x}")
    return x * x
manager = nbbg.kernel_manager()
print(manager.wait(manager.submit(slow_square, 7), timeout=60))
"""

SECOND_SESSION = """
import nbbg
past = nbbg.history()
record = past[0]
print(len(past), record.name, record.arguments, record.result(), record.output[-1].text)
print(nbbg.kernel_manager().wait(record.rerun(), timeout=60))
print(nbbg.history()[0].arguments, len(nbbg.history()))
"""


def test_a_restarted_kernel_on_the_same_store_sees_and_reruns_past_jobs(tmp_path: Path) -> None:
    with kernel(tmp_path) as first:
        first.run("%load_ext nbbg")
        assert first.run(FIRST_SESSION).stdout.strip() == "49"
    with kernel(tmp_path) as second:  # a new kernel process, the same store
        second.run("%load_ext nbbg")
        lines = second.run(SECOND_SESSION).stdout.splitlines()
        assert lines == ["1 slow_square (7) 49 squaring 7", "49", "(7) 2"]
        table = second.run("%nbbg history 5").stdout
        assert table.splitlines()[0] == "past jobs: 2 newest first"
        assert table.count("slow_square") == 2


def test_rerun_from_the_panel_submits_a_finished_jobs_call_again(tmp_path: Path) -> None:
    with kernel(tmp_path) as session:
        session.run("%load_ext nbbg")
        shown = session.run(
            "import nbbg\n"
            "def cube(x):\n"
            "    print(f'cubing {x}')\n"
            "    return x ** 3\n"
            "manager = nbbg.kernel_manager()\n"
            "first = manager.submit(cube, 3)\n"
            "print(manager.wait(first, timeout=60))\n"
            "nbbg.panel()"
        )
        assert shown.stdout.strip() == "27"
        panel_id = shown.widget_ids()[0]

        def rows() -> list[PanelRow]:
            return session.widgets.rows(panel_id)

        done = session.wait_for(
            lambda: next((r for r in rows() if r.state == "done" and r.rerun_id), None),
            WAIT,
            "the finished job's Re-run button",
        )
        assert done.title == "cube" and done.cancel_id is None
        session.click(done.rerun_id)
        again = session.wait_for(
            lambda: next(
                (r for r in rows() if r.job_id != done.job_id and r.state == "done"), None
            ),
            WAIT,
            "the re-run job to finish",
        )
        assert again.title == "cube"
        result = session.run(f"print(manager.wait({again.job_id!r}, timeout=60))")
        assert result.stdout.strip() == "27"
        record = session.run(f"print(nbbg.history()[0].id == {again.job_id!r})")
        assert record.stdout.strip() == "True"
