"""``track()``: start one poll chain for a remote task that already exists (never two)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from celery.result import AsyncResult

from seedance_worker import errors
from seedance_worker.client import validate_task_id
from seedance_worker.engine.jobs import ChainSpec, publish_poll, registration_fields
from seedance_worker.engine.schedule import Schedule, waiting_lease
from seedance_worker.engine.store import get_store
from seedance_worker.settings import Settings, get_settings
from seedance_worker.wiring.app import ensure_app


def track(
    task_id: str,
    *,
    on_succeeded: ChainSpec = None,
    on_failed: ChainSpec = None,
    metadata: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> AsyncResult:
    """Start tracking a remote task; a second call for the same id returns the first chain's handle."""
    app = ensure_app()
    settings = settings or get_settings()
    validate_task_id(task_id)
    fields = registration_fields(settings, metadata=metadata, on_succeeded=on_succeeded, on_failed=on_failed)
    schedule = Schedule.from_settings(settings)
    now = time.time()
    owner = str(uuid.uuid4())
    countdown = schedule.first_countdown()
    reg = get_store(settings).register(
        task_id, owner, now=now, lease_at=waiting_lease(settings, countdown, now), fields=fields
    )
    if reg.created:
        # If this publish is lost (crash, Redis blip) the record's lease runs out and the sweeper
        # publishes it instead.
        publish_poll(task_id, gen=1, countdown_s=countdown, celery_id=owner, settings=settings)
    result = AsyncResult(reg.owner, app=app)
    return result


def track_many(
    task_ids: Sequence[str],
    *,
    metadata: dict[str, Any] | None = None,
    on_succeeded: ChainSpec = None,
    on_failed: ChainSpec = None,
    settings: Settings | None = None,
) -> list[AsyncResult]:
    """``track()`` for a batch (at most SEEDANCE_TRACK_MAX_IDS ids), registered in pipelined batches.

    With parking on, the first polls are parked for the workers' dispatcher instead of being
    published one by one here, so 10,000 ids take seconds; the dispatcher publishes them on time.
    """

    settings = settings or get_settings()
    if len(task_ids) > settings.track_max_ids:
        raise errors.InvalidRequest(
            f"{len(task_ids)} ids in one call, over SEEDANCE_TRACK_MAX_IDS={settings.track_max_ids}; "
            "send them in batches"
        )
    for tid in task_ids:
        validate_task_id(tid)
    app = ensure_app()
    fields = registration_fields(settings, metadata=metadata, on_succeeded=on_succeeded, on_failed=on_failed)
    countdown = Schedule.from_settings(settings).first_countdown()
    now = time.time()
    park = settings.poll_park_after_s > 0 and len(task_ids) > 1
    items = [(tid, str(uuid.uuid4())) for tid in task_ids]
    regs = get_store(settings).register_many(
        items,
        now=now,
        lease_at=waiting_lease(settings, countdown, now),
        fields=fields,
        park_at=now + countdown if park else 0.0,
    )
    results: list[AsyncResult] = []
    for (tid, owner), reg in zip(items, regs, strict=True):
        if reg.created and not park:
            publish_poll(tid, gen=1, countdown_s=countdown, celery_id=owner, settings=settings)
        results.append(AsyncResult(reg.owner, app=app))
    return results


def poll_now(task_id: str, settings: Settings | None = None) -> bool:
    """Poll a tracked job right away (a callback said it changed); False when it is not polling.

    The extra message carries the job's current generation and the chain's own task id: whichever
    of it and the scheduled poll runs first advances the generation, and the other is dropped as
    stale, so this never forks the chain. A 429 ``not_before`` still holds.
    """

    ensure_app()
    settings = settings or get_settings()
    validate_task_id(task_id)
    record = get_store(settings).get(task_id)
    if record is None or record.state != "polling" or not record.owner:
        return False
    owner, canvas = record.owner, record.canvas
    publish_poll(task_id, gen=record.gen, countdown_s=0, celery_id=owner, settings=settings, canvas=canvas)
    return True
