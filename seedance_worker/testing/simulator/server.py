"""HTTP plumbing: the threaded server, reading bodies (chunked too), routing a path to a request
kind, recording each request, telling response observers, and writing the reply (or dropping it).
"""

from __future__ import annotations

import collections
import json
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType
from typing import Any

from seedance_worker.testing.simulator.config import (
    FILES_PREFIX,
    TASKS_PATH,
    RequestKind,
    RequestRecord,
    Shared,
    SimConfig,
)
from seedance_worker.testing.simulator.downloads import Downloads
from seedance_worker.testing.simulator.endpoints import TaskApi
from seedance_worker.testing.simulator.wire import ApiError, Reply, error_reply, new_request_id

ResponseObserver = Callable[[str, int, Mapping[str, str]], None]
"""Called with (request id, status code, response headers) before each response is written."""

_MAX_BODY = 64 * 1024 * 1024


class Server(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True
    allow_reuse_address = True
    front: Front

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (a timeout, a closed 403) is normal here, not worth a traceback.
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 300
    server: Server
    server_version = "SeedanceSimulator/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def setup(self) -> None:
        super().setup()
        self.server.front.opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.front.closed(self.connection)

    def do_GET(self) -> None:
        self.server.front.handle(self, "GET")

    def do_HEAD(self) -> None:
        self.server.front.handle(self, "HEAD")

    def do_POST(self) -> None:
        self.server.front.handle(self, "POST")

    def do_DELETE(self) -> None:
        self.server.front.handle(self, "DELETE")

    def do_PUT(self) -> None:
        self.server.front.handle(self, "PUT")

    def do_PATCH(self) -> None:
        self.server.front.handle(self, "PATCH")


def open_server(host: str, port: int, front: Front) -> Server:
    server_cls = Server
    if ":" in host:

        class Server6(Server):
            address_family = socket.AF_INET6

        server_cls = Server6
    server = server_cls((host, port), Handler)
    server.front = front
    return server


def read_body(h: BaseHTTPRequestHandler) -> bytes:
    if "chunked" in h.headers.get("Transfer-Encoding", "").lower():
        parts: list[bytes] = []
        total = 0
        while True:
            line = h.rfile.readline(1024)
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > _MAX_BODY:
                raise ValueError("body too large")
            parts.append(h.rfile.read(size))
            h.rfile.readline(16)
    length = int(h.headers.get("Content-Length") or 0)
    if length < 0 or length > _MAX_BODY:
        raise ValueError("bad Content-Length")
    return h.rfile.read(length) if length else b""


def route(method: str, path: str) -> tuple[RequestKind, str | None]:
    if path.startswith(FILES_PREFIX):
        name = urllib.parse.unquote(path[len(FILES_PREFIX) :])
        for ext in (".mp4", ".png"):
            if name.endswith(ext):
                return "file", name[: -len(ext)]
        return "other", None
    p = path.rstrip("/")
    if p == TASKS_PATH:
        if method == "POST":
            return "create", None
        if method == "GET":
            return "list", None
        return "other", None
    if p.startswith(TASKS_PATH + "/"):
        tid = urllib.parse.unquote(p[len(TASKS_PATH) + 1 :])
        if "/" not in tid:
            if method == "GET":
                return "get", tid
            if method == "DELETE":
                return "delete", tid
            return "other", tid
    return "other", None


class Front:
    """Turns one HTTP request into a reply: route, answer, record (``log``), observe, write.

    ``log`` and the open connections are guarded by the shared lock.
    """

    def __init__(self, shared: Shared, api: TaskApi, downloads: Downloads) -> None:
        self._shared = shared
        self._api = api
        self._downloads = downloads
        self.log: collections.deque[RequestRecord] = collections.deque(maxlen=shared.config.max_log_records)
        self.conns: set[socket.socket] = set()
        # A tuple replaced whole, so handler threads iterate it without the lock.
        self.observers: tuple[ResponseObserver, ...] = ()

    def opened(self, conn: socket.socket) -> None:
        with self._shared.lock:
            self.conns.add(conn)

    def closed(self, conn: socket.socket) -> None:
        with self._shared.lock:
            self.conns.discard(conn)

    def handle(self, h: Handler, method: str) -> None:
        started = time.monotonic()
        ts = time.time()
        rid = new_request_id()
        split = urllib.parse.urlsplit(h.path)
        path = split.path
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        kind, task_id = route(method, path)
        headers = {k: v for k, v in h.headers.items() if k.lower() != "authorization"}
        auth = h.headers.get("Authorization")
        resp, parsed_body = self._answer(
            h, method, kind, task_id, path, query, auth, rid, self._shared.config
        )
        if resp.task_id is None:
            resp.task_id = task_id
        # Logged before the answer goes out, so a client that has its response also sees the record.
        record = RequestRecord(
            ts=ts,
            method=method,
            path=path,
            task_id=resp.task_id,
            status=resp.status,
            request_id=rid,
            kind=kind,
            fault=resp.fault,
            headers=headers,
            query=query,
            auth_present=bool(auth),
            body=parsed_body,
            duration_s=time.monotonic() - started,
        )
        with self._shared.lock:
            self.log.append(record)
        self._write(h, method, resp, rid)

    def _answer(
        self,
        h: Handler,
        method: str,
        kind: RequestKind,
        task_id: str | None,
        path: str,
        query: dict[str, list[str]],
        auth: str | None,
        rid: str,
        cfg: SimConfig,
    ) -> tuple[Reply, Any]:
        """The reply, and the parsed JSON body of a create (None otherwise or when it does not parse)."""
        try:
            raw = read_body(h)
        except (ValueError, OSError):
            resp = error_reply(400, "InvalidParameter", "The request body could not be read.", "", rid)
            resp.close = True
            return resp, None
        parsed_body: Any = None
        if kind == "create":
            try:
                parsed_body = json.loads(raw) if raw else None
            except ValueError:
                parsed_body = None
        try:
            if kind == "file":
                resp = self._downloads.serve(
                    method, task_id or "", path, query, h.headers.get("Range"), rid, cfg
                )
            elif kind == "other":
                allowed = (kind == "other" and task_id is not None) or path.rstrip("/") == TASKS_PATH
                status = 405 if allowed else 404
                code = "MethodNotAllowed" if allowed else "NotFound"
                resp = error_reply(status, code, f"{method} {path} is not supported.", "", rid)
            else:
                resp = self._api.answer(kind, task_id, query, raw, parsed_body, auth, cfg)
        except ApiError as e:
            resp = error_reply(e.status, e.code, e.message, e.param, rid, e.headers, e.fault)
        except Exception as e:
            resp = error_reply(
                500, "InternalServiceError", f"simulator error: {type(e).__name__}: {e}", "", rid
            )
        return resp, parsed_body

    def _write(self, h: Handler, method: str, resp: Reply, rid: str) -> None:
        length = resp.content_length if resp.content_length is not None else len(resp.body)
        headers = [
            ("Content-Type", resp.content_type),
            ("Content-Length", str(length)),
            ("X-Request-Id", rid),
        ]
        client_rid = h.headers.get("X-Client-Request-Id")
        if client_rid:
            headers.append(("X-Client-Request-Id", client_rid))
        headers.extend(resp.headers)
        close = resp.close or resp.drop_after is not None
        if close:
            headers.append(("Connection", "close"))
        if self.observers:
            seen = MappingProxyType(dict(headers))
            for observe in self.observers:
                observe(rid, resp.status, seen)
        try:
            h.send_response(resp.status)
            for k, v in headers:
                h.send_header(k, v)
            if close:
                h.close_connection = True
            h.end_headers()
            if method != "HEAD":
                if resp.drop_after is not None:
                    h.wfile.write(resp.body[: resp.drop_after])
                    h.wfile.flush()
                    h.connection.shutdown(socket.SHUT_RDWR)
                else:
                    h.wfile.write(resp.body)
        except OSError:
            h.close_connection = True
