"""User tasks for tests/e2e/test_downstream.py, loaded into real workers with
`--include tests.support.e2e_downstream_tasks`."""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import shared_task

ENRICH_KEY = "test:enrich"


@shared_task(name="tests.enrich")
def enrich(outcome: dict[str, Any]) -> dict[str, Any]:
    """A user step between download and charge: notes what it received and adds `enriched`."""
    video = outcome.get("video") or {}
    seen = {"task_id": outcome["task_id"], "video_sha256": video.get("sha256"), "pid": os.getpid()}
    r = redis.Redis.from_url(os.environ["SEEDANCE_REDIS_URL"], decode_responses=True)
    r.rpush(ENRICH_KEY, json.dumps(seen))
    return {**outcome, "enriched": {"by": "tests.enrich", **seen}}


EXPLODE_KEY = "test:explode"


@shared_task(name="tests.explode")
def explode(outcome: dict[str, Any]) -> dict[str, Any]:
    """A user step that always raises: the chain never reaches seedance.complete by itself."""
    r = redis.Redis.from_url(os.environ["SEEDANCE_REDIS_URL"], decode_responses=True)
    r.rpush(EXPLODE_KEY, outcome["task_id"])
    raise RuntimeError("tests.explode always fails")
