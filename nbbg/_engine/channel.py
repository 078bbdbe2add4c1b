"""The worker channel: one socket per worker, between it and the kernel.

Each worker opens one ``multiprocessing.connection`` to the kernel's
listener (a Linux abstract AF_UNIX socket; elsewhere the family
multiprocessing picks, see ``platform``; an authkey guards it either way),
says which worker it is (``HELLO``) and sends :class:`Report` messages. The
loky backend also uses it the other way: it writes each job's pickled
``JobSpec`` to the worker's socket and the worker answers with an
``OUTCOME`` report after the job's last progress, so a job crosses no thread
of the kernel on its way out, and its outcome can never overtake its reports.

A job's ``set_progress`` only stores the latest value and, when the flush
thread sleeps, wakes it; the flush thread sends the latest value at once,
then rests ``FLUSH_INTERVAL``. So the job never blocks on the kernel, a lone
update leaves the worker within a thread switch, and a job that reports in a
tight loop sends at most ~500 messages a second (fewer when CPU-bound: the
flush thread then waits for the GIL's 5 ms switch interval). Writing every
value to Redis, as CeleryManager does, costs the job ~130 µs a call; this
costs ~0.1 µs (bench/RESULTS.md).

A report is a :class:`ReportKind` (``PROGRESS``: the latest value;
``PROPS``: merged ``set_props`` updates; ``OUTPUT``: the lines the job wrote
since the last flush, an ``output.OutputChunk`` cut by ``capture``;
``BAD_PROGRESS``: a value that could not be pickled, the payload says why),
the job id and the payload. Output rides the same flush as progress: a
``print`` in the job only appends to a deque and wakes the flush thread.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Client, Connection, Listener
from typing import Any, NamedTuple

from .capture import OutputBuffer
from .platform import listener_address

LOGGER = logging.getLogger("nbbg")

FLUSH_INTERVAL = 0.002
"""Seconds the flush thread rests after a flush: the most a value waits behind another."""


class ReportKind(enum.Enum):
    PROGRESS = "progress"
    PROPS = "props"
    OUTPUT = "output"
    BAD_PROGRESS = "bad_progress"
    WORKER = "worker"  # the job's worker process is known only once it runs (Ray): its pid
    HELLO = "hello"  # a worker's first message: its token (which slot's worker it is)
    OUTCOME = "outcome"  # the job's ``WorkerOutcome``, after its last report


class Report(NamedTuple):
    """One message from a job to the kernel (a named tuple: the cheapest to pickle)."""

    kind: ReportKind
    job_id: str
    payload: Any


CLOSE_TIMEOUT = 2.0
"""Seconds ``ProgressListener.close`` waits at most for its accept thread to wake."""


class ProgressListener:
    """Kernel side: accepts worker connections and hands messages to a callback.

    Each connection has its own reader thread, which owns it and closes it when
    the worker goes away (the engine kills its workers before closing this).
    A connection that opens with a ``HELLO`` is handed to ``on_hello`` with the
    worker's token, so its owner can write to the worker too.
    """

    def __init__(
        self,
        on_message: Callable[[Report], None],
        on_hello: Callable[[str, Connection], None] | None = None,
    ) -> None:
        self.authkey = os.urandom(32)
        self._on_message = on_message
        self._on_hello = on_hello
        self._listener = Listener(listener_address(), authkey=self.authkey)
        self.address: Any = self._listener.address  # the bound one (a port picked by the OS)
        self._closed = False
        threading.Thread(target=self._accept_loop, name="nbbg-accept", daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn = self._listener.accept()
            except Exception:  # noqa: BLE001 - a failed handshake or a closed listener
                continue
            if self._closed:
                conn.close()
                return
            threading.Thread(
                target=self._read_loop, args=(conn,), name="nbbg-progress", daemon=True
            ).start()

    def _read_loop(self, conn: Connection) -> None:
        with conn:
            while True:
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    return  # the worker exited
                except SystemExit:
                    # Something raised SystemExit in this thread from outside
                    # (some test runners stop their server threads that way, by
                    # thread id, and ids are reused): keep serving the worker.
                    continue
                except Exception:
                    LOGGER.exception("nbbg: a progress message could not be read")
                    continue
                try:
                    if message.kind is ReportKind.HELLO:
                        if self._on_hello is not None:
                            self._on_hello(message.payload, conn)
                        continue
                    self._on_message(message)
                except Exception:
                    LOGGER.exception("nbbg: error while handling a progress message")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Wake the accept() call so its thread ends. The wake-up connection's
        # handshake needs that thread, which may still be in the handshake of
        # a worker being killed: wait for it a bounded time, never for ever
        # (a shutdown once hung here in a test, not reproduced since).
        waker = threading.Thread(target=self._wake_accept, name="nbbg-accept-wake", daemon=True)
        waker.start()
        waker.join(CLOSE_TIMEOUT)
        self._listener.close()

    def _wake_accept(self) -> None:
        with contextlib.suppress(Exception):  # the listener may be gone already
            Client(self.address, authkey=self.authkey).close()


class JobReporter:
    """Worker side, one per job: what ``set_progress`` / ``set_props`` write to.

    ``set_progress`` is an attribute store (the value wrapped in a fresh tuple,
    so the flush thread can tell new from already-sent by identity) and a
    check of the wake-up flag; the flag is set at most once per flush.
    """

    __slots__ = (
        "_latest",
        "_props",
        "_props_lock",
        "_sent",
        "_wake",
        "job_id",
        "messages_sent",
        "output",
    )

    def __init__(self, job_id: str, wake: threading.Event) -> None:
        self.job_id = job_id
        self._wake = wake
        self._latest: tuple[Any] | None = None
        self._sent: tuple[Any] | None = None
        self._props: dict[str, dict[str, Any]] = {}
        self._props_lock = threading.Lock()
        self.messages_sent = 0
        self.output = OutputBuffer(wake)

    def set_progress(self, value: Any) -> None:
        self._latest = (value,)
        if not self._wake.is_set():
            self._wake.set()

    def set_props(self, component_id: str, props: dict[str, Any]) -> None:
        with self._props_lock:
            merged = self._props.get(component_id)
            self._props[component_id] = {**merged, **props} if merged else dict(props)
        self._wake.set()

    def _take(self, final: bool = False) -> list[Report]:
        reports: list[Report] = []
        output = self.output.take(final)
        if output is not None:  # before progress: a job's last words precede its last value
            reports.append(Report(ReportKind.OUTPUT, self.job_id, output))
        latest = self._latest
        if latest is not None and latest is not self._sent:
            self._sent = latest
            reports.append(Report(ReportKind.PROGRESS, self.job_id, latest[0]))
        if self._props:
            with self._props_lock:
                props, self._props = self._props, {}
            reports.append(Report(ReportKind.PROPS, self.job_id, props))
        return reports


class ProgressSender:
    """Worker side: one connection to the kernel and the flush thread."""

    def __init__(self, address: Any, authkey: bytes, token: str) -> None:
        self._conn = Client(address, authkey=authkey)  # the family follows from the address
        self._send_lock = threading.Lock()
        self._active: JobReporter | None = None
        self._wake = threading.Event()
        self.token = token
        self._conn.send(Report(ReportKind.HELLO, "", token))
        threading.Thread(target=self._flush_loop, name="nbbg-flush", daemon=True).start()

    def receive(self) -> bytes:
        """The next message the kernel wrote to this worker (a pickled job); blocks."""
        try:
            return self._conn.recv_bytes()
        except (EOFError, OSError):
            os._exit(0)  # the kernel is gone: nobody is left to serve

    def send_outcome(self, job_id: str, outcome: Any, result: bytes | None = None) -> None:
        """Report how a job ended, after every report of it (``end`` flushed them).

        ``result`` is the pickled result when the kernel is to store it: beside the
        outcome, which the kernel keeps while it remembers the job.
        """
        payload = (self.token, outcome, result)
        with self._send_lock:
            try:
                self._conn.send(Report(ReportKind.OUTCOME, job_id, payload))
            except (BrokenPipeError, ConnectionResetError, EOFError):
                os._exit(0)

    def begin(self, job_id: str) -> JobReporter:
        reporter = JobReporter(job_id, self._wake)
        self._active = reporter
        return reporter

    def end(self, reporter: JobReporter) -> int:
        """Stop flushing ``reporter`` after one last flush; return messages sent."""
        self._active = None
        self.flush(reporter, final=True)
        return reporter.messages_sent

    def flush(self, reporter: JobReporter, final: bool = False) -> None:
        with self._send_lock:
            for report in reporter._take(final):
                self._send(reporter, report)

    def _send(self, reporter: JobReporter, report: Report) -> None:
        try:
            self._conn.send(report)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            os._exit(0)  # the kernel is gone: nobody is left to serve
        except Exception as exc:  # noqa: BLE001 - a value that cannot be pickled
            reason = f"{report.kind.value} value: {type(exc).__name__}: {exc}"
            self._conn.send(Report(ReportKind.BAD_PROGRESS, report.job_id, reason))
        reporter.messages_sent += 1

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()  # before reading: a later value sets it again
            reporter = self._active
            if reporter is not None:
                self.flush(reporter)
            time.sleep(FLUSH_INTERVAL)
