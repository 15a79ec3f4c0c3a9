"""Serving the intake: a threaded ``wsgiref`` server with read deadlines and a connection cap."""

from __future__ import annotations

import io
import logging
import signal
import socket
import sys
import threading
import time
from socketserver import ThreadingMixIn
from types import FrameType
from typing import IO, Any, cast
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from seedance_worker import errors, logs, metrics
from seedance_worker.engine.store import scrape_counts
from seedance_worker.intake.app import IntakeApp, make_wsgi_app
from seedance_worker.intake.urls import CALLBACK_PREFIX, JOB_PREFIX, shown_path
from seedance_worker.settings import Settings, get_settings

log = logging.getLogger(__name__)

CONN_THREAD_NAME = "seedance-intake-conn"
_BUSY = b"".join([
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 19\r\n",
    b"Retry-After: 1\r\nConnection: close\r\n\r\n", b'{"error": "busy"}\r\n',
])  # fmt: skip
_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _DeadlineReader(io.RawIOBase):
    """The socket's reads under one deadline per phase (headers, then body): a peer that sends a
    byte now and then cannot stretch a phase past it, as a per-read timeout alone would allow."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = time.monotonic()

    def readable(self) -> bool:
        return True

    def start(self, budget_s: float) -> None:
        self.deadline = time.monotonic() + budget_s

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("read deadline passed")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class _ServerHandler(ServerHandler):
    request_handler: _Handler  # for its request line in the access log

    def log_exception(self, exc_info: Any) -> None:
        # wsgiref would print the traceback to stderr, past the log redaction
        log.warning("intake: response not completed: %s", exc_info[0].__name__)


class _Handler(WSGIRequestHandler):
    """One request per connection, read under the header and body deadlines; request lines go to
    the logger with control characters escaped and the path token hidden (never to stderr)."""

    server: _Server

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain reader would keep the socket open past shutdown_request
        self.reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)

    def handle(self) -> None:
        self.reader.start(self.server.header_timeout_s)
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                return  # closed without a request
            if len(self.raw_requestline) > 65536:
                self.requestline, self.request_version, self.command = "", "", ""
                self.send_error(414)
                return
            if not self.parse_request():
                return  # answered already (400, 431...)
        except TimeoutError:
            self.timed_out()
            return
        self.reader.start(self.server.body_timeout_s)
        wfile = cast(IO[bytes], self.wfile)
        handler = _ServerHandler(self.rfile, wfile, self.get_stderr(), self.get_environ(), multithread=False)
        handler.request_handler = self
        handler.run(self.server.app)

    def timed_out(self) -> None:
        metrics.intake_callback("timeout")
        log.info("intake %s: no complete request within SEEDANCE_INTAKE_HEADER_TIMEOUT_S; closed",
                 self.address_string())  # fmt: skip
        try:
            self.connection.settimeout(1.0)
            self.connection.sendall(_TIMED_OUT)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("intake %s %s", self.address_string(), shown_path(format % args, limit=300))


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most SEEDANCE_INTAKE_MAX_CONNECTIONS of them: one over the cap is
    answered 503 and closed by the accepting thread at once, never given a thread of its own."""

    daemon_threads = True
    block_on_close = False  # server_close waits for the connection threads itself, boundedly
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], settings: Settings, app: IntakeApp) -> None:
        self.app = app
        self.header_timeout_s = settings.intake_header_timeout_s
        self.body_timeout_s = settings.intake_body_timeout_s
        self._slots = threading.BoundedSemaphore(settings.intake_max_connections)
        self._lock = threading.Lock()
        self._threads_open: set[threading.Thread] = set()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refuse(request)
            return
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                  name=CONN_THREAD_NAME, daemon=True)  # fmt: skip
        with self._lock:
            self._threads_open.add(thread)
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._threads_open.discard(thread)
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._threads_open.discard(threading.current_thread())
            self._slots.release()

    def refuse(self, request: socket.socket) -> None:
        metrics.intake_callback("busy")
        try:
            request.setblocking(False)  # the accepting thread never waits on a peer
            request.send(_BUSY)
        except OSError:
            pass
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print the traceback to stderr (a peer that reset, mostly)
        log.debug("intake %s: connection ended: %s", client_address[0], sys.exc_info()[0])

    def server_close(self) -> None:
        super().server_close()
        deadline = time.monotonic() + self.header_timeout_s + self.body_timeout_s + 1.0
        with self._lock:
            open_threads = list(self._threads_open)
        for thread in open_threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def make_intake_server(host: str, port: int, settings: Settings | None = None) -> WSGIServer:
    """A threaded server for the intake app, bound but not yet serving (``serve_forever``)."""
    settings = settings or get_settings()
    app = make_wsgi_app(settings)
    server = _Server((host, port), settings, app)
    server.set_app(app)
    return server


def serve_intake(host: str, port: int) -> None:
    """Serve the intake until SIGTERM or SIGINT (``seedance-worker intake``)."""
    settings = get_settings()
    logs.setup_process_logging(settings=settings)
    try:
        server = make_intake_server(host, port, settings)
    except OSError as exc:
        raise errors.ConfigError(f"intake cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    if settings.metrics_port is not None:
        try:
            metrics.start_server(
                settings.metrics_port, addr=settings.metrics_addr, inflight=scrape_counts(settings)
            )
        except OSError as exc:
            server.server_close()
            where = f"SEEDANCE_METRICS_ADDR={settings.metrics_addr} "
            where += f"SEEDANCE_METRICS_PORT={settings.metrics_port}"
            raise errors.ConfigError(f"cannot serve metrics on {where}: {exc.strerror or exc}") from None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=server.serve_forever, name="seedance-intake", daemon=True)
    thread.start()
    log.info("intake serving on %s:%d: %s<nonce>.<mac> per job (%s<token> for older tasks)",
             host, server.server_address[1], JOB_PREFIX, CALLBACK_PREFIX)  # fmt: skip
    try:
        while not stop.wait(0.5):
            if not thread.is_alive():
                break
    finally:
        server.shutdown()
        server.server_close()
        metrics.stop_server()
        for s, handler in old.items():
            signal.signal(s, handler)
        log.info("intake stopped")
