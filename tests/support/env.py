"""A test's SEEDANCE_* environment: set it, rebuild the cached settings and apps, empty the test Redis."""

from __future__ import annotations

import os

import pytest
import redis

from seedance_worker.wiring.app import reset_caches

__all__ = ["clean_redis", "configure", "reset_caches"]


def clean_redis(url: str) -> None:
    """Empty the test Redis between worker tests, so no earlier test's messages reach new workers.

    Only the embedded Redis (which this session created) is flushed; with TEST_REDIS_URL only this
    project's own keys go.
    """
    r = redis.Redis.from_url(url)
    if not os.environ.get("TEST_REDIS_URL"):
        r.flushdb()
        return
    for pattern in ("seedance:*", "seedance.*", "unacked*", "_kombu.*", "celery-task-meta-*", "test:*"):
        for key in r.scan_iter(pattern, count=1000):
            r.delete(key)


def configure(env: pytest.MonkeyPatch, flush_url: str | None = None, /, **settings: str | None) -> None:
    """``SEEDANCE_<NAME>`` for each keyword (None unsets it), caches rebuilt; with ``flush_url``, that
    test Redis emptied too (a fixture about to start workers)."""
    for name, value in settings.items():
        if value is None:
            env.delenv(f"SEEDANCE_{name.upper()}", raising=False)
        else:
            env.setenv(f"SEEDANCE_{name.upper()}", value)
    reset_caches()
    if flush_url is not None:
        clean_redis(flush_url)
