"""Drive a Dash app from Python the way the browser does: ``nbbg.client.DashClient``.

Notebooks use it to click their own app and check the outcome (so they test
themselves under nbval), the tests use it for load and protocol checks, and
``bench/`` uses it to time managers as a browser sees them::

    client = DashClient.open("http://127.0.0.1:8050/")
    result = client.run("paragraph_id", {"button_id": 1}, timeout=60)
    output_value(result, "paragraph_id")        # what the browser would show

Only the requests that matter for background callbacks, built as
``dash-renderer/build/dash_renderer.dev.js`` (``handleServerside``) builds them:

::

    GET /                      -> _dash-config (its signed ``end_id``)
    GET /_dash-layout, GET /_dash-dependencies
    POST /_dash-update-component?endId=E[&oldJob=J]        -> {cacheKey, job}
    POST /_dash-update-component?endId=E&cacheKey=K&job=J  (every interval ms)
         -> {progress} / {sideUpdate} / {} while running,
            {multi, response} when done, 204 when the job ended without output
    POST /_dash-update-component?endId=E&cancelJob=J       (the cancel callback)

Polls go one at a time per job, each ``interval`` ms after the previous answer
(``setTimeout(handle, interval)``), with input and state values nulled. Query
arguments are appended without encoding, as the renderer does (the signed
values are ``[A-Za-z0-9~]``). Every wait is bounded by a deadline.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

UPDATE_PATH = "/_dash-update-component"
_CONFIG_RE = re.compile(r'<script id="_dash-config" type="application/json">(.*?)</script>', re.S)

Outcome = Literal["done", "ended", "error", "timeout"]
"""``done``: the result arrived; ``ended``: 204 (cancelled, no output);
``error``: an HTTP error (a failed job is a 500); ``timeout``: no
answer before the deadline (a lost job)."""


class ProtocolError(RuntimeError):
    """The server answered something dash-renderer would not accept."""


@dataclass(frozen=True)
class CallbackSpec:
    """One entry of ``/_dash-dependencies``."""

    output: str
    inputs: tuple[tuple[str, str], ...]
    state: tuple[tuple[str, str], ...]
    interval_ms: int | None

    @property
    def output_id(self) -> str:
        return self.output.rsplit(".", 1)[0]


@dataclass(frozen=True)
class Page:
    """What a page load gives the renderer: where to send, the token, the callbacks."""

    host: str
    port: int
    end_id: str
    callbacks: dict[str, CallbackSpec]

    def callback(self, output_id: str) -> CallbackSpec:
        try:
            return self.callbacks[output_id]
        except KeyError:
            raise ProtocolError(f"the app has no callback with output `{output_id}`") from None

    def callback_with_input(self, component_id: str, prop: str) -> CallbackSpec:
        for spec in self.callbacks.values():
            if (component_id, prop) in spec.inputs:
                return spec
        raise ProtocolError(f"no callback takes input `{component_id}.{prop}`")


@dataclass
class BackgroundJob:
    """A submitted job: its signed handles and what the polls saw."""

    spec: CallbackSpec
    payload: dict[str, Any]
    cache_key: str
    job: str
    cancel_inputs: tuple[tuple[str, str], ...]
    submitted: float
    """``time.perf_counter()`` just before the submit POST was sent."""
    polls: int = 0
    progress: list[tuple[float, Any]] = field(default_factory=list)
    """``(time.time() when the poll answer arrived, progress value)``."""


@dataclass(frozen=True)
class JobResult:
    outcome: Outcome
    value: Any
    seconds: float
    """Submit sent -> final answer received (``perf_counter``)."""
    polls: int
    status: int


class DashClient:
    """One browser tab's worth of requests over one keep-alive connection.

    Not thread-safe: give each thread its own (``sibling()`` shares the page).
    """

    def __init__(self, page: Page, timeout: float = 30.0) -> None:
        self.page = page
        self.timeout = timeout
        self._connection: http.client.HTTPConnection | None = None
        self._clicks: dict[str, int] = {}

    @classmethod
    def open(cls, url: str, timeout: float = 30.0) -> DashClient:
        """Load the page at ``url`` like a browser and return a client for it."""
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        client = cls(Page(host, port, "", {}), timeout)
        client.page = client._load_page()
        return client

    def sibling(self) -> DashClient:
        """Another connection for the same page (a browser opens several)."""
        return DashClient(self.page, self.timeout)

    def reload(self) -> DashClient:
        """A fresh page load: a new tab with its own ``endId``."""
        client = DashClient(self.page, self.timeout)
        client.page = client._load_page()
        return client

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> DashClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = http.client.HTTPConnection(
                    self.page.host, self.page.port, timeout=self.timeout
                )
            try:
                self._connection.request(method, path, body=body, headers=headers)
                response = self._connection.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException):
                # A keep-alive connection the server closed: reconnect once.
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _get_json(self, path: str) -> Any:
        status, body = self._request("GET", path)
        if status != 200:
            raise ProtocolError(f"GET {path} answered {status}")
        return json.loads(body)

    def _load_page(self) -> Page:
        status, html = self._request("GET", "/")
        if status != 200:
            raise ProtocolError(f"GET / answered {status}")
        match = _CONFIG_RE.search(html.decode("utf-8"))
        if match is None:
            raise ProtocolError("GET / has no _dash-config script")
        config = json.loads(match.group(1))
        self._get_json("/_dash-layout")
        callbacks = {}
        for entry in self._get_json("/_dash-dependencies"):
            spec = CallbackSpec(
                output=entry["output"],
                inputs=tuple((i["id"], i["property"]) for i in entry["inputs"]),
                state=tuple((s["id"], s["property"]) for s in entry.get("state") or ()),
                interval_ms=(entry.get("background") or {}).get("interval"),
            )
            callbacks[spec.output_id] = spec
        return Page(self.page.host, self.page.port, config.get("end_id") or "", callbacks)

    def _url(self, args: list[tuple[str, str]]) -> str:
        all_args = ([("endId", self.page.end_id)] if self.page.end_id else []) + args
        return UPDATE_PATH + "".join(
            f"{'?' if k == 0 else '&'}{name}={value}" for k, (name, value) in enumerate(all_args)
        )

    def _post(self, payload: dict[str, Any], args: list[tuple[str, str]]) -> tuple[int, Any]:
        status, body = self._request("POST", self._url(args), json.dumps(payload).encode())
        if status == 200:
            return status, json.loads(body)
        return status, body.decode("utf-8", "replace")[-2000:]

    # ------------------------------------------------------------ callbacks
    def click(self, component_id: str) -> int:
        """The next ``n_clicks`` of a button on this page."""
        self._clicks[component_id] = self._clicks.get(component_id, 0) + 1
        return self._clicks[component_id]

    def _payload(self, spec: CallbackSpec, values: dict[str, Any], changed: str) -> dict[str, Any]:
        def filled(pairs: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
            return [{"id": c, "property": p, "value": values.get(c)} for c, p in pairs]

        component, prop = spec.output.rsplit(".", 1)
        payload: dict[str, Any] = {
            "output": spec.output,
            "outputs": {"id": component, "property": prop},
            "inputs": filled(spec.inputs),
            "changedPropIds": [changed],
            "parsedChangedPropsIds": [changed],
        }
        if spec.state:
            payload["state"] = filled(spec.state)
        return payload

    def submit(
        self, output_id: str, values: dict[str, Any], old_jobs: tuple[BackgroundJob, ...] = ()
    ) -> BackgroundJob:
        """Fire a background callback: the first POST, answered with the signed handles.

        ``values`` maps component ids to the values of its inputs and state; the
        first input is the one that changed. ``old_jobs`` are sent as
        ``oldJob`` (the renderer does so when the callback re-fires while its
        previous job runs).
        """
        spec = self.page.callback(output_id)
        if spec.interval_ms is None:
            raise ProtocolError(f"`{output_id}` is not a background callback")
        trigger = f"{spec.inputs[0][0]}.{spec.inputs[0][1]}"
        payload = self._payload(spec, values, trigger)
        started = time.perf_counter()
        status, data = self._post(payload, [("oldJob", old.job) for old in old_jobs])
        if status != 200 or not isinstance(data, dict) or "job" not in data:
            raise ProtocolError(f"submit of `{output_id}` answered {status}: {data!r:.500}")
        cancel = tuple((c["id"], c["property"]) for c in data.get("cancel") or ())
        return BackgroundJob(spec, payload, data["cacheKey"], data["job"], cancel, started)

    def poll(self, job: BackgroundJob) -> tuple[int, Any]:
        """One poll; records progress. Returns ``(status, data)``."""
        body = dict(job.payload)
        body["inputs"] = [dict(i, value=None) for i in job.payload["inputs"]]
        if "state" in body:
            body["state"] = [dict(s, value=None) for s in job.payload["state"]]
        status, data = self._post(body, [("cacheKey", job.cache_key), ("job", job.job)])
        received = time.time()
        job.polls += 1
        if status == 200 and isinstance(data, dict) and "progress" in data:
            for value in data["progress"].values():
                job.progress.append((received, value))
        return status, data

    def wait(self, job: BackgroundJob, timeout: float) -> JobResult:
        """Poll every ``interval`` ms until the job answers; give up after ``timeout`` s."""
        interval = (job.spec.interval_ms or 1000) / 1000
        deadline = time.perf_counter() + timeout
        while True:
            time.sleep(interval)
            try:
                status, data = self.poll(job)
            except (OSError, http.client.HTTPException) as exc:
                return self._result(job, "error", repr(exc), 0)
            if status == 204:
                return self._result(job, "ended", None, status)
            if status != 200:
                return self._result(job, "error", data, status)
            if "response" in data:
                return self._result(job, "done", data["response"], status)
            if time.perf_counter() >= deadline:
                return self._result(job, "timeout", None, status)

    @staticmethod
    def _result(job: BackgroundJob, outcome: Outcome, value: Any, status: int) -> JobResult:
        return JobResult(outcome, value, time.perf_counter() - job.submitted, job.polls, status)

    def run(self, output_id: str, values: dict[str, Any], timeout: float) -> JobResult:
        """Submit and wait: one click, as the browser sees it."""
        return self.wait(self.submit(output_id, values), timeout)

    def cancel(self, job: BackgroundJob) -> int:
        """Click the job's cancel button: its callback carries ``cancelJob``."""
        if not job.cancel_inputs:
            raise ProtocolError(f"`{job.spec.output}` has no cancel input")
        component, prop = job.cancel_inputs[0]
        spec = self.page.callback_with_input(component, prop)
        payload = self._payload(spec, {component: self.click(component)}, f"{component}.{prop}")
        status, data = self._post(payload, [("cancelJob", job.job)])
        if status not in (200, 204):
            raise ProtocolError(f"cancel answered {status}: {data!r:.500}")
        return status


def output_value(result: JobResult, output_id: str, prop: str = "children") -> Any:
    """The value a finished job set on ``output_id.prop``."""
    if not isinstance(result.value, dict):
        return None
    return (result.value.get(output_id) or {}).get(prop)
