"""The callback intake: Ark's ``callback_url`` posts as hints that poll a job right away.

A stdlib WSGI app (no new dependency; mountable in any WSGI server, ``make_wsgi_app()``) served by
``serve_intake(host, port)`` on a threaded ``wsgiref`` server. Routes:

* ``POST /callbacks/<token>``: the token must equal ``SEEDANCE_INTAKE_TOKEN`` (compared in constant
  time on digests); anything else is 404 and counted. Ark does not sign callbacks: the path token is
  the only authentication, so it is never logged (request lines show ``/callbacks/[redacted]``).
  The body has the shape of GET task (``id``, ``status``, ``updated_at``) and is not kept: over
  ``MAX_BODY_BYTES`` is 413; bad JSON, JSON nested deeper than ``MAX_JSON_DEPTH``, no valid ``id``,
  a status no task has or an ``updated_at`` that is no Unix time is 400. The job is looked up first
  (``JobStore.hint``, one Lua script): an untracked or finished job is 202 ``ignored`` and nothing is
  written; a repeat of the job's last callback is 200 ``duplicate``; a status the last poll already
  saw is 202 ``unchanged``. Otherwise the job gets one early poll (202 ``accepted``; the poll stays
  the source of truth, the body is not trusted), at most one per poll generation (202 ``pending``
  while it is on its way) and never sooner than ``SEEDANCE_INTAKE_POLL_MIN_INTERVAL_S`` after the
  job's last poll (it is published with the rest as countdown; 202 ``scheduled`` when the regular
  poll comes as soon). So a token holder cannot make more GETs than that floor allows. Redis or the
  broker down: 503, so Ark retries.
* ``GET /healthz``: 200 ``ok``.

The server reads each request under two deadlines (``SEEDANCE_INTAKE_HEADER_TIMEOUT_S`` for the
request line and headers, ``SEEDANCE_INTAKE_BODY_TIMEOUT_S`` for the body; 408 and closed past
them) and serves at most ``SEEDANCE_INTAKE_MAX_CONNECTIONS`` connections at once, one thread each;
one more is answered 503 and closed at once by the accepting thread. Values from a request reach
log lines escaped (``shown``), never raw; no traceback is printed or sent to the peer.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from types import FrameType
from typing import IO, Any, cast
from urllib.parse import quote
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from seedance_worker import errors, logs, metrics
from seedance_worker.client import validate_task_id
from seedance_worker.engine.jobs import publish_poll
from seedance_worker.engine.store import get_store, scrape_counts
from seedance_worker.settings import Settings, get_settings
from seedance_worker.wiring.app import ensure_app

log = logging.getLogger(__name__)

CALLBACK_PREFIX = "/callbacks/"
MAX_BODY_BYTES = 64 * 1024  # a GET task body is a few KB
MAX_JSON_DEPTH = 32  # a task body nests 3 deep
MAX_UPDATED_AT = 2**41  # Unix seconds (or milliseconds) for ages to come; more is no time
MIN_TOKEN_LEN = 16
TASK_STATUSES = frozenset({"queued", "running", "succeeded", "failed", "expired", "cancelled"})

# Strings (possessive, so an unterminated one costs one scan), brackets, and a quote that opens none.
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*+"|[\[\]{}]|"', re.DOTALL)

StartResponse = Callable[..., Any]


def _token(settings: Settings) -> str:
    token = settings.intake_token.get_secret_value() if settings.intake_token else ""
    if not token:
        raise errors.ConfigError("SEEDANCE_INTAKE_TOKEN is not set: the intake needs its path token")
    if len(token) < MIN_TOKEN_LEN:
        raise errors.ConfigError(
            f"SEEDANCE_INTAKE_TOKEN is shorter than {MIN_TOKEN_LEN} characters: it is the only "
            "authentication of the callback path; use a long random value"
        )
    return token


def callback_url_for(settings: Settings) -> str:
    """The ``callback_url`` to give Ark at create time."""
    if not settings.intake_url:
        raise errors.ConfigError("SEEDANCE_INTAKE_URL is not set")
    return f"{settings.intake_url}/callbacks/{quote(_token(settings), safe='')}"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True)
class Callback:
    """What the intake takes from a callback body (the rest is not trusted, and not kept)."""

    task_id: str
    status: str  # one of TASK_STATUSES, or '' when the body had none
    updated_at: int | None

    @property
    def seen(self) -> str:
        """What identifies this callback among the job's (Ark sends each status change once)."""
        return f"{self.status}:{'' if self.updated_at is None else self.updated_at}"


