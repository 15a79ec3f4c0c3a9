"""A host application on RabbitMQ (tests/e2e/test_rabbitmq.py): its own broker, Redis results, install(app).

The seedance poll state (job records, leases, the due index) stays in SEEDANCE_REDIS_URL; only the
task messages travel over AMQP. Worker: ``celery -A tests.support.rabbit_app worker -Q <poll>,<post>``.
"""

from __future__ import annotations

import os

from celery import Celery

import seedance_worker
from seedance_worker.settings import get_settings

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")

app = Celery("rabbit_app", broker=AMQP_URL, backend=get_settings().redis_url)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    # Classic queues: countdown polls are held by the worker (no quorum-queue native delayed delivery).
    task_default_queue_type="classic",
    task_create_missing_queue_type="classic",
)
seedance_worker.install(app)
