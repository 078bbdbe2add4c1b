"""An app run as ``__main__`` (as in a notebook): closures and late globals work."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

from tests.conftest import free_port, pid_gone, wait_until

APP = textwrap.dedent(
    """
    import sys, time
    from dash import Dash, Input, Output, html
    import nbbg

    manager = nbbg.LokyManager(max_workers=2, cache=sys.argv[2])
    app = Dash(__name__, background_callback_manager=manager)
    app.layout = html.Div([html.Button("go", id="go"), html.Div(id="closure"),
                           html.Div(id="late")])

    def make_callback(greeting):
        @app.callback(Output("closure", "children"), Input("go", "n_clicks"),
                      background=True, prevent_initial_call=True, interval=100)
        def greet(n):
            return f"{greeting} {n}"
        return greet

    make_callback("hello")

    @app.callback(Output("late", "children"), Input("go", "n_clicks"),
                  background=True, prevent_initial_call=True, interval=100)
    def uses_late_global(n):
        return f"{LATE_GLOBAL} {n}"

    LATE_GLOBAL = "defined after the app"

    if __name__ == "__main__":
        app.run(host="127.0.0.1", port=int(sys.argv[1]))
    """
)


def test_closure_and_late_global_in_main_module(dash_br, tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(APP)
    port = free_port()
    server = subprocess.Popen([sys.executable, str(script), str(port), str(tmp_path / "store")])
    try:
        import urllib.request

        def up() -> bool:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).status == 200
            except OSError:
                return False

        wait_until(up, timeout=30, interval=0.2, what="the app server")
        dash_br.server_url = f"http://127.0.0.1:{port}"
        dash_br.find_element("#go").click()
        dash_br.wait_for_text_to_equal("#closure", "hello 1", timeout=15)
        dash_br.wait_for_text_to_equal("#late", "defined after the app 1", timeout=15)
        workers = psutil.Process(server.pid).children(recursive=True)
    finally:
        server.terminate()
        server.wait(10)
    wait_until(lambda: all(pid_gone(p.pid) for p in workers), timeout=5, what="workers to exit")
