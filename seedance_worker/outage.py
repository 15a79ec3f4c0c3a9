"""Riding out a Redis outage inside a task: wait for Redis, then run the task body again.

A task that meets a dead Redis (a restart, a failover) must neither crash the worker nor store a
misleading FAILURE. The body is re-run from the top once Redis answers (every step is fenced or
idempotent, so re-running is safe). If Redis stays away longer than ``OUTAGE_WAIT_S``, the message
is dropped with ``Ignore``: the job's lease in ``seedance:due`` then runs out and the sweeper
re-drives it, so nothing is lost.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from celery.exceptions import Ignore
from kombu.exceptions import OperationalError

log = logging.getLogger(__name__)

OUTAGE_WAIT_S = 60.0
# BusyLoadingError: a restarted Redis answers while it replays its AOF (seen in tests/faults).
REDIS_DOWN = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    OperationalError,
)

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def until_redis_answers(op: Callable[[], T], what: str) -> T:
    """Run one Redis write that must not be lost (a 'delivered' mark after a webhook got its 2xx),
    waiting out an outage instead of failing the task, which would send the webhook again."""
    deadline = time.monotonic() + OUTAGE_WAIT_S
    delay = 0.1
    while True:
        try:
            return op()
        except REDIS_DOWN as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: Redis unavailable (%s); retrying in %.1f s", what, type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def survive_redis_outage(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + OUTAGE_WAIT_S
        delay = 0.2
        while True:
            try:
                return fn(*args, **kwargs)
            except REDIS_DOWN as exc:
                if time.monotonic() + delay > deadline:
                    log.error("%s: Redis unavailable for %.0f s (%s); leaving it to the sweeper",
                              fn.__name__, OUTAGE_WAIT_S, type(exc).__name__)  # fmt: skip
                    raise Ignore() from None
                name = type(exc).__name__
                log.warning("%s: Redis unavailable (%s); retrying in %.1f s", fn.__name__, name, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    return wrapper  # type: ignore[return-value]
