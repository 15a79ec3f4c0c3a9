"""One Redis client (connection pool) per process and Redis URL.

Prefork children inherit their parent's pools over fork, sharing its sockets; ``reset`` (called in
every child by wiring/signals.py) makes each child open its own.
"""

from __future__ import annotations

import os
import threading

import redis

from seedance_worker.settings import Settings, get_settings

SAFE_EVICTION_POLICY = "noeviction"

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


def eviction_problem(client: redis.Redis) -> str | None:
    """Why this Redis's ``maxmemory-policy`` would lose seedance data; None for ``noeviction``.

    Read from ``INFO memory`` (managed Redis often refuses CONFIG GET). Every other policy deletes
    keys once memory runs out: the ``allkeys-*`` ones anything (queued messages, running job
    records, the ledger), the ``volatile-*`` ones the keys with a TTL, which are exactly the marks
    that keep effects single (delivery records, submit idempotency keys, finished job records, the
    429 cool-down). So only ``noeviction`` is safe: a full Redis then refuses writes loudly instead.
    """
    policy = str(client.info("memory").get("maxmemory_policy") or "")
    if not policy or policy == SAFE_EVICTION_POLICY:
        return None
    return (
        f"Redis maxmemory-policy is {policy} (SEEDANCE_REDIS_URL): when memory runs out Redis deletes "
        "keys (queued messages, job records, delivery and idempotency marks), so jobs are lost or "
        "sent and charged twice; set maxmemory-policy noeviction"
    )
