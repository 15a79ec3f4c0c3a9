"""The callback intake: Ark's ``callback_url`` posts as hints that poll a job right away.

A stdlib WSGI app (no new dependency; mountable in any WSGI server, ``make_wsgi_app()``) served by
``serve_intake(host, port)`` on a threaded ``wsgiref`` server. Routes:

* ``POST /callbacks/<token>``: the token must equal ``SEEDANCE_INTAKE_TOKEN`` (compared in constant
  time on digests); anything else is 404 and counted. Ark does not sign callbacks: the path token is
  the only authentication, so it is never logged (request lines show ``/callbacks/[redacted]``).
  The body has the shape of GET task (``id``, ``status``, ``updated_at``); bad JSON or no valid ``id``
  is 400. Each ``(id, status, updated_at)`` is acted on once (``SET NX EX`` in Redis); a repeat is
  answered 200 ``duplicate``. A new one calls ``track.poll_now(id)``: an immediate poll of the
  tracked job (the poll stays the source of truth; the body is not trusted) and 202 ``accepted``;
  a status the last poll already saw is 202 ``unchanged`` (no extra GET), an untracked or finished
  job 202 ``ignored``. Redis down: 503, so Ark retries.
* ``GET /healthz``: 200 ``ok``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from types import FrameType
from typing import Any
from urllib.parse import quote
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from seedance_worker import connections, errors, keys, logs, metrics
from seedance_worker.client import validate_task_id
from seedance_worker.engine.store import get_store, scrape_counts
from seedance_worker.settings import Settings, get_settings
from seedance_worker.track import poll_now

log = logging.getLogger(__name__)

CALLBACK_PREFIX = "/callbacks/"
DEDUPE_TTL_S = 86400
MAX_BODY_BYTES = 1024 * 1024
MIN_TOKEN_LEN = 16

StartResponse = Callable[..., Any]


def dedupe_key(task_id: str, status: str, updated_at: str) -> str:
    return keys.intake(task_id, status, updated_at)


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


class IntakeApp:
    """The WSGI callable."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self._token_digest = _digest(_token(self.settings))

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
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
        if length < 0 or length > MAX_BODY_BYTES:
            metrics.intake_callback("bad_request")
            return _reply(start_response, "413 Content Too Large", {"error": "body too large"})
        raw = environ["wsgi.input"].read(length) if length else b""
        try:
            body = json.loads(raw)
            task_id = body["id"]
            validate_task_id(task_id)
        except (ValueError, TypeError, KeyError, errors.SeedanceError):
            metrics.intake_callback("bad_request")
            return _reply(start_response, "400 Bad Request", {"error": "expected a task JSON with an id"})
        status = str(body.get("status") or "")
        updated_at = str(body.get("updated_at") or "")
        try:
            result = self.hint(task_id, status, updated_at)
        except Exception as exc:  # Redis or the broker unusable: let Ark retry later
            log.warning("intake %s status=%s: cannot act now: %s", task_id, status, type(exc).__name__)
            metrics.intake_callback("error")
            return _reply(start_response, "503 Service Unavailable", {"error": "try again"})
        metrics.intake_callback(result)
        log.info("intake %s status=%s updated_at=%s: %s", task_id, status, updated_at, result)
        code = "200 OK" if result == "duplicate" else "202 Accepted"
        return _reply(start_response, code, {"result": result})

    def hint(self, task_id: str, status: str, updated_at: str) -> str:
        """Dedupe, then poll the job now; returns accepted | duplicate | unchanged | ignored."""
        store = get_store(self.settings)
        key = dedupe_key(task_id, status, updated_at)
        r = connections.get_redis(self.settings)
        if not r.set(key, "1", nx=True, ex=DEDUPE_TTL_S):
            return "duplicate"
        try:
            record = store.get(task_id)
            if record is None or record.state != "polling":
                return "ignored"
            if status and (record.status or "queued") == status:
                # The last poll already saw this status (every job starts queued): nothing to fetch.
                return "unchanged"
            polled = poll_now(task_id, self.settings)
        except BaseException:
            r.delete(key)  # not acted on: a retried callback may try again
            raise
        return "accepted" if polled else "ignored"


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


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class _QuietHandler(WSGIRequestHandler):
    """Request lines go to the logger with the path token hidden (never to stderr as is)."""

    def log_message(self, format: str, *args: Any) -> None:
        text = format % args
        if CALLBACK_PREFIX in text:
            head, _, rest = text.partition(CALLBACK_PREFIX)
            tail = " " + rest.split(" ", 1)[1] if " " in rest else ""
            text = head + CALLBACK_PREFIX + "[redacted]" + tail
        log.debug("intake %s %s", self.address_string(), text)


def make_intake_server(host: str, port: int, settings: Settings | None = None) -> WSGIServer:
    """A threaded server for the intake app, bound but not yet serving (``serve_forever``)."""
    app = make_wsgi_app(settings)
    return make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)


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
                settings.metrics_port, addr=settings.metrics_addr, inflight=scrape_counts(settings.redis_url)
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
