"""One HTTP POST with a wall-clock deadline: a watchdog shuts its socket when the time is up.

requests' timeouts bound each socket operation, not the request: a server that drips its status
line a byte at a time, each byte inside the read timeout, keeps the POST alive for as long as it
likes. The notify step's claim on a delivery lasts a fixed time, so a POST outliving it would let a
second sender start. Here every socket the request opens (urllib3 calls ``_new_conn`` in the
calling thread) is registered with a watchdog timer; at the deadline the timer shuts the socket
down (``shutdown`` wakes a ``recv`` blocked in another thread; ``close`` would not be safe), the
request fails at once, and ``WebhookDeadline`` says why. Only the status line and headers are
waited for: the body of the answer is never read.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from seedance_worker.errors import WebhookDeadline


class _Watchdog:
    """The sockets of one request, shut down together when the deadline passes."""

    def __init__(self) -> None:
        self.fired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            if self.fired:  # connected just after the deadline: no use for it either
                _shut(sock)

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._socks:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed or never connected: nothing left to stop
        sock.shutdown(socket.SHUT_RDWR)


_current = threading.local()


def _register(sock: socket.socket) -> socket.socket:
    watchdog: _Watchdog | None = getattr(_current, "watchdog", None)
    if watchdog is not None:
        watchdog.add(sock)
    return sock


class _WatchedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _register(super()._new_conn())


class _WatchedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:  # the raw socket, before TLS: a slow handshake is cut too
        return _register(super()._new_conn())


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """Direct and HTTP(S)-proxied connections use the watched pools (a SOCKS proxy keeps its own
    and has only the per-operation timeouts)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if proxy.lower().startswith(("http://", "https://")):
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


def post_within(
    url: str, *, data: bytes, headers: dict[str, str], deadline_s: float, connect_timeout_s: float
) -> int:
    """POST ``data`` and return the answer's status code, all within ``deadline_s`` of wall-clock
    time (connect, TLS, sending, status line and headers), or raise ``WebhookDeadline``.

    Redirects are not followed (a redirect is not a delivery). Other failures raise requests'
    ``RequestException`` as usual.
    """
    watchdog = _Watchdog()
    timer = threading.Timer(deadline_s, watchdog.fire)
    timer.daemon = True
    session = requests.Session()
    for prefix in ("http://", "https://"):
        session.mount(prefix, _WatchedAdapter(max_retries=0))
    _current.watchdog = watchdog
    timer.start()
    try:
        with session.post(
            url,
            data=data,
            headers=headers,
            timeout=(min(connect_timeout_s, deadline_s), deadline_s),
            allow_redirects=False,
            stream=True,  # the status is the answer; a body that drips must not hold us
        ) as resp:
            return resp.status_code
    except requests.RequestException:
        if watchdog.fired:
            raise WebhookDeadline(f"no answer within {deadline_s:g} s") from None
        raise
    finally:
        timer.cancel()
        _current.watchdog = None
        session.close()
