"""A small stdlib file server for download tests: scripted statuses, drops, lies and slow bodies.

Serves ``routes`` by path (query ignored) on a real loopback socket and records every request.
Ranges are honoured like S3/TOS do: ``Range`` with ``If-Range`` matching the current ``ETag`` (or
``Last-Modified``) gets a ``206``, a stale ``If-Range`` gets the whole file (``200``).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 1200  # ~300 KB, several chunks
PNG = b"\x89PNG\r\n\x1a\n" + b"frame" * 100
AUTO = "auto"


@dataclass
class Route:
    body: bytes = VIDEO
    content_type: str = "video/mp4"
    statuses: list[int] = field(default_factory=list)  # served (empty body) before the real answer
    drop_after: int | None = None  # close the connection after this many body bytes ...
    drops: int = 0  # ... this many times
    ranges: bool = True
    send_length: bool = True
    claim_length: int | None = None  # a Content-Length that lies
    redirect: str | None = None
    chunked: bool = False
    etag: str | None = AUTO  # AUTO: a strong ETag from the body's md5; None: no ETag
    last_modified: str | None = None
    honour_if_range: bool = True  # False: serve the range even when If-Range names another version
    encoding: str | None = None  # "gzip": the body goes out gzip-compressed (no ranges then)
    drip_s: float | None = None  # send the body one byte per this many seconds
    next_body: bytes | None = None  # the file is replaced by this after the first answer


class FileServer:
    """Serves ``routes`` by path (query ignored) and records every request."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer._serve(self)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hung up on a dripping body is expected

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, path: str, route: Route | None = None) -> str:
        self.routes[path] = route or Route()
        return f"{self.base}{path}?X-Tos-Signature=sig-SECRET-{uuid.uuid4().hex}&X-Tos-Expires=86400"

    def hits(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [h for p, h in self.requests if urlsplit(p).path == path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- serving ----------------------------------------------------------------------------------

    def _take(self, h: BaseHTTPRequestHandler) -> tuple[Route | None, int | None, int | None, bytes]:
        """(route, scripted status, drop point, current body), under the lock."""
        with self.lock:
            self.requests.append((h.path, dict(h.headers.items())))
            route = self.routes.get(urlsplit(h.path).path)
            if route is None:
                return None, 404, None, b""
            status = route.statuses.pop(0) if route.statuses else None
            drop = None
            if route.drop_after is not None and route.drops > 0:
                route.drops -= 1
                drop = route.drop_after
            body = route.body
            if route.next_body is not None and status is None:
                route.body, route.next_body = route.next_body, None
            return route, status, drop, body

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        route, status, drop, body = self._take(h)
        if route is None or status is not None:
            _empty(h, status or 404, "application/xml")
            return
        if route.redirect:
            _empty(h, 302, "text/plain", [("Location", route.redirect)])
            return
        etag = ('"' + hashlib.md5(body).hexdigest() + '"') if route.etag == AUTO else route.etag
        headers = [("Content-Type", route.content_type), ("Accept-Ranges", "bytes")]
        headers += [(k, v) for k, v in (("ETag", etag), ("Last-Modified", route.last_modified)) if v]
        code, body = self._ranged(h, route, body, etag, headers)
        if code == 416:
            return
        if route.encoding == "gzip":
            body = gzip.compress(body)
            headers.append(("Content-Encoding", "gzip"))
        _send(h, route, code, body, headers, drop)

    def _ranged(
        self, h: BaseHTTPRequestHandler, route: Route, body: bytes, etag: str | None, headers: list[Any]
    ) -> tuple[int, bytes]:
        rng = h.headers.get("Range")
        if not rng or not route.ranges or route.encoding:
            return 200, body
        if_range = h.headers.get("If-Range")
        if if_range and route.honour_if_range and if_range not in (etag, route.last_modified):
            return 200, body  # the file changed: the whole new version
        start = int(rng.split("=")[1].split("-")[0])
        total = len(body)
        if start >= total:
            _empty(h, 416, route.content_type, [("Content-Range", f"bytes */{total}")])
            return 416, b""
        headers.append(("Content-Range", f"bytes {start}-{total - 1}/{total}"))
        return 206, body[start:]


def _empty(h: BaseHTTPRequestHandler, code: int, ctype: str, extra: Sequence[tuple[str, str]] = ()) -> None:
    h.send_response(code)
    h.send_header("Content-Type", ctype)
    for k, v in extra:
        h.send_header(k, v)
    h.send_header("Content-Length", "0")
    h.end_headers()


def _send(
    h: BaseHTTPRequestHandler, route: Route, code: int, body: bytes, headers: list[Any], drop: int | None
) -> None:
    h.send_response(code)
    for k, v in headers:
        h.send_header(k, v)
    if route.chunked:
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for i in range(0, len(body), 50_000):
            part = body[i : i + 50_000]
            h.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")
        return
    if route.claim_length is not None:
        h.send_header("Content-Length", str(route.claim_length))
    elif route.send_length:
        h.send_header("Content-Length", str(len(body)))
    else:
        h.send_header("Connection", "close")
        h.close_connection = True
    h.end_headers()
    if drop is not None:
        body = body[:drop]
        h.close_connection = True
    try:
        if route.drip_s is not None:
            for i in range(len(body)):
                h.wfile.write(body[i : i + 1])
                h.wfile.flush()
                time.sleep(route.drip_s)
        else:
            h.wfile.write(body)
            h.wfile.flush()
    except OSError:
        h.close_connection = True  # the client gave up on us
        return
    if drop is not None or route.claim_length is not None:
        h.close_connection = True
        with contextlib.suppress(OSError):
            h.connection.shutdown(socket.SHUT_RDWR)
