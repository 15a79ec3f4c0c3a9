"""One Redis client (connection pool) per process and Redis URL.

Prefork children inherit their parent's pools over fork, sharing its sockets; ``reset`` (called in
every child by wiring/signals.py) makes each child open its own.

A ``sentinel://`` URL gives a client of the master the sentinels name
(``SEEDANCE_REDIS_SENTINEL_MASTER``): each new connection asks them where it is, and a connection
to a master that died or was demoted fails with ``ConnectionError``, which the tasks wait out
(outage.py) until the promoted replica answers.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis
from redis.sentinel import Sentinel

from seedance_worker.settings import Settings, get_settings
from seedance_worker.settings_parts import is_sentinel_url, sentinel_url

SAFE_EVICTION_POLICY = "noeviction"

# The job store's client: long reads (a Lua script over many jobs), but a dead socket seen in 30 s.
STORE_OPTIONS: dict[str, Any] = {
    "socket_timeout": 30,
    "socket_connect_timeout": 5,
    "health_check_interval": 25,
    "retry_on_timeout": True,
}

_clients: dict[tuple[int, str, str], redis.Redis] = {}
_lock = threading.Lock()


def sentinel_options(settings: Settings) -> dict[str, Any]:
    """How to talk to the sentinels themselves (redis-py's and kombu's ``sentinel_kwargs``): short
    timeouts, so a sentinel that is away costs a client seconds before it asks the next one."""
    options: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 2}
    if settings.redis_sentinel_password is not None:
        options["password"] = settings.redis_sentinel_password.get_secret_value()
    return options


def redis_client(settings: Settings, **options: Any) -> redis.Redis:
    """A new client of the job store's Redis (``SEEDANCE_REDIS_URL``) with redis-py ``options``:
    from the URL, or, for ``sentinel://``, of the master the sentinels name."""
    if not is_sentinel_url(settings.redis_url):
        return redis.Redis.from_url(settings.redis_url, **options)
    where = sentinel_url(settings.redis_url)
    sentinel = Sentinel(list(where.nodes), sentinel_kwargs=sentinel_options(settings), **options)
    client: redis.Redis = sentinel.master_for(
        settings.redis_sentinel_master, db=where.db, username=where.username, password=where.password
    )
    return client


def get_redis(settings: Settings | None = None) -> redis.Redis:
    settings = settings or get_settings()
    key = (os.getpid(), settings.redis_url, settings.redis_sentinel_master)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = redis_client(settings, decode_responses=True, **STORE_OPTIONS)
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
