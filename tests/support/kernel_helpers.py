"""Drive a real ipykernel as a notebook front end does (the app itself: ``nbbg.client``).

::

    test ──execute()/click()──► shell channel ──► ipykernel (runs the cells, serves the app)
      ▲                                               │
      └── iopub pump thread ◄─────────────────────────┘
            outputs per cell, and a WidgetMirror: comm_open (full state),
            comm_msg "update" (deltas), comm_close: the front end's view of every widget

    nbbg.client.DashClient ──HTTP──► the app served by the kernel, as dash-renderer

Every wait is a condition wait with a deadline; nothing sleeps a fixed time
to synchronise. Only the kernel this module starts is ever stopped.
"""

from __future__ import annotations

import html
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from jupyter_client.manager import start_new_kernel

from tests.support.helpers import wait_until

MODEL_PREFIX = "IPY_MODEL_"
DEFAULT_TIMEOUT = 120.0


# ---------------------------------------------------------------- cell results
@dataclass
class CellResult:
    """What one executed cell produced, as a front end sees it."""

    msg_id: str
    stdout: str = ""
    stderr: str = ""
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    reply_status: str = ""

    @property
    def text(self) -> str:
        plain = [str(o.get("text/plain", "")) for o in self.outputs]
        return self.stdout + self.stderr + "\n".join(plain)

    def widget_ids(self) -> list[str]:
        views = [o.get("application/vnd.jupyter.widget-view+json") for o in self.outputs]
        return [view["model_id"] for view in views if view]


# ---------------------------------------------------------------- widgets
@dataclass
class Model:
    comm_id: str
    name: str
    state: dict[str, Any]
    open: bool = True


@dataclass(frozen=True)
class Update:
    """One ``comm_msg`` update as received: kernel time, model, changed keys."""

    sent_at: float
    comm_id: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class PanelRow:
    """One job's row of the jobs panel, read back from widget state."""

    job_id: str
    title: str
    state: str
    state_color: str | None
    bar: tuple[int, int] | None
    bar_style: str | None
    bar_text: str
    """The bar's label: ``3/10 [00:03<00:07, 1.0 it/s]``."""
    text: str
    elapsed: str
    usage: str
    toggle_id: str
    cancel_id: str | None
    rerun_id: str | None
    details_html: str | None
    """The expanded row's HTML (output tail, traceback), None while collapsed."""

    @property
    def details(self) -> str | None:
        """The expanded row as the reader sees it: tags dropped, entities decoded."""
        if self.details_html is None:
            return None
        return html.unescape(re.sub(r"<[^>]+>", "", self.details_html))

    def prominent(self) -> list[str]:
        """The lines of the expanded row that stand out (stderr, warnings)."""
        found = re.findall(r'class="nbbg-prominent"[^>]*>(.*?)</span>', self.details_html or "")
        return [html.unescape(text) for text in found]


class WidgetMirror:
    """Widget models rebuilt from comm messages, as the front end holds them."""

    def __init__(self) -> None:
        self.models: dict[str, Model] = {}
        self.updates: list[Update] = []
        self.closed: list[str] = []

    def handle(self, msg: dict[str, Any]) -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "comm_open" and content.get("target_name") == "jupyter.widget":
            state = dict(content["data"]["state"])
            self.models[content["comm_id"]] = Model(
                content["comm_id"], str(state.get("_model_name")), state
            )
        elif kind == "comm_msg":
            model = self.models.get(content["comm_id"])
            data = content.get("data", {})
            if model is not None and data.get("method") == "update":
                model.state.update(data["state"])
                self.updates.append(
                    Update(_kernel_time(msg), model.comm_id, tuple(sorted(data["state"])))
                )
        elif kind == "comm_close":
            model = self.models.get(content["comm_id"])
            if model is not None:
                model.open = False
                self.closed.append(model.comm_id)

    def model(self, ref: str) -> Model:
        return self.models[ref.removeprefix(MODEL_PREFIX)]

    def children(self, model: Model) -> list[Model]:
        return [self.model(ref) for ref in model.state.get("children", [])]

    def panels(self) -> list[Model]:
        return [
            m
            for m in self.models.values()
            if m.open and "nbbg-panel" in m.state.get("_dom_classes", [])
        ]

    def rows(self, panel_id: str) -> list[PanelRow]:
        """The job rows shown in a panel, top (newest) first, with their details if expanded."""
        panel = self.models[panel_id]
        found = []
        details: dict[str, str] = {}
        for box in self.children(panel):
            classes = box.state.get("_dom_classes", [])
            if "nbbg-job-details" in classes:
                prefix = "nbbg-job-details-"
                owner = next(c for c in classes if c.startswith(prefix))[len(prefix) :]
                details[owner] = str(box.state.get("value", ""))
            if "nbbg-job" not in classes:
                continue
            job_id = next(c for c in classes if c.startswith("nbbg-job-"))[len("nbbg-job-") :]
            found.append(self._row(job_id, self.children(box)))
        return [replace(row, details_html=details.get(row.job_id)) for row in found]

    def _row(self, job_id: str, parts: list[Model]) -> PanelRow:
        toggle, title, state, progress, elapsed, usage, *rest = parts
        style = self.model(state.state["style"]).state
        bar = bar_style = None
        text = bar_text = ""
        if progress.name == "IntProgressModel":
            bar = (int(progress.state["value"]), int(progress.state["max"]))
            bar_style = progress.state.get("bar_style")
            bar_text = str(progress.state.get("description", ""))
        else:
            text = progress.state.get("value", "")
        return PanelRow(
            job_id=job_id,
            title=title.state.get("value", ""),
            state=state.state.get("value", ""),
            state_color=style.get("text_color"),
            bar=bar,
            bar_style=bar_style,
            bar_text=bar_text,
            text=text,
            elapsed=elapsed.state.get("value", ""),
            usage=usage.state.get("value", ""),
            toggle_id=toggle.comm_id,
            cancel_id=_button(rest, "Cancel"),
            rerun_id=_button(rest, "Re-run"),
            details_html=None,
        )

    def heading(self, panel_id: str) -> str:
        header = self.children(self.models[panel_id])[0]
        return str(self.children(header)[0].state.get("value", ""))

    def cancel_all_id(self, panel_id: str) -> str:
        header = self.children(self.models[panel_id])[0]
        return self.children(header)[1].comm_id


