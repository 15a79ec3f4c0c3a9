"""A webhook receiver that answers as slowly as it likes: its response trickles out a byte at a time.

Each byte comes within any read timeout, so only a wall-clock deadline on the whole request stops a
sender. The server reads the request (headers and Content-Length body), then sends ``head``
(dripped when ``drip_head``, else at once) and ``body`` (dripped when ``drip_body``), one byte every
``interval_s``, and notes whether the client hung up before the end.
"""

from __future__ import annotations

import select
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType


@dataclass
class Attempt:
    """One request as the server saw it."""

    received_at: float
    request: bytes
    sent: int = 0  # bytes of the response sent before the end or the hang-up
    hung_up: bool = False  # the client closed before the whole response was out
    ended_at: float | None = None


@dataclass
class DripConfig:
    head: bytes = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 40\r\n\r\n"
    body: bytes = b"x" * 40
    drip_head: bool = True
    drip_body: bool = True
    interval_s: float = 0.3
    attempts: list[Attempt] = field(default_factory=list)
    received: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)


def _read_request(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _client_gone(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        cfg = self.server.cfg
        sock: socket.socket = self.request
        attempt = Attempt(received_at=time.time(), request=_read_request(sock))
        cfg.attempts.append(attempt)
        cfg.received.set()
        try:
            for part, drip in ((cfg.head, cfg.drip_head), (cfg.body, cfg.drip_body)):
                chunks = [part[i : i + 1] for i in range(len(part))] if drip else [part]
                for chunk in chunks:
                    if _client_gone(sock):
                        attempt.hung_up = True
                        return
                    sock.sendall(chunk)
                    attempt.sent += len(chunk)
                    if drip:
                        time.sleep(cfg.interval_s)
        except OSError:
            attempt.hung_up = True
        finally:
            attempt.ended_at = time.time()
            cfg.ended.set()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, cfg: DripConfig) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.cfg = cfg


class DripServer:
    """``with DripServer(DripConfig(...)) as s: ... s.url ...``"""

    def __init__(self, cfg: DripConfig | None = None) -> None:
        self.cfg = cfg or DripConfig()
        self._server = _Server(self.cfg)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/seedance"

    def __enter__(self) -> DripServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
