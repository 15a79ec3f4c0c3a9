"""The bundled Celery app (``celery -A seedance_worker worker``) and ``install(app)`` for host apps."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from typing import Any

from celery import Celery, signals
from celery.signals import worker_init

# Imported for their signal handlers (metrics endpoint, JSON/redacted logs) in every worker.
from seedance_worker import logs as _logs  # noqa: F401
from seedance_worker import metrics as _metrics  # noqa: F401
from seedance_worker.errors import ConfigError
from seedance_worker.settings import Settings, get_settings
from seedance_worker.wiring import compat as _compat  # noqa: F401  (kombu work-around, see compat.py)
from seedance_worker.wiring.conf import (
    POLL_TASKS,
    POST_TASKS,
    TASK_MODULES,
    beat_schedule,
    celery_config,
    routes,
)

log = logging.getLogger(__name__)

_INSTALLED: set[int] = set()


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
    from celery import current_app

    current: Celery = current_app._get_current_object()
    if id(current) in _INSTALLED:
        return current
    import seedance_worker

    bundled: Celery = seedance_worker.app
    bundled.set_current()
    return bundled


def _started_by_celery_cli() -> bool:
    argv0 = sys.argv[0] if sys.argv else ""
    return argv0.endswith(("celery", "celery/__main__.py")) or "celery" in sys.argv[:2]


def create_app() -> Celery:
    try:
        get_settings()
    except ConfigError as exc:
        if _started_by_celery_cli():
            # `celery -A seedance_worker worker` with a bad SEEDANCE_* variable: one clear line
            # naming it, instead of a hundred lines of Click traceback ending in it.
            print(f"seedance-worker: refusing to start: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        raise
    app = Celery("seedance_worker")
    _load_config(app)
    _INSTALLED.add(id(app))
    return app


def install(app: Celery, settings: Settings | None = None) -> Celery:
    """Add the seedance tasks, queues, routes and sweeper schedule to an existing Celery app.

    The tasks carry their own reliability options (``acks_late``, ``reject_on_worker_lost``), so the
    host's defaults for its other tasks stay as they are. Conflicting host settings are reported at
    worker start (``check_app``).
    """
    settings = settings or get_settings()
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

    queues = app.conf.task_queues
    if queues:
        from kombu.entity import Queue

        names = {q.name for q in queues}
        extra = [Queue(n) for n in (settings.poll_queue, settings.post_queue) if n not in names]
        app.conf.task_queues = (*queues, *extra)

    schedule = dict(app.conf.beat_schedule or {})
    for name, entry in beat_schedule(settings).items():
        schedule.setdefault(name, entry)
    app.conf.beat_schedule = schedule
    accept = list(app.conf.accept_content or ["json"])
    if "json" not in accept:
        app.conf.accept_content = [*accept, "json"]
    _INSTALLED.add(id(app))
    return app


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


@worker_init.connect
def _refuse_bad_start(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is None or id(app) not in _INSTALLED:
        return
    app.loader.import_default_modules()
    try:
        problems = check_app(app)
    except ConfigError as exc:
        problems = [str(exc)]
    if problems:
        for p in problems:
            print(f"seedance-worker: refusing to start: {p}", file=sys.stderr, flush=True)
        # SystemExit is not swallowed by Celery's signal dispatch (it catches Exception only).
        raise SystemExit(2)


@signals.worker_ready.connect
def _start_dispatcher(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is not None and id(app) in _INSTALLED:
        from seedance_worker.engine.dispatch import start_dispatcher

        start_dispatcher()


@signals.worker_shutdown.connect
def _stop_dispatcher(**_: Any) -> None:
    from seedance_worker.engine.dispatch import stop_dispatcher

    stop_dispatcher()


@signals.worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # Pools inherited over fork share sockets with the parent; each child opens its own.
    from seedance_worker.client import reset_clients
    from seedance_worker.engine.store import reset_stores

    reset_clients(close=False)
    reset_stores()
