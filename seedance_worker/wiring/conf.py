"""Celery settings derived from ``Settings``: used by celeryconfig.py, the bundled app and install()."""

from __future__ import annotations

from typing import Any

from kombu.entity import Queue

from seedance_worker.settings import Settings

TASK_MODULES = [
    "seedance_worker.engine.poll",
    "seedance_worker.submit",
    "seedance_worker.engine.handoff",
    "seedance_worker.steps.download",
    "seedance_worker.steps.charge",
    "seedance_worker.steps.notify",
    "seedance_worker.engine.sweep",
]

POLL_TASKS = ("seedance.poll", "seedance.submit", "seedance.sweep")
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


def transport_options(settings: Settings) -> dict[str, Any]:
    return {
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
        "result_backend_transport_options": {"retry_policy": {"timeout": 5.0}},
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
