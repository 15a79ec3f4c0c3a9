"""What a worker checks at start: settings that would make polls run twice or hand-offs misfire,
and (a warning only) a Redis that evicts keys."""

from __future__ import annotations

import logging

import redis
from celery import Celery

from seedance_worker.connections import eviction_problem, redis_client
from seedance_worker.errors import ConfigError
from seedance_worker.settings import Settings, get_settings
from seedance_worker.wiring.conf import POLL_TASKS, POST_TASKS

log = logging.getLogger(__name__)


def check_app(app: Celery, settings: Settings | None = None) -> list[str]:
    """Problems that would make polls run twice or hand-offs misfire; empty when all is well."""
    settings = settings or get_settings()
    problems: list[str] = []
    try:
        settings.check_visibility_timeout()
    except ConfigError as exc:
        problems.append(str(exc))
    broker = str(app.conf.broker_url or "")
    if broker.startswith(("redis", "rediss", "unix", "sentinel")):
        vt = (app.conf.broker_transport_options or {}).get("visibility_timeout", 3600)
        longest = settings.poll_countdown_cap_s + settings.http_read_timeout_s
        if longest > vt / 2:
            problems.append(
                f"broker visibility_timeout={vt} s is too close to SEEDANCE_POLL_COUNTDOWN_CAP_S="
                f"{settings.poll_countdown_cap_s:g} s plus the read timeout: countdown polls would be "
                "redelivered and run twice; raise visibility_timeout or lower the cap"
            )
    if app.conf.task_serializer != "json":
        problems.append(f"task_serializer={app.conf.task_serializer!r}: seedance messages must be JSON")
    for setting in ("on_succeeded", "on_failed"):
        for name in getattr(settings, setting):
            if name not in app.tasks:
                problems.append(
                    f"SEEDANCE_{setting.upper()} names task {name!r}, which this worker does not know "
                    "(add its module to the app's include, or fix the name)"
                )
    for name in (*POLL_TASKS, *POST_TASKS):
        if name not in app.tasks:
            problems.append(f"task {name!r} is not registered: call seedance_worker.install(app)")
    return problems


def warn_if_evicting(settings: Settings | None = None) -> str | None:
    """Log one warning when Redis would evict keys; returns it. A worker still starts (a policy can
    be fixed with CONFIG SET while it runs); ``seedance-worker check`` fails on the same problem."""
    settings = settings or get_settings()
    # Short timeouts of its own: a Redis that is away must not hold up the start for 30 s.
    client = redis_client(settings, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)
    try:
        problem = eviction_problem(client)
    except redis.RedisError:
        return None  # unreachable or INFO refused: the worker's own connection reports that
    finally:
        client.close()
    if problem:
        log.warning("seedance-worker: %s", problem)
    return problem
