"""Which Celery apps are ours: the bundled app and every app ``install()`` ran on.

Every signal handler (signals.py) returns at once for any other app, so a host process that runs
other Celery apps beside ours is left alone.
"""

from __future__ import annotations

from typing import Any

_ours: set[int] = set()


def mark_ours(app: Any) -> None:
    _ours.add(id(app))


def unmark_ours(app: Any) -> None:
    """A throwaway app (a test's) is ours no more: a later app at the same id must not look ours."""
    _ours.discard(id(app))


def is_ours(app: Any) -> bool:
    return app is not None and id(app) in _ours
