"""The intake's WSGI app: routes, the callback's answers, and the early poll it may ask for."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from seedance_worker import metrics
from seedance_worker.engine.jobs import publish_poll
from seedance_worker.engine.store import get_store
from seedance_worker.intake.body import MAX_BODY_BYTES, Callback, parse_callback, shown
from seedance_worker.intake.urls import CALLBACK_PREFIX, Access, PathCheck, shown_path
from seedance_worker.settings import Settings, get_settings
from seedance_worker.wiring.app import ensure_app

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]


class IntakeApp:
    """The WSGI callable."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.check_path = PathCheck(self.settings)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            return self.route(environ, start_response)
        except Exception as exc:  # a bug: answered 500 and logged once, never a traceback to the peer
            log.error("intake %s %s: unexpected %s", shown(environ.get("REQUEST_METHOD")),
                      shown_path(environ.get("PATH_INFO")), type(exc).__name__, exc_info=True)  # fmt: skip
            metrics.intake_callback("error")
            return _reply(start_response, "500 Internal Server Error", {"error": "internal error"})

    def route(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "") or "/"
        if path == "/healthz" and method in ("GET", "HEAD"):
            return _reply(start_response, "200 OK", {"status": "ok"})
        access = self.check_path(path) if path.startswith(CALLBACK_PREFIX) else None
        if access is None:
            metrics.intake_callback("bad_token" if path.startswith(CALLBACK_PREFIX) else "not_found")
            return _reply(start_response, "404 Not Found", {"error": "not found"})
        if method != "POST":
            allow = [("Allow", "POST")]
            return _reply(start_response, "405 Method Not Allowed", {"error": "POST only"}, allow)
        return self.callback(environ, start_response, access)

    def callback(
        self, environ: dict[str, Any], start_response: StartResponse, access: Access
    ) -> Iterable[bytes]:
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
            result = self.hint(parsed, access)
        except Exception as exc:  # Redis or the broker unusable: let Ark retry later
            log.warning("intake %s status=%s: cannot act now: %s", parsed.task_id, parsed.status or "-",
                        type(exc).__name__)  # fmt: skip
            metrics.intake_callback("error")
            return _reply(start_response, "503 Service Unavailable", {"error": "try again"})
        metrics.intake_callback(result)
        log.info("intake %s status=%s updated_at=%s: %s", parsed.task_id, parsed.status or "-",
                 "-" if parsed.updated_at is None else parsed.updated_at, result)  # fmt: skip
        if result == "wrong_job":  # a per-task URL used for another task: as if the URL were wrong
            return _reply(start_response, "404 Not Found", {"error": "not found"})
        code = "200 OK" if result == "duplicate" else "202 Accepted"
        return _reply(start_response, code, {"result": result})

    def refuse(self, start_response: StartResponse, status: str, reason: str) -> list[bytes]:
        metrics.intake_callback("bad_request")
        log.info("intake: callback refused (%s): %s", status.split(" ", 1)[0], reason)
        return _reply(start_response, status, {"error": reason})

    def hint(self, cb: Callback, access: Access) -> str:
        """Take the callback in the job's record, then poll early when it grants it; returns
        accepted | duplicate | unchanged | pending | scheduled | ignored | wrong_job (store.hint)."""
        store = get_store(self.settings)
        floor_s = self.settings.intake_poll_floor_s()
        decided = store.hint(cb.task_id, status=cb.status, seen=cb.seen, now=time.time(),
                             min_interval_s=floor_s, nonce=access.nonce)  # fmt: skip
        if decided.verdict != "accepted":
            return decided.verdict
        try:
            ensure_app()
            publish_poll(cb.task_id, gen=decided.gen, countdown_s=decided.countdown_s,
                         celery_id=decided.owner, settings=self.settings, canvas=decided.canvas,
                         trace=decided.trace)  # fmt: skip
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
