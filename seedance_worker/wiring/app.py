"""The bundled Celery app (``celery -A seedance_worker worker``) and ``install(app)`` for host apps.

Importing this module connects the signal handlers (signals.py) and applies the library
work-arounds (compat.py); both act only for apps registered here as ours.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Mapping
from typing import Any

from celery import Celery, current_app
from kombu.entity import Exchange, Queue

from seedance_worker.client import reset_clients
from seedance_worker.engine.store import reset_stores
from seedance_worker.errors import ConfigError
from seedance_worker.settings import Settings, get_settings, reset_settings_cache
from seedance_worker.wiring import compat as _compat  # noqa: F401  (library work-arounds, see compat.py)
from seedance_worker.wiring import host
from seedance_worker.wiring import signals as _signals  # noqa: F401  (connects every handler)
from seedance_worker.wiring.checks import check_app
from seedance_worker.wiring.conf import TASK_MODULES, beat_schedule, celery_config, routes
from seedance_worker.wiring.registry import is_ours, mark_ours

__all__ = ["bundled_app", "check_app", "create_app", "ensure_app", "install", "reset_caches"]

log = logging.getLogger(__name__)

_bundled: Celery | None = None


def _load_config(app: Celery) -> None:
    # The repo's top-level celeryconfig.py is the reference deployment config; without it the same
    # settings come straight from SEEDANCE_* variables.
    if importlib.util.find_spec("celeryconfig") is not None:
        app.config_from_object("celeryconfig")
    else:
        app.conf.update(celery_config(get_settings()))


def ensure_app() -> Celery:
    """The app to publish through: the current one if ``install()`` ran on it, else the bundled one.

    Without this, ``track()`` from a plain script would publish through Celery's fallback default
    app (an AMQP broker on localhost) instead of the Redis from SEEDANCE_REDIS_URL.
    """
    current: Celery = current_app._get_current_object()
    if is_ours(current):
        return current
    bundled = bundled_app()
    bundled.set_current()
    return bundled


def bundled_app() -> Celery:
    """``seedance_worker.app``: built on first use, so importing the package needs no settings."""
    global _bundled
    if _bundled is None:
        _bundled = create_app()
    return _bundled


def _started_by_celery_cli() -> bool:
    argv0 = sys.argv[0] if sys.argv else ""
    return argv0.endswith(("celery", "celery/__main__.py")) or "celery" in sys.argv[:2]


def _refuse_under_celery_cli(exc: ConfigError) -> None:
    if _started_by_celery_cli():
        # `celery -A ... worker` with a bad setting: one clear line naming it, instead of a hundred
        # lines of Click traceback ending in it.
        print(f"seedance-worker: refusing to start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def create_app() -> Celery:
    try:
        get_settings()
    except ConfigError as exc:
        _refuse_under_celery_cli(exc)
        raise
    app = Celery("seedance_worker")
    _load_config(app)
    mark_ours(app)
    return app


def install(app: Celery, settings: Settings | Mapping[str, Any] | None = None) -> Celery:
    """Add the seedance tasks, queues, routes and sweeper schedule to an existing Celery app, and
    make its configuration this process's settings (wiring/host.py says from where, in which order).

    Call it once the app is configured (after ``config_from_object``). The tasks carry their own
    reliability options (``acks_late``, ``reject_on_worker_lost``), so the host's defaults for its
    other tasks stay as they are. Conflicting host settings are reported at worker start.
    """
    try:
        settings = host.adopt(app, settings)
    except ConfigError as exc:
        _refuse_under_celery_cli(exc)
        raise
    for module in TASK_MODULES:
        importlib.import_module(module)
    include = list(app.conf.include or ())
    app.conf.include = include + [m for m in TASK_MODULES if m not in include]

    ours = routes(settings)
    existing = app.conf.task_routes
    if not existing:
        app.conf.task_routes = ours
    elif isinstance(existing, dict):
        app.conf.task_routes = {**ours, **existing}
    else:
        seq = existing if isinstance(existing, list | tuple) else [existing]
        app.conf.task_routes = (ours, *seq)

    _add_queues(app, settings)

    schedule = dict(app.conf.beat_schedule or {})
    for name, entry in beat_schedule(settings).items():
        schedule.setdefault(name, entry)
    app.conf.beat_schedule = schedule
    accept = list(app.conf.accept_content or ["json"])
    if "json" not in accept:
        app.conf.accept_content = [*accept, "json"]
    mark_ours(app)
    return app


def _add_queues(app: Celery, settings: Settings) -> None:
    """The seedance queues join the host's, so a worker started without ``-Q`` consumes them too."""
    queues = list(app.conf.task_queues or ())
    if not queues and app.conf.task_default_queue:
        # What Celery would declare by itself when task_queues is empty: the default queue.
        queues = [
            Queue(
                app.conf.task_default_queue,
                Exchange(app.conf.task_default_exchange),
                routing_key=app.conf.task_default_routing_key,
            )
        ]
    names = {q.name for q in queues}
    extra = [Queue(n) for n in (settings.poll_queue, settings.post_queue) if n not in names]
    app.conf.task_queues = (*queues, *extra)


def reset_caches() -> None:
    """Forget this process's settings, HTTP sessions and Redis clients: the next use rebuilds them
    from the current configuration (the demo after it starts its servers, tests between cases)."""
    reset_settings_cache()
    reset_clients()
    reset_stores()
