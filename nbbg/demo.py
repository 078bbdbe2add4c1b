"""The main demo: ``python -m nbbg.demo`` serves a progress-bar app on 127.0.0.1.

It is seed example 4 of Dash's background-callbacks page with one line
changed: the manager is ``nbbg.LokyManager``. Open the printed address, click
"Run Job!" a few times (more clicks than workers queue up) and cancel.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from dash import Dash, Input, Output, html

import nbbg


def build_app(manager: nbbg.LokyManager) -> Dash:
    app = Dash(__name__, background_callback_manager=manager, title="nbbg demo")
    app.layout = html.Div(
        [
            html.H3("nbbg: background callbacks on warm loky workers"),
            html.P(id="paragraph_id", children=["Button not clicked"]),
            html.Progress(id="progress_bar", value="0"),
            html.Div(
                [
                    html.Button(id="button_id", children="Run Job!"),
                    html.Button(id="cancel_button_id", children="Cancel Running Job!"),
                ]
            ),
        ],
        style={"fontFamily": "sans-serif", "margin": "2em"},
    )

    @app.callback(
        output=Output("paragraph_id", "children"),
        inputs=Input("button_id", "n_clicks"),
        background=True,
        running=[
            (Output("button_id", "disabled"), True, False),
            (Output("cancel_button_id", "disabled"), False, True),
            (Output("progress_bar", "style"), {"visibility": "visible"}, {"visibility": "hidden"}),
        ],
        cancel=Input("cancel_button_id", "n_clicks"),
        progress=[Output("progress_bar", "value"), Output("progress_bar", "max")],
        interval=200,
        prevent_initial_call=True,
    )
    def update_progress(set_progress: Callable[[tuple[str, str]], None], n_clicks: int) -> str:
        total = 20
        for i in range(total + 1):
            set_progress((str(i), str(total)))
            time.sleep(0.1)
        return f"Clicked {n_clicks} times"

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8050)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    manager = nbbg.LokyManager(max_workers=args.workers)
    try:
        print(f"nbbg demo on http://127.0.0.1:{args.port}/ (Ctrl+C stops)", flush=True)
        build_app(manager).run(host="127.0.0.1", port=args.port, debug=False)
    finally:
        manager.shutdown()


if __name__ == "__main__":
    main()
