"""``%load_ext nbbg`` in a real kernel: defaults, ports, JupyterHub, legacy notebooks, unload."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import requests

from tests.support.helpers import free_port
from tests.support.kernel_helpers import KernelSession, kernel
from tests.support.notebook_apps import release, run_app_cell, slow_app

WAIT = 60.0
WORKERS = os.cpu_count()

STATE = """
import dash, jupyter_dash, nbbg
from dash.background_callback.managers import BaseBackgroundCallbackManager
probe = dash.Dash(__name__)
print(type(probe._background_manager).__name__)
print(dash.jupyter_dash.default_mode, "run_app" in vars(dash.jupyter_dash))
print(jupyter_dash.JupyterDash is nbbg.JupyterDash, jupyter_dash.JupyterDash is legacy_class)
"""


def _state(session: KernelSession) -> list[str]:
    return session.run(STATE).stdout.split("\n")[:3]


def _run_one_job(session: KernelSession, tmp_path: Path, n: int) -> None:
    """Serve the slow app, run job ``n`` to the end over HTTP, see it done in the panel."""
    port = free_port()
    _result, panel_id, client = run_app_cell(session, slow_app(port, tmp_path), port)
    job = client.submit("out", {"go": n})
    release(tmp_path, n)
    assert client.wait(job, 60).value == {"out": {"children": f"done {n}"}}
    session.wait_for(
        lambda: [r.state for r in session.widgets.rows(panel_id)] == ["done"],
        WAIT,
        "the panel to show the job done",
    )


def test_load_sets_defaults_and_unload_restores_them_and_stops_workers(tmp_path: Path) -> None:
    with kernel(tmp_path) as session:
        session.run("import jupyter_dash; legacy_class = jupyter_dash.JupyterDash")
        assert _state(session) == ["NoneType", "inline False", "False True"]

        session.run("%load_ext nbbg")
        assert _state(session) == ["LokyManager", "inline True", "True False"]
        session.wait_workers(WORKERS)
        own = session.run(
            "from dash import DiskcacheManager\n"
            "own = DiskcacheManager()\n"
            "print(dash.Dash(background_callback_manager=own)._background_manager is own)"
        )
        assert own.stdout.strip() == "True"
        _run_one_job(session, tmp_path, 1)
        panel_ids = session.read(lambda: [m.comm_id for m in session.widgets.panels()])

        session.run("%unload_ext nbbg")
        session.wait_workers(0)
        assert all(not session.widgets.models[i].open for i in panel_ids), "panels closed"
        assert _state(session) == ["NoneType", "inline False", "False True"]
        gone = session.execute("%nbbg")
        assert gone.reply_status == "error" and "`%nbbg` not found" in gone.stderr

        session.run("%load_ext nbbg")
        session.wait_workers(WORKERS)
        _run_one_job(session, tmp_path, 2)


def test_busy_port_raises_a_clear_error_naming_a_free_port(tmp_path: Path) -> None:
    with socket.socket() as holder, kernel(tmp_path) as session:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        session.run("%load_ext nbbg")
        failed = session.execute(slow_app(busy, tmp_path))

        assert failed.error is not None and failed.error["ename"] == "PortInUseError"
        assert f"port {busy} on 127.0.0.1 is already in use" in failed.error["evalue"]
        assert len(failed.error["traceback"]) == 1, "the message, not a traceback"
        suggested = int(re.search(r"app\.run\(port=(\d+)\)", failed.error["evalue"]).group(1))
        assert suggested != busy

        session.run(f"app.run(port={suggested})")
        assert requests.get(f"http://127.0.0.1:{suggested}/", timeout=30).status_code == 200


def test_jupyterhub_prefix_routes_the_app_through_the_proxy(tmp_path: Path) -> None:
    with kernel(tmp_path) as session:
        session.run(
            "import os, dash, dash._jupyter\n"
            "os.environ['JUPYTERHUB_SERVICE_PREFIX'] = '/user/ada/'\n"
            "def never(*args, **kwargs):\n"
            "    raise AssertionError('asked the front end for its proxy config')\n"
            "dash.jupyter_dash.infer_jupyter_proxy_config = never\n"
            "dash._jupyter._request_jupyter_config = never\n"
            "%load_ext nbbg"
        )
        port = free_port()
        result, _panel_id, _client = run_app_cell(session, slow_app(port, tmp_path), port)

        frames = [o["text/html"] for o in result.outputs if "<iframe" in o.get("text/html", "")]
        assert len(frames) == 1 and f'src="/user/ada/proxy/{port}/"' in frames[0]
        prefix = session.run("print(app.config.requests_pathname_prefix)").stdout.strip()
        assert prefix == f"/user/ada/proxy/{port}/"
        page = requests.get(f"http://127.0.0.1:{port}/", timeout=30).text
        assert f"/user/ada/proxy/{port}/_dash-component-suites/" in page


def test_legacy_jupyter_dash_notebook_runs_unchanged(tmp_path: Path) -> None:
    with kernel(tmp_path) as session:
        session.run("%load_ext nbbg")
        port = free_port()
        legacy = (
            "from jupyter_dash import JupyterDash\n"
            "from dash import html\n"
            "JupyterDash.infer_jupyter_proxy_config()\n"
            "app = JupyterDash(__name__)\n"
            "app.layout = html.Div('legacy notebook')\n"
            f"app.run_server(mode='inline', port={port})\n"
        )
        result = session.run(legacy)
        assert "deprecated" not in result.stderr
        assert any("<iframe" in o.get("text/html", "") for o in result.outputs)
        assert result.widget_ids(), "the jobs panel is shown under the app"
        page = requests.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert page.status_code == 200

        other = free_port()
        external = session.run(
            "app = JupyterDash(__name__)\n"
            "app.layout = html.Div('in a browser tab')\n"
            f"app.run_server(mode='external', host='127.0.0.1', port='{other}')\n"
        )
        assert f"Dash app running on http://127.0.0.1:{other}/" in external.stdout
        assert requests.get(f"http://127.0.0.1:{other}/", timeout=30).status_code == 200

        session.run("%unload_ext nbbg")
        original = session.run(
            "import sys; print('jupyter_dash' in sys.modules)\n"
            "from jupyter_dash import JupyterDash\n"
            "print(JupyterDash.__module__)"
        )
        assert original.stdout.split() == ["False", "jupyter_dash.jupyter_app"]
