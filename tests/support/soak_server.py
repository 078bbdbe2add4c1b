"""The soak test's server: a Dash app on LokyManager in a process of its own (the "kernel side").

``python -m tests.support.soak_server <port> <store> <pid-dir>`` serves on
127.0.0.1:<port> with threaded werkzeug, prints ``ready`` once it listens, and
on SIGTERM shuts the manager down and exits. Running it apart from the test's
client threads lets the test read this process's memory, descriptors and
threads without counting the clients'.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from dash import Dash, Input, Output, State, html, set_props
from werkzeug.serving import make_server

import nbbg
from tests.support.reliability_helpers import _QuietHandler, error_text

POLL_MS = 20


def build_app(manager: nbbg.LokyManager, pid_dir: Path) -> Dash:
    app = Dash(__name__, background_callback_manager=manager, on_error=error_text)
    ids = ["go", "go_err", "go_prog", "go_props", "go_slow", "secs", "stop"]
    outputs = ["out", "out_err", "out_prog", "prog", "out_props", "side", "out_slow"]
    app.layout = html.Div([html.Button(id=i) for i in ids] + [html.Div(id=o) for o in outputs])
    background: dict[str, Any] = {
        "background": True,
        "interval": POLL_MS,
        "prevent_initial_call": True,
    }

    @app.callback(Output("out", "children"), Input("go", "n_clicks"), **background)
    def noop(token: int) -> dict[str, Any]:
        return {"token": token, "ran_at": time.time()}

    @app.callback(Output("out_err", "children"), Input("go_err", "n_clicks"), **background)
    def fail(token: int) -> None:
        raise ValueError(f"boom {token}")

    @app.callback(
        Output("out_prog", "children"),
        Input("go_prog", "n_clicks"),
        progress=Output("prog", "children"),
        **background,
    )
    def report(set_progress: Any, token: int) -> dict[str, Any]:
        for step in range(3):
            set_progress(f"{token}:{step}")
        return {"token": token}

    @app.callback(Output("out_props", "children"), Input("go_props", "n_clicks"), **background)
    def side_effect(token: int) -> dict[str, Any]:
        set_props("side", {"children": token})
        return {"token": token}

    @app.callback(
        Output("out_slow", "children"),
        Input("go_slow", "n_clicks"),
        State("secs", "n_clicks"),
        cancel=Input("stop", "n_clicks"),
        **background,
    )
    def slow(token: int, seconds: float) -> dict[str, Any]:
        # Written whole, then renamed: the test reads it as soon as the name exists.
        partial = pid_dir / f"{token}.pid.partial"
        partial.write_text(str(os.getpid()))
        os.replace(partial, pid_dir / f"{token}.pid")
        time.sleep(seconds)
        return {"token": token}

    return app


def main() -> None:
    port, store, pid_dir = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    manager = nbbg.LokyManager(max_workers=2, cache=store, cache_by=[lambda: "soak"])
    server = make_server(
        "127.0.0.1",
        port,
        build_app(manager, pid_dir).server,
        threaded=True,
        request_handler=_QuietHandler,
    )

    def stop(_signum: int, _frame: Any) -> None:
        manager.shutdown()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    server.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()