def json_depth_within(raw: bytes, limit: int) -> bool:
    """Whether ``raw`` nests arrays and objects at most ``limit`` deep, found without parsing it
    (the parser would recurse once per level). False also for an unterminated string."""
    depth = 0
    for token in _JSON_TOKENS.finditer(raw):
        t = token.group()
        if t in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return False
        elif t in (b"]", b"}"):
            depth -= 1
        elif t == b'"':  # a quote that opens no terminated string: no later one can close either
            return False
    return True


def parse_callback(raw: bytes) -> Callback | str:
    """The callback in a body, or why it is refused (400): bad JSON, too deep, no valid id, or a
    status or ``updated_at`` that no task has."""
    if not json_depth_within(raw, MAX_JSON_DEPTH):
        return f"body is not JSON nested at most {MAX_JSON_DEPTH} deep"
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return "body is not JSON"
    if not isinstance(body, dict):
        return "expected a task JSON object"
    task_id = body.get("id")
    try:
        validate_task_id(task_id if isinstance(task_id, str) else "")
    except errors.SeedanceError:
        return "expected a task JSON with an id"
    status = body.get("status")
    if status is None or status == "":
        status = ""
    elif not isinstance(status, str) or status not in TASK_STATUSES:
        return "status is not a task status"
    updated_at = body.get("updated_at")
    if updated_at is not None and (
        isinstance(updated_at, bool)
        or not isinstance(updated_at, int)
        or not 0 <= updated_at <= MAX_UPDATED_AT
    ):
        return "updated_at is not a Unix time in seconds"
    return Callback(str(task_id), status, updated_at)


def shown(value: object, limit: int = 80) -> str:
    """A value from a request as it may appear in a log line: control characters and anything
    outside printable ASCII escaped (a newline cannot forge a line), at most ``limit`` characters."""
    text = str(value)
    cut = text[:limit]
    escaped = cut.encode("unicode_escape").decode("ascii")
    return escaped + ("..." if len(text) > limit else "")


