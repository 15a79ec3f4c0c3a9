"""One Redis client (connection pool) per process and Redis URL.

Prefork children inherit their parent's pools over fork, sharing its sockets; ``reset`` (called in
every child by wiring/signals.py) makes each child open its own.
"""

from __future__ import annotations

import os
import threading

import redis

from seedance_worker.settings import Settings, get_settings

_clients: dict[tuple[int, str], redis.Redis] = {}
_lock = threading.Lock()


def get_redis(settings: Settings | None = None) -> redis.Redis:
    settings = settings or get_settings()
    key = (os.getpid(), settings.redis_url)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = redis.Redis.from_url(
                settings.redis_url,
                decode_responses=True,
                socket_timeout=30,
                socket_connect_timeout=5,
                health_check_interval=25,
                retry_on_timeout=True,
            )
            _clients[key] = client
        return client


def reset() -> None:
    with _lock:
        _clients.clear()
