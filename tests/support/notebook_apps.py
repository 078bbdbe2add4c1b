"""The notebook cells the kernel tests run: Dash apps with background progress callbacks.

``slow_job`` reports ``(i, STEPS)`` every 20 ms until the test creates its
release file (so the test, not a timer, decides when it ends) and writes its
process id first, so the test can watch that process. ``fast_job`` calls
``set_progress`` about 200 times a second for three seconds.
"""

from __future__ import annotations

from pathlib import Path

from nbbg.client import DashClient
from tests.support.kernel_helpers import CellResult, KernelSession, Update

STEPS = 3000

_APP = """
import os, time, dash
from dash import html, Input, Output
{make_app}
app.layout = html.Div([html.Button(id="go"), html.Div(id="out"),
                       html.Progress(id="bar"), html.Button(id="stop")])

@app.callback(Output("out", "children"), Input("go", "n_clicks"), background=True,
              progress=[Output("bar", "value"), Output("bar", "max")],
              cancel=[Input("stop", "n_clicks")], prevent_initial_call=True, interval=100)
def {name}(set_progress, n):
{body}
app.run(port={port})
"""

_SLOW_BODY = """
    with open(os.path.join({workdir!r}, f"{{n}}.pid"), "w") as pid_file:
        pid_file.write(str(os.getpid()))
    for i in range(1, {steps} + 1):
        set_progress((i, {steps}))
        if os.path.exists(os.path.join({workdir!r}, f"{{n}}.release")):
            break
        time.sleep(0.02)
    return f"done {{n}}"
"""

_FAST_BODY = """
    calls, start = 0, time.monotonic()
    while time.monotonic() - start < 3.0:
        calls += 1
        set_progress((min(calls, 600), 600))
        time.sleep(max(0.0, start + calls / 200 - time.monotonic()))
    return f"{calls} {time.monotonic() - start:.3f}"
"""

NBBG_APP = "app = dash.Dash(__name__)"


def diskcache_app(directory: Path) -> str:
    return (
        "import diskcache\n"
        "from dash import DiskcacheManager\n"
        f"own_manager = DiskcacheManager(diskcache.Cache({str(directory)!r}))\n"
        "app = dash.Dash(__name__, background_callback_manager=own_manager)"
    )


def slow_app(port: int, workdir: Path, make_app: str = NBBG_APP) -> str:
    body = _SLOW_BODY.format(workdir=str(workdir), steps=STEPS)
    return _APP.format(make_app=make_app, name="slow_job", body=body, port=port)


def fast_app(port: int) -> str:
    return _APP.format(make_app=NBBG_APP, name="fast_job", body=_FAST_BODY, port=port)


def run_app_cell(
    session: KernelSession, code: str, port: int
) -> tuple[CellResult, str, DashClient]:
    """Run the app cell; return its result, the id of the panel shown under it, and a client."""
    result = session.run(code)
    open_panels = session.read(lambda: {m.comm_id for m in session.widgets.panels()})
    panels = [i for i in result.widget_ids() if i in open_panels]
    assert len(panels) == 1, f"expected one jobs panel under the app, got {result.outputs}"
    return result, panels[0], DashClient.open(f"http://127.0.0.1:{port}/")


def release(workdir: Path, n: int) -> None:
    (workdir / f"{n}.release").write_text("go")


def job_pid(workdir: Path, n: int) -> int | None:
    path = workdir / f"{n}.pid"
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def update_rate(updates: list[Update]) -> float:
    """Widget updates per second while a job's bar moves (all widgets, kernel clock).

    The window runs from the bar's first to its last move while running
    (those change ``value``/``description``; the one that creates the bar also
    sets ``max``, the final one ``bar_style``), so building the row and
    finishing it do not count.
    """
    moving = [
        u for u in updates if "description" in u.keys and not {"bar_style", "max"} & set(u.keys)
    ]
    assert len(moving) >= 10, f"the bar moved only {len(moving)} times"
    start, end = moving[0].sent_at, moving[-1].sent_at
    during = [u for u in updates if start <= u.sent_at <= end]
    return (len(during) - 1) / (end - start)
