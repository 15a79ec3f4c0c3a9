"""Celery settings derived from ``Settings``: used by celeryconfig.py, the bundled app and install()."""

from __future__ import annotations

from typing import Any

from kombu.entity import Queue

from seedance_worker.connections import sentinel_options
from seedance_worker.outage import OUTAGE_WAIT_S
from seedance_worker.settings import Settings
from seedance_worker.settings_parts import is_sentinel_url

TASK_MODULES = [
    "seedance_worker.engine.poll",
    "seedance_worker.submit",
    "seedance_worker.admit",
    "seedance_worker.engine.handoff",
    "seedance_worker.steps.download",
    "seedance_worker.steps.charge",
    "seedance_worker.steps.notify",
    "seedance_worker.engine.sweep",
]

POLL_TASKS = ("seedance.poll", "seedance.submit", "seedance.admit", "seedance.sweep")
POST_TASKS = (
    "seedance.download_video",
    "seedance.charge_usage",
    "seedance.notify",
    "seedance.complete",
)


def routes(settings: Settings) -> dict[str, dict[str, str]]:
    table = {name: {"queue": settings.poll_queue} for name in POLL_TASKS}
    table.update({name: {"queue": settings.post_queue} for name in POST_TASKS})
    return table


def sentinel_transport(settings: Settings) -> dict[str, Any]:
    """What kombu's and Celery's sentinel:// transports need beside the URL (none for redis://):
    the master's name, and how to reach the sentinels (their password, short timeouts)."""
    if not is_sentinel_url(settings.redis_url):
        return {}
    return {"master_name": settings.redis_sentinel_master, "sentinel_kwargs": sentinel_options(settings)}


def result_retry_policy(settings: Settings) -> dict[str, Any]:
    """How long storing a task's result waits for Redis. Behind sentinels, as long as a task waits
    out an outage (outage.py): a failover takes their down-after-milliseconds (30 s by default)
    plus the promotion, and a result given up on never reaches the job's handle (AsyncResult)."""
    if is_sentinel_url(settings.redis_url):
        return {"timeout": OUTAGE_WAIT_S, "max_retries": None, "interval_max": 1}
    return {"timeout": 5.0}


def transport_options(settings: Settings) -> dict[str, Any]:
    return {
        **sentinel_transport(settings),
        "visibility_timeout": settings.visibility_timeout_s,
        # kombu 5.7 restores unacked messages every interval x throttle (100 s by default);
        # 10 s keeps a killed worker's messages from waiting that long (measured: 100 s otherwise).
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
        "socket_timeout": 30,
        "socket_connect_timeout": 5,
        "health_check_interval": 25,
        "retry_on_timeout": True,
    }


def beat_schedule(settings: Settings) -> dict[str, Any]:
    return {
        "seedance-sweep": {
            "task": "seedance.sweep",
            "schedule": settings.sweep_interval_s,
            # Expiring keeps sweeps from piling up while no worker runs; a busy worker still gets them.
            "options": {"queue": settings.poll_queue, "expires": max(60.0, settings.sweep_interval_s * 6)},
        }
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """The reference configuration of a seedance worker (see celeryconfig.py)."""
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": transport_options(settings),
        "result_backend_transport_options": {
            **sentinel_transport(settings),
            "retry_policy": result_retry_policy(settings),
        },
        "result_expires": settings.result_expires_s,
        "result_extended": False,
        "task_track_started": False,
        # Not cancelled on a broker blip: a cancelled acks_late task's message is neither acked nor
        # in the unacked index any more, so its chain would be lost (measured in tests/faults).
        # Every step is fenced or idempotent, so letting it finish is safe.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_queues": (Queue(settings.poll_queue), Queue(settings.post_queue)),
        "task_default_queue": settings.post_queue,
        "task_routes": routes(settings),
        "beat_schedule": beat_schedule(settings),
        "worker_hijack_root_logger": True,
        "include": list(TASK_MODULES),
    }
