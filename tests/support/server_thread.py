"""The server runner behind ``dash_duo``: Dash's threaded runner, stopping only its own thread.

Dash's ``ThreadedRunner`` stops a Flask app by raising ``SystemExit`` into every
thread started since the server started (``KillerThread.kill``). That also hits
threads that are not the server's: nbbg's own, and the executor thread asgiref
keeps for Flask's async dispatch (Dash 4). That executor thread sleeps with the
exception pending and, when woken in a later test, logs it with a traceback. On
CPython 3.11 (3.11.7 here) formatting a traceback runs ``ast.parse``, and the
AST converter's recursion counter is shared by all threads, so the main thread
building a Flask app at that moment (werkzeug compiles URL rules with ``ast``)
failed with ``SystemError: AST constructor recursion depth mismatch`` (CPython
gh-106905) — one failed CI run. Raising into the server thread alone ends
``serve_forever`` (werkzeug closes the socket on the way out) and touches
nothing else.
"""

from __future__ import annotations

import ctypes

from dash.testing.application_runners import ThreadedRunner


class ServerThreadRunner(ThreadedRunner):
    """``ThreadedRunner`` whose ``stop`` ends the server thread and no other."""

    def stop(self) -> None:
        thread = self.thread
        if thread is not None and thread.is_alive() and thread.ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(thread.ident), ctypes.py_object(SystemExit)
            )
            thread.join(self.stop_timeout)
            if thread.is_alive():
                raise RuntimeError(
                    f"the Dash test server thread did not stop within {self.stop_timeout} s"
                )
        self._app = None
        self.started = False
