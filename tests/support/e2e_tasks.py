"""User tasks for the end-to-end tests, loaded into real workers with `--include tests.support.e2e_tasks`."""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any

import redis
from celery import shared_task

RECORD_KEY = "test:downstream"
CANVAS_KEY = "test:canvas"


def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["SEEDANCE_REDIS_URL"], decode_responses=True)


@shared_task(name="tests.record_outcome")
def record_outcome(outcome: dict[str, Any]) -> dict[str, Any]:
    """A user's downstream task: records that it ran, and enriches the Outcome."""
    _redis().rpush(RECORD_KEY, json.dumps({"task_id": outcome["task_id"], "status": outcome["status"]}))
    return {**outcome, "enriched_by": "tests.record_outcome"}


@shared_task(name="tests.after_record")
def after_record(outcome: dict[str, Any]) -> dict[str, Any]:
    """Runs after record_outcome: proves the next task gets what the previous one returned."""
    _redis().rpush(RECORD_KEY + ":after", json.dumps({"task_id": outcome["task_id"],
                                                        "enriched_by": outcome.get("enriched_by")}))  # fmt: skip
    return outcome


@shared_task(name="tests.canvas_step")
def canvas_step(outcome: dict[str, Any], tag: str = "") -> dict[str, Any]:
    """A step in a user's canvas after seedance.poll."""
    _redis().rpush(
        CANVAS_KEY, json.dumps({"tag": tag, "task_id": outcome["task_id"], "status": outcome["status"]})
    )
    return {"tag": tag, "task_id": outcome["task_id"], "status": outcome["status"]}


@shared_task(name="tests.collect")
def collect(outcomes: list[dict[str, Any]]) -> list[str]:
    """A chord body over several polls."""
    return sorted(o["task_id"] for o in outcomes)


USER_KEY = "test:user_step"


@shared_task(name="tests.user_step")
def user_step(outcome: dict[str, Any]) -> dict[str, Any]:
    """A user's pipeline task after seedance.poll: what it got from the downstream chain."""
    video = outcome.get("video") or {}
    uri = video.get("uri") or ""
    path = urllib.parse.unquote(urllib.parse.urlsplit(uri).path) if uri.startswith("file:") else None
    seen = {
        "task_id": outcome["task_id"],
        "video_path": path,
        "video_exists": bool(path) and os.path.exists(path),
        "video_sha256": video.get("sha256"),
        "charge": outcome.get("charge"),
        "notified": (outcome.get("notification") or {}).get("delivered"),
        "step_errors": outcome.get("step_errors") or {},
    }
    _redis().rpush(USER_KEY, json.dumps(seen))
    return seen


@shared_task(name="tests.user_chord_body")
def user_chord_body(outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A chord body over several polls: one summary per finished Outcome."""
    return [user_step.run(o) for o in outcomes]


STATUS_KEY = "test:status_change"


@shared_task(name="tests.status_hook")
def status_hook(change: dict[str, Any]) -> None:
    """SEEDANCE_ON_STATUS_CHANGE: records each remote status transition it is told of."""
    _redis().rpush(STATUS_KEY, json.dumps(change))
