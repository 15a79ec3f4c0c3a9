"""``track()``: start one poll chain for a remote task that already exists (never two)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from celery.result import AsyncResult

from seedance_worker import errors
from seedance_worker.client import validate_task_id
from seedance_worker.engine import tracing
from seedance_worker.engine.jobs import ChainSpec, publish_poll, refuse_eager, registration_fields
from seedance_worker.engine.schedule import Schedule, Uniform, park_time, waiting_lease
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
    raw: bool = False,
    account: str | None = None,
    submitted: dict[str, Any] | None = None,
    celery_id: str | None = None,
) -> AsyncResult:
    """Start tracking a remote task; a second call for the same id returns the first chain's handle.

    The handle resolves to the Outcome the downstream chain filled (video, charge, notification),
    or raises the typed failure carrying it; ``raw=True``: to the terminal Outcome as the API gave
    it, the chain then running beside. ``account`` names the account (SEEDANCE_ACCOUNTS) the task
    was made with; it is polled, cancelled and charged with that one. None (or "default"):
    SEEDANCE_API_KEY's. ``submitted``: the price facts of the create request (``submit()`` passes
    them; README: Pricing), for a task created elsewhere whose price depends on them.
    ``celery_id``: the poll chain's task id, when a handle for it was given out before the task
    existed (a waiting submission, admission control); a new one otherwise.
    """
    app = ensure_app()
    refuse_eager("seedance_worker.track()", bool(app.conf.task_always_eager))
    settings = settings or get_settings()
    validate_task_id(task_id)
    fields = registration_fields(
        settings,
        metadata=metadata,
        on_succeeded=on_succeeded,
        on_failed=on_failed,
        raw=raw,
        account=account,
        submitted=submitted,
    )
    schedule = Schedule.from_settings(settings)
    now = time.time()
    owner = celery_id or str(uuid.uuid4())
    countdown = schedule.first_countdown()
    # Batched status: the first read is in a round (parked on the grid), like every later one.
    park_at = park_time(settings, now, countdown) if settings.status_source == "batch" else 0.0
    with tracing.start_job("seedance.track", task_id, fields.get("account")) as root:
        if root.traceparent:
            fields[tracing.TRACE_FIELD] = root.traceparent
        reg = get_store(settings).register(
            task_id, owner, now=now, lease_at=waiting_lease(settings, countdown, now), fields=fields,
            park_at=park_at,
        )  # fmt: skip
        root.spans.set("seedance.created", reg.created)
        if reg.created and not park_at:
            # If this publish is lost (crash, Redis blip) the record's lease runs out and the
            # sweeper publishes it instead.
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
    account: str | None = None,
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
    refuse_eager("seedance_worker.track()", bool(app.conf.task_always_eager))
    fields = registration_fields(
        settings, metadata=metadata, on_succeeded=on_succeeded, on_failed=on_failed, account=account
    )
    # One countdown each: ids tracked together would otherwise be first polled in the same second.
    countdowns = first_countdowns(Schedule.from_settings(settings), len(task_ids))
    now = time.time()
    batched = settings.status_source == "batch"
    park = batched or (settings.poll_park_after_s > 0 and len(task_ids) > 1)
    items = [(tid, str(uuid.uuid4())) for tid in task_ids]
    traces = tracing.start_jobs("seedance.track", task_ids, fields.get("account"))
    regs = get_store(settings).register_many(
        items,
        now=now,
        lease_at=[waiting_lease(settings, c, now) for c in countdowns],
        fields=fields,
        park_at=[park_time(settings, now, c) if batched else now + c for c in countdowns] if park else 0.0,
        traces=traces,
    )
    results: list[AsyncResult] = []
    for (tid, owner), reg, countdown, trace in zip(items, regs, countdowns, traces, strict=True):
        if reg.created and not park:
            publish_poll(tid, gen=1, countdown_s=countdown, celery_id=owner, settings=settings, trace=trace)
        results.append(AsyncResult(reg.owner, app=app))
    return results


def first_countdowns(schedule: Schedule, n: int, rng: Uniform | None = None) -> list[float]:
    """The first-poll countdowns of ``n`` ids tracked in one call, each drawn on its own."""
    return [schedule.first_countdown(rng) for _ in range(n)]


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
    publish_poll(task_id, gen=record.gen, countdown_s=0, celery_id=owner, settings=settings, canvas=canvas,
                 trace=record.trace)  # fmt: skip
    return True
