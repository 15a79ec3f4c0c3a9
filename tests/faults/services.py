"""The run's stand-ins and process plumbing: the webhook receiver, the simulator that also keeps the
``Retry-After`` it answered, the SEEDANCE_* environment of a run and the driver's Celery app.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from celery import Celery, current_app
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from seedance_worker import install
from seedance_worker.settings import get_settings
from seedance_worker.testing.simulator import Simulator
from seedance_worker.wiring.app import reset_caches
from seedance_worker.wiring.conf import celery_config


@dataclass(frozen=True)
class Delivery:
    ts: float
    webhook_id: str
    task_id: str | None
    status: str | None
    code: int  # what the receiver answered
    verified: bool
    error: str | None
    body: bytes


class WebhookReceiver:
    """Verifies every Standard Webhooks signature; answers 2xx, or 503 to a share on purpose."""

    def __init__(self, secret: str, fail_rate: float, rng: random.Random) -> None:
        self.secret = secret
        self.fail_rate = fail_rate
        self.rng = rng
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/seedance"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                code, payload = receiver._receive(self.headers, body)
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        class Server(ThreadingHTTPServer):
            request_queue_size = 128
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
        quiet_resets(self._server)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _receive(self, headers: Any, body: bytes) -> tuple[int, bytes]:
        wid = headers.get("webhook-id") or ""
        task_id = status = None
        error: str | None = None
        verified = False
        try:
            Webhook(self.secret).verify(body, {k.lower(): v for k, v in headers.items()})
            verified = True
        except WebhookVerificationError as exc:
            error = f"signature: {exc}"
        try:
            data = json.loads(body)
            task_id, status = data.get("task_id"), data.get("status")
        except ValueError:
            error = error or "body is not JSON"
        with self._lock:
            if not verified or error:
                code = 401
            elif self.rng.random() < self.fail_rate:
                code = 503
            else:
                code = 200
            self.deliveries.append(Delivery(time.time(), wid, task_id, status, code, verified, error, body))
        return code, b'{"ok":true}' if code == 200 else b'{"error":"try again"}'


@contextlib.contextmanager
def seedance_environ(values: dict[str, str]) -> Iterator[None]:
    """Exactly these SEEDANCE_* variables for the run (workers inherit them); restored afterwards."""
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith("SEEDANCE_")}
    for k in saved:
        del os.environ[k]
    os.environ.update(values)
    reset_caches()
    try:
        yield
    finally:
        for k in [k for k in os.environ if k.upper().startswith("SEEDANCE_")]:
            del os.environ[k]
        os.environ.update(saved)
        reset_caches()


@contextlib.contextmanager
def driver_app() -> Iterator[Any]:
    """A Celery app for this process on the run's Redis (track()/submit() publish through it)."""
    previous = current_app._get_current_object()
    app = Celery("seedance_faults_driver")
    app.conf.update(celery_config(get_settings()))
    install(app)
    app.set_current()
    try:
        yield app
    finally:
        previous.set_current()
        with contextlib.suppress(Exception):
            app.close()


class RecordingSimulator(Simulator):
    """The simulator, also keeping the ``Retry-After`` it answered, by request id.

    ``RequestRecord`` keeps the request's headers, not the response's; the exact value each 429 told
    the client is what the Retry-After check must compare with.  (The simulator's server already
    keeps quiet about the resets of SIGKILLed workers.)
    """

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.retry_after: dict[str, float] = {}
        self.add_response_observer(self._keep_retry_after)

    def _keep_retry_after(self, request_id: str, status: int, headers: Mapping[str, str]) -> None:
        for k, v in headers.items():
            if k.lower() == "retry-after":
                with contextlib.suppress(ValueError):
                    self.retry_after[request_id] = float(v)


def quiet_resets(server: Any) -> None:
    """A SIGKILLed worker resets its keep-alive sockets: not worth a traceback on stderr."""
    original = server.handle_error

    def handle_error(request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionResetError | BrokenPipeError):
            return
        original(request, client_address)

    server.handle_error = handle_error