def _button(parts: list[Model], description: str) -> str | None:
    return next((p.comm_id for p in parts if p.state.get("description") == description), None)


def _kernel_time(msg: dict[str, Any]) -> float:
    date = msg["header"]["date"]
    if isinstance(date, str):
        date = datetime.fromisoformat(date)
    return float(date.timestamp())


# ---------------------------------------------------------------- the kernel
class KernelSession:
    """One ipykernel, its iopub stream pumped into per-cell results and a widget mirror."""

    def __init__(self, cwd: Path, env: dict[str, str] | None = None) -> None:
        kernel_env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
        kernel_env.update(env or {})
        self.km, self.kc = start_new_kernel(
            startup_timeout=DEFAULT_TIMEOUT, kernel_name="python3", cwd=str(cwd), env=kernel_env
        )
        self.widgets = WidgetMirror()
        self._changed = threading.Condition()
        self._cells: dict[str, CellResult] = {}
        self._idle: set[str] = set()
        self._stop = threading.Event()
        self._pump = threading.Thread(target=self._read_iopub, name="iopub-pump", daemon=True)
        self._pump.start()

    @property
    def pid(self) -> int:
        return int(self.km.provisioner.pid)  # type: ignore[union-attr]

    def _read_iopub(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            except Exception:  # noqa: BLE001 - channels closed at shutdown
                return
            with self._changed:
                self._file(msg)
                self.widgets.handle(msg)
                self._changed.notify_all()

    def _file(self, msg: dict[str, Any]) -> None:
        parent = msg.get("parent_header", {}).get("msg_id")
        cell = self._cells.get(parent or "")
        kind, content = msg["msg_type"], msg["content"]
        if kind == "status" and content.get("execution_state") == "idle" and parent:
            self._idle.add(parent)
        if cell is None:
            return
        if kind == "stream":
            if content["name"] == "stdout":
                cell.stdout += content["text"]
            else:
                cell.stderr += content["text"]
        elif kind in ("display_data", "execute_result"):
            cell.outputs.append(content["data"])
        elif kind == "error":
            cell.error = content

    def execute(self, code: str, timeout: float = DEFAULT_TIMEOUT) -> CellResult:
        """Run a cell; return once the kernel is idle again and the reply is in."""
        msg_id = self.kc.execute(code, allow_stdin=False)
        with self._changed:
            self._cells[msg_id] = CellResult(msg_id)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"cell did not finish within {timeout} s:\n{code}")
            try:
                reply = self.kc.get_shell_msg(timeout=remaining)
            except queue.Empty:
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        self.wait_for(lambda: msg_id in self._idle, deadline - time.monotonic(), "idle")
        with self._changed:
            result = self._cells.pop(msg_id)
        result.reply_status = reply["content"]["status"]
        return result

    def run(self, code: str, timeout: float = DEFAULT_TIMEOUT) -> CellResult:
        """Run a cell that must not fail."""
        result = self.execute(code, timeout)
        if result.error is not None:
            trace = "\n".join(result.error.get("traceback", []))
            raise AssertionError(f"cell failed:\n{code}\n{_strip_ansi(trace)}")
        return result

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """Wait until ``condition()`` (evaluated with the mirror up to date) is truthy."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = condition()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
                self._changed.wait(min(remaining, 0.5))

    def read(self, look: Callable[[], Any]) -> Any:
        """``look()`` while the pump thread holds still (the mirror is consistent)."""
        with self._changed:
            return look()

    def click(self, comm_id: str) -> float:
        """Send a button click exactly as the widget front end does; return when it was sent."""
        content = {"comm_id": comm_id, "data": {"method": "custom", "content": {"event": "click"}}}
        msg = self.kc.session.msg("comm_msg", content)
        sent = time.monotonic()
        self.kc.shell_channel.send(msg)
        return sent

    def worker_pids(self) -> set[int]:
        """nbbg's loky workers started by this kernel (not loky's resource tracker)."""
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return set()
        found = set()
        for child in children:
            try:
                if (
                    "loky.backend.popen_loky_posix" in child.cmdline()
                    and child.status() != psutil.STATUS_ZOMBIE
                ):
                    found.add(child.pid)
            except psutil.Error:
                continue
        return found

    def wait_workers(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> set[int]:
        """Wait until exactly ``count`` workers run; return their pids."""

        def exactly() -> tuple[set[int]] | None:
            pids = self.worker_pids()
            return (pids,) if len(pids) == count else None

        return wait_until(exactly, timeout, f"{count} worker processes")[0]

    def close(self) -> None:
        self._stop.set()
        self._pump.join(timeout=5)
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


@contextmanager
def kernel(tmp_path: Path) -> Iterator[KernelSession]:
    """A kernel working in ``tmp_path``, with a private nbbg store."""
    session = KernelSession(tmp_path, env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    try:
        yield session
    finally:
        session.close()


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
