"""A scripted, hostile stand-in for the Ark API on 127.0.0.1: each route answers whatever the test
last told it to (oversized or gzip-bomb bodies, absurd numbers, redirects, echoed API keys), and
every request it receives is recorded, so a test can also prove what was *not* sent."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TASKS = "/api/v3/contents/generations/tasks"


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int  # one per TCP connection: tells a reused connection from a new one


def json_reply(obj: Any, status: int = 200, **headers: str) -> Reply:
    return Reply(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **headers})


def raw_json_reply(text: str, status: int = 200) -> Reply:
    """A body written by hand: JSON that ``json.dumps`` would not write (a 400-digit number)."""
    return Reply(status, text.encode(), {"Content-Type": "application/json"})


def gzip_reply(obj: Any) -> Reply:
    """A small gzip body that decodes to ``json.dumps(obj)`` (a bomb when obj holds a long string)."""
    body = gzip.compress(json.dumps(obj).encode(), compresslevel=9)
    return Reply(200, body, {"Content-Type": "application/json", "Content-Encoding": "gzip"})


def redirect(status: int, location: str) -> Reply:
    return Reply(status, b"", {"Location": location})


def task_path(task_id: str) -> str:
    return f"{TASKS}/{task_id}"


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up mid-body is what these tests provoke, not a server failure


class HostileApi:
    """``with HostileApi() as api: api.answer("GET", task_path(tid), reply)``; base_url for the client."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: dict[tuple[str, str], Reply] = {}
        self._seen: list[Seen] = []
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self.port = int(self._server.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}/api/v3"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def answer(self, method: str, path: str, reply: Reply) -> None:
        with self._lock:
            self._routes[(method, path)] = reply

    def seen(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self._seen if (method in (None, s.method)) and (path in (None, s.path))]

    def __enter__(self) -> HostileApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _reply_for(self, seen: Seen) -> Reply:
        with self._lock:
            self._seen.append(seen)
            reply = self._routes.get((seen.method, seen.path))
        return reply or json_reply({"error": {"code": "ResourceNotFound", "message": "no such route"}}, 404)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                seen = Seen(self.command, path, dict(self.headers.items()), body, int(self.client_address[1]))
                reply = api._reply_for(seen)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                try:
                    for chunk in _chunks(reply.body):
                        self.wfile.write(chunk)
                except OSError:  # the client refused the body and hung up: that is the point
                    self.close_connection = True

            do_GET = do_POST = do_DELETE = _serve

        return Handler


def _chunks(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]
