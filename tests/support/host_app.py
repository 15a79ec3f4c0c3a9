"""A host project configured only in code, as a new user writes it (tests/e2e/test_host_app.py).

No ``SEEDANCE_*`` variable anywhere: its Celery app names its own Redis, the seedance settings are
``app.conf`` keys, and ``install(app)`` adds the rest. The HOST_* variables stand for the values a
real project would write in its own settings module.
"""

from __future__ import annotations

import os

from celery import Celery

import seedance_worker

app = Celery("host", broker=os.environ["HOST_REDIS_URL"], backend=os.environ["HOST_REDIS_URL"])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    broker_transport_options={"visibility_timeout": 3600},
    seedance_api_key=os.environ["HOST_API_KEY"],
    seedance_api_base_url=os.environ["HOST_API_BASE_URL"],
    seedance_download_dir=os.environ["HOST_DOWNLOAD_DIR"],
    seedance_download_allowed_hosts=["127.0.0.1"],
    seedance_download_allow_private_hosts=True,  # the test file server is on loopback
    seedance_poll_first_delay_s=0.1,
    seedance_poll_min_interval_s=0.2,
    seedance_poll_queued_interval_s=0.3,
    seedance_poll_running_interval_s=0.3,
)
seedance_worker.install(app)
