"""A webhook receiver on loopback for tests and the demo: keeps every POST, checks its Standard
Webhooks signature when given the secret, and answers from a plan (else 2xx, or 401 when unsigned).

One receiver serves the notify step's tests, the end-to-end and fault runs, the demo and the
simulator's own Ark callbacks (no secret there: Ark does not sign them).
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Delivery:
    """One POST as received, and what the receiver answered."""

    at: float
    path: str
    headers: Mapping[str, str]  # names lower-cased
    body: bytes
    answered: int
    verified: bool | None  # None: the receiver has no secret, so nothing was checked
    error: str | None = None  # why the signature or the body was refused
    payload: Mapping[str, Any] = field(default_factory=dict)  # the body as JSON ({} when it is not)

    @property
    def webhook_id(self) -> str | None:
        return self.headers.get("webhook-id")

    @property
    def task_id(self) -> str | None:
        value = self.payload.get("task_id", self.payload.get("id"))
        return value if isinstance(value, str) else None

    @property
    def status(self) -> str | None:
        value = self.payload.get("status")
        return value if isinstance(value, str) else None

    @property
    def ok(self) -> bool:
        return 200 <= self.answered < 300


# Decides the answer to a delivery that no plan covers; gets the delivery with ``answered=0``.
Answer = Callable[[Delivery], int]


def signed_or_401(delivery: Delivery) -> int:
    return 401 if delivery.verified is False else 200


def flaky(fail_rate: float, rng: random.Random, code: int = 503) -> Answer:
    """Answers ``code`` to a share of the signed deliveries, on purpose (retries must cover it)."""

    def answer(delivery: Delivery) -> int:
        if delivery.verified is False or delivery.error:
            return 401
        return code if rng.random() < fail_rate else 200

    return answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A SIGKILLed sender resets its keep-alive socket: expected in fault runs, not a traceback.
        if isinstance(sys.exc_info()[1], ConnectionResetError | BrokenPipeError):
            return
        super().handle_error(request, client_address)


class WebhookReceiver:
    """``with WebhookReceiver(secret) as r: ... r.url ... r.deliveries``.

    ``plan(codes, task_id=...)`` queues the answers of the next deliveries (of that task, or of any);
    past the plan, ``answer`` decides. ``log_path`` appends one JSON line per delivery.
    """

    def __init__(
        self,
        secret: str | None = None,
        *,
        answer: Answer = signed_or_401,
        path: str = "/hooks/seedance",
        log_path: Path | None = None,
    ) -> None:
        self._webhook = Webhook(secret) if secret else None
        self._answer = answer
        self._path = path
        self._log_path = log_path
        self._plans: dict[str | None, list[int]] = {}
        self._deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        url = self.url if self._server else None
        return f"WebhookReceiver(url={url!r}, signed={self._webhook is not None})"

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the receiver is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}{self._path}"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code = receiver._receive(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                reply = b'{"ok":true}' if 200 <= code < 300 else b'{"error":"refused"}'
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self._server = _Server(("127.0.0.1", 0), Handler)
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
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def plan(self, codes: Iterable[int], task_id: str | None = None) -> None:
        with self._lock:
            self._plans.setdefault(task_id, []).extend(codes)

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def payloads(self) -> list[dict[str, Any]]:
        return [dict(d.payload) for d in self.deliveries]

    def for_task(self, task_id: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.task_id == task_id]

    def clear(self) -> None:
        with self._lock:
            self._deliveries.clear()

    def wait_for(self, count: int, timeout_s: float) -> bool:
        """True once ``count`` deliveries have arrived (the sender's answer precedes our record)."""
        deadline = time.monotonic() + timeout_s
        with self._arrived:
            while len(self._deliveries) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._arrived.wait(left)
            return True

    def _verify(self, headers: Mapping[str, str], body: bytes) -> tuple[bool | None, str | None]:
        if self._webhook is None:
            return None, None
        try:
            self._webhook.verify(body, dict(headers))
        except WebhookVerificationError as exc:
            return False, f"signature: {exc}"
        return True, None

    def _receive(self, path: str, headers: Mapping[str, str], body: bytes) -> int:
        verified, error = self._verify(headers, body)
        try:
            parsed = json.loads(body) if body else {}
        except ValueError:
            parsed, error = {}, error or "body is not JSON"
        payload = parsed if isinstance(parsed, dict) else {}
        seen = Delivery(time.time(), path, headers, body, 0, verified, error, payload)
        with self._arrived:
            planned = self._plans.get(seen.task_id) or self._plans.get(None)
            code = planned.pop(0) if planned else self._answer(seen)
            delivery = Delivery(seen.at, path, headers, body, code, verified, error, payload)
            self._deliveries.append(delivery)
            if self._log_path is not None:
                with self._log_path.open("a") as f:
                    f.write(json.dumps(_log_line(delivery)) + "\n")
            self._arrived.notify_all()
        return code


def _log_line(d: Delivery) -> dict[str, Any]:
    return {
        "webhook_id": d.webhook_id,
        "verified": d.verified,
        "task_id": d.task_id,
        "status": d.status,
        "answered": d.answered,
        "received_at": d.at,
        "outcome": dict(d.payload),
    }
