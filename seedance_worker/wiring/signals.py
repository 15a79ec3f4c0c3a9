"""Every Celery signal handler of seedance-worker, each returning at once for an app not ours.

Connected when wiring/app.py is imported (the bundled app and ``install()`` both import it). What a
handler does lives in the module it concerns (logs, metrics, the dispatcher, the checks); here is
only which signal runs it, for which app.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import current_app, signals

from seedance_worker import logs, metrics
from seedance_worker.client import reset_clients
from seedance_worker.engine.cancel import cancel_job, remote_task_id
from seedance_worker.engine.dispatch import start_dispatcher, stop_dispatcher
from seedance_worker.engine.jobs import POLL_TASK
from seedance_worker.engine.store import reset_stores, scrape_counts
from seedance_worker.errors import ConfigError
from seedance_worker.settings import get_settings
from seedance_worker.wiring.checks import check_app, warn_if_evicting
from seedance_worker.wiring.registry import is_ours

log = logging.getLogger(__name__)


def _ours(sender: Any = None, **kwargs: Any) -> bool:
    """Is the app this signal concerns one of ours? The sender's app (a worker, a consumer, a task),
    the ``instance``'s or ``task``'s, else the process's current app (pool children, logging)."""
    for holder in (sender, kwargs.get("instance"), kwargs.get("task")):
        app = getattr(holder, "app", None)
        if app is not None:
            return is_ours(app)
    return is_ours(current_app._get_current_object())


@signals.celeryd_init.connect
def _logs_from_the_start(sender: Any = None, instance: Any = None, **kw: Any) -> None:
    if _ours(sender, instance=instance, **kw):
        logs.json_from_the_start(instance)


@signals.worker_init.connect
def _refuse_bad_start(sender: Any = None, **kw: Any) -> None:
    if not _ours(sender, **kw):
        return
    app = sender.app
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


@signals.worker_init.connect
def _serve_metrics(sender: Any = None, **kw: Any) -> None:
    # Main process, before the pool forks and before any metric object exists (multiprocess mode).
    if _ours(sender, **kw) and metrics.metrics_port() is not None:
        metrics.start_for_worker(inflight=scrape_counts(get_settings()))


@signals.after_setup_logger.connect
def _after_setup_logger(sender: Any = None, **kw: Any) -> None:
    # The root logger, plus Celery's multiprocessing logger and any other logger with handlers.
    if _ours(sender, **kw):
        logs.drop_early_handler()
        logs.configure()


@signals.after_setup_task_logger.connect
def _after_setup_task_logger(sender: Any = None, logger: Any = None, **kw: Any) -> None:
    if _ours(sender, **kw):
        logs.configure(loggers=[logger] if logger is not None else None)


@signals.celeryd_after_setup.connect
def _after_worker_setup(sender: Any = None, instance: Any = None, **kw: Any) -> None:
    # A host app that configures logging itself (a ``setup_logging`` receiver, e.g. Django's
    # dictConfig) gets no after_setup_* signals: apply the same rules to its handlers once the
    # worker is set up, before the pool forks.
    if _ours(instance, **kw):
        logs.drop_early_handler()
        logs.configure()


@signals.worker_process_init.connect
def _fresh_connections(sender: Any = None, **kw: Any) -> None:
    # Pools inherited over fork share sockets with the parent; each child opens its own.
    if _ours(sender, **kw):
        reset_clients(close=False)
        reset_stores()


@signals.worker_ready.connect
def _start_dispatcher(sender: Any = None, **kw: Any) -> None:
    if _ours(sender, **kw):
        start_dispatcher()
        metrics.announce()


@signals.worker_ready.connect
def _warn_evicting_redis(sender: Any = None, **kw: Any) -> None:
    # After logging is set up, so the one line goes where the worker's logs go; never fails a start.
    if not _ours(sender, **kw):
        return
    try:
        warn_if_evicting()
    except Exception as exc:
        print(f"seedance-worker: could not read Redis's maxmemory-policy: {type(exc).__name__}",
              file=sys.stderr)  # fmt: skip


@signals.task_prerun.connect
def _handoff_latency(sender: Any = None, task: Any = None, **kw: Any) -> None:
    if _ours(sender, task=task, **kw):
        metrics.task_started(task)


@signals.task_revoked.connect
def _revoked_poll(sender: Any = None, request: Any = None, expired: bool = False, **kw: Any) -> None:
    # revoke() of a poll's id means cancel: the worker that meets the revoked message ends the job
    # (without this the sweeper would re-drive it, and a restart forget the revoke).
    if expired or getattr(sender, "name", None) != POLL_TASK or not _ours(sender, **kw):
        return
    task_id = remote_task_id(request)
    if task_id is None:
        return
    try:
        res = cancel_job(task_id, get_settings(), revoked=True)
    except Exception as exc:
        print(f"seedance-worker: revoked poll of {task_id}: cancel failed: {type(exc).__name__}: {exc}",
              file=sys.stderr)  # fmt: skip
        return
    log.info("revoked poll %s: %s (%s)", task_id, res.result, res.message)


@signals.worker_process_shutdown.connect
def _child_exited(sender: Any = None, pid: int | None = None, **kw: Any) -> None:
    if _ours(sender, **kw):
        metrics.child_exited(pid)


@signals.worker_shutdown.connect
def _stop_dispatcher(sender: Any = None, **kw: Any) -> None:
    if _ours(sender, **kw):
        stop_dispatcher()
        metrics.stop_server()
