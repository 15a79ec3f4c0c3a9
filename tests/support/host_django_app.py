"""A Django-style host: Celery reads ``CELERY_*`` names from a settings object (namespace="CELERY"),
so seedance's settings are ``CELERY_SEEDANCE_*`` there (tests/e2e/test_host_app.py)."""

from __future__ import annotations

import os

from celery import Celery

import seedance_worker


class DjangoSettings:
    """What would be in the project's settings.py."""

    CELERY_BROKER_URL = os.environ["HOST_REDIS_URL"]
    CELERY_RESULT_BACKEND = os.environ["HOST_REDIS_URL"]
    CELERY_TASK_SERIALIZER = "json"
    CELERY_SEEDANCE_API_KEY = os.environ["HOST_API_KEY"]
    CELERY_SEEDANCE_API_BASE_URL = os.environ["HOST_API_BASE_URL"]
    CELERY_SEEDANCE_DOWNLOAD_DIR = os.environ["HOST_DOWNLOAD_DIR"]
    CELERY_SEEDANCE_DOWNLOAD_ALLOWED_HOSTS = "127.0.0.1"
    CELERY_SEEDANCE_DOWNLOAD_ALLOW_PRIVATE_HOSTS = True  # the test file server is on loopback
    CELERY_SEEDANCE_POLL_FIRST_DELAY_S = 0.1
    CELERY_SEEDANCE_POLL_MIN_INTERVAL_S = 0.2
    CELERY_SEEDANCE_POLL_QUEUED_INTERVAL_S = 0.3
    CELERY_SEEDANCE_POLL_RUNNING_INTERVAL_S = 0.3


app = Celery("django_host")
app.config_from_object(DjangoSettings, namespace="CELERY")
seedance_worker.install(app)