class IntakeApp:
    """The WSGI callable."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self._token_digest = _digest(_token(self.settings))

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            return self.route(environ, start_response)
        except Exception as exc:  # a bug: answered 500 and logged once, never a traceback to the peer
            log.error("intake %s %s: unexpected %s", shown(environ.get("REQUEST_METHOD")),
                      _shown_path(environ.get("PATH_INFO")), type(exc).__name__, exc_info=True)  # fmt: skip
            metrics.intake_callback("error")
            return _reply(start_response, "500 Internal Server Error", {"error": "internal error"})

    def route(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "") or "/"
        if path == "/healthz" and method in ("GET", "HEAD"):
            return _reply(start_response, "200 OK", {"status": "ok"})
        if not path.startswith(CALLBACK_PREFIX) or not hmac.compare_digest(
            _digest(path[len(CALLBACK_PREFIX) :]), self._token_digest
        ):
            metrics.intake_callback("bad_token" if path.startswith(CALLBACK_PREFIX) else "not_found")
            return _reply(start_response, "404 Not Found", {"error": "not found"})
        if method != "POST":
            allow = [("Allow", "POST")]
            return _reply(start_response, "405 Method Not Allowed", {"error": "POST only"}, allow)
        return self.callback(environ, start_response)

    def callback(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0:
            return self.refuse(start_response, "400 Bad Request", "bad Content-Length")
        if length > MAX_BODY_BYTES:
            return self.refuse(start_response, "413 Content Too Large", f"body over {MAX_BODY_BYTES} bytes")
        try:
            raw = environ["wsgi.input"].read(length) if length else b""
        except TimeoutError:
            metrics.intake_callback("timeout")
            log.info("intake: callback body not received within SEEDANCE_INTAKE_BODY_TIMEOUT_S")
            return _reply(start_response, "408 Request Timeout", {"error": "body not received in time"})
        parsed = parse_callback(raw)
        if isinstance(parsed, str):
            return self.refuse(start_response, "400 Bad Request", parsed)
        try:
            result = self.hint(parsed)
        except Exception as exc:  # Redis or the broker unusable: let Ark retry later
            log.warning("intake %s status=%s: cannot act now: %s", parsed.task_id, parsed.status or "-",
                        type(exc).__name__)  # fmt: skip
            metrics.intake_callback("error")
            return _reply(start_response, "503 Service Unavailable", {"error": "try again"})
        metrics.intake_callback(result)
        log.info("intake %s status=%s updated_at=%s: %s", parsed.task_id, parsed.status or "-",
                 "-" if parsed.updated_at is None else parsed.updated_at, result)  # fmt: skip
        code = "200 OK" if result == "duplicate" else "202 Accepted"
        return _reply(start_response, code, {"result": result})

    def refuse(self, start_response: StartResponse, status: str, reason: str) -> list[bytes]:
        metrics.intake_callback("bad_request")
        log.info("intake: callback refused (%s): %s", status.split(" ", 1)[0], reason)
        return _reply(start_response, status, {"error": reason})

    def hint(self, cb: Callback) -> str:
        """Take the callback in the job's record, then poll early when it grants it; returns
        accepted | duplicate | unchanged | pending | scheduled | ignored (see store.hint)."""
        store = get_store(self.settings)
        decided = store.hint(cb.task_id, status=cb.status, seen=cb.seen, now=time.time(),
                             min_interval_s=self.settings.intake_poll_floor_s())  # fmt: skip
        if decided.verdict != "accepted":
            return decided.verdict
        try:
            ensure_app()
            publish_poll(cb.task_id, gen=decided.gen, countdown_s=decided.countdown_s,
                         celery_id=decided.owner, settings=self.settings, canvas=decided.canvas)  # fmt: skip
        except BaseException:
            store.unhint(cb.task_id, seen=cb.seen, gen=decided.gen)  # not acted on: a retry may try again
            raise
        return "accepted"


def _reply(
    start_response: StartResponse,
    status: str,
    doc: dict[str, Any],
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    data = json.dumps(doc).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *(headers or [])],
    )
    return [data]


def make_wsgi_app(settings: Settings | None = None) -> IntakeApp:
    """The intake as a WSGI app, for any WSGI server (gunicorn, uwsgi, waitress...)."""
    return IntakeApp(settings)


# --- serving --------------------------------------------------------------------------------------

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
        log.debug("intake %s %s", self.address_string(), _shown_path(format % args, limit=300))


def _shown_path(text: object, limit: int = 120) -> str:
    """``shown`` with the callback path's token replaced (it is the path's only authentication)."""
    value = str(text or "")
    if CALLBACK_PREFIX in value:
        head, _, rest = value.partition(CALLBACK_PREFIX)
        tail = " " + rest.split(" ", 1)[1] if " " in rest else ""
        value = head + CALLBACK_PREFIX + "[redacted]" + tail
    return shown(value, limit)


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
            metrics.start_server(settings.metrics_port, inflight=scrape_counts(settings.redis_url))
        except OSError as exc:
            server.server_close()
            where = f"SEEDANCE_METRICS_PORT={settings.metrics_port}"
            raise errors.ConfigError(f"cannot serve metrics on {where}: {exc.strerror or exc}") from None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=server.serve_forever, name="seedance-intake", daemon=True)
    thread.start()
    log.info("intake serving on %s:%d%s<token>", host, server.server_address[1], CALLBACK_PREFIX)
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
