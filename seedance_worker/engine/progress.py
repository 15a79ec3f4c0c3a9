"""A job's progress, for the caller: the ``POLLING`` state of its poll and the status-change hook.

While a job is in flight its poll's ``AsyncResult.state`` is ``POLLING`` (instead of ``PENDING``
until the end) and ``.info`` the remote status, the polls so far and when the next is due: one
result-backend write per poll run that advanced the job; a batched round writes it only on a
status transition (README: Batched status), so its ``polls`` may lag the record's. The optional
``on_status_change`` hook (a task name or signature) gets one message per remote status
transition, published after the transition is recorded by the fenced ``advance`` (so a
redelivered copy never fires it twice). A transition out of ``queued`` also frees the job's
admission slot (``changed``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from celery import Task, current_app, signature
from celery.canvas import Signature

from seedance_worker.engine import admission
from seedance_worker.engine.store import JobRecord
from seedance_worker.settings import Settings

log = logging.getLogger(__name__)

POLLING = "POLLING"  # the custom Celery state of an in-flight poll (README: Progress)


def progress_info(task_id: str, fields: dict[str, Any], record: JobRecord) -> dict[str, Any]:
    """``AsyncResult.info`` while polling: small and JSON, so Flower and ``jobs`` can show it."""
    return {
        "task_id": task_id,
        "status": fields.get("status", record.status),
        "polls": fields.get("polls", record.polls),
        "next_due_at": fields.get("next_due_at"),
        "tracked_at": record.tracked_at,
    }


def transition(record: JobRecord, fields: dict[str, Any]) -> tuple[str | None, str] | None:
    """(from, to) when this poll saw a different remote status than the last one, else None."""
    new = fields.get("status")
    if not new or new == record.status:
        return None
    return record.status, str(new)


def hook_signature(spec: str) -> Signature:
    """The ``on_status_change`` setting: a task name, or a signature as JSON."""
    if spec.lstrip().startswith("{"):
        return signature(json.loads(spec), app=current_app)
    return current_app.signature(spec)


def report(task: Task, celery_id: str, info: dict[str, Any]) -> None:
    try:
        task.update_state(task_id=celery_id, state=POLLING, meta=info)
    except Exception as exc:
        log.warning("poll %s: could not record progress: %s", info.get("task_id"), type(exc).__name__)


def report_state(celery_id: str, info: dict[str, Any]) -> None:
    """``report`` from outside a task (a batched round, in a worker's dispatcher thread)."""
    try:
        current_app.backend.store_result(celery_id, info, POLLING)
    except Exception as exc:
        log.warning("poll %s: could not record progress: %s", info.get("task_id"), type(exc).__name__)


def changed(
    settings: Settings, record: JobRecord, change: tuple[str | None, str], *, at: float, polls: int
) -> None:
    """A recorded status transition: the hook's message, and the job's admission slot freed once
    it left ``queued`` (engine/admission.py)."""
    admission.left_queue(settings, record, change[1])
    fire_status_change(settings, record, change, at=at, polls=polls)


def fire_status_change(
    settings: Settings, record: JobRecord, change: tuple[str | None, str], *, at: float, polls: int
) -> None:
    if not settings.on_status_change:
        return
    payload = {
        "task_id": record.task_id,
        "from": change[0],
        "to": change[1],
        "at": at,
        "polls": polls,
        "metadata": record.metadata,
    }
    hook = hook_signature(settings.on_status_change)
    hook = hook.clone(args=(payload,)) if not hook.immutable else hook
    hook.apply_async()
