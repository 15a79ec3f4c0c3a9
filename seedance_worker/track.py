"""``track()``: start one poll chain for a remote task that already exists (never two)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any, TypeAlias

from celery.canvas import Signature
from celery.result import AsyncResult

from seedance_worker import errors
from seedance_worker.client import validate_task_id
from seedance_worker.engine.schedule import Schedule
from seedance_worker.engine.store import get_store
from seedance_worker.settings import Settings, get_settings

ChainSpec: TypeAlias = str | Signature | dict[str, Any] | Sequence[str | Signature | dict[str, Any]] | None


def normalize_chain(spec: ChainSpec, default: list[str], setting: str) -> list[Any]:
    """Task names or signatures -> a JSON list (names as strings, signatures as their dicts)."""
    if spec is None:
        return list(default)
    items: Sequence[Any]
    if isinstance(spec, str):
        items = [p.strip() for p in spec.split(",") if p.strip()]
    elif isinstance(spec, Signature | dict):
        items = [spec]
    else:
        items = list(spec)
    out: list[Any] = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, Signature):
            out.append(json.loads(json.dumps(dict(item))))
        elif isinstance(item, dict) and "task" in item:
            out.append(json.loads(json.dumps(item)))
        else:
            raise errors.InvalidRequest(f"{setting}: expected task names or Celery signatures, got {item!r}")
    return out


def validate_metadata(metadata: Any, settings: Settings) -> dict[str, Any]:
    if metadata is None:
        return {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError as exc:
            raise errors.InvalidRequest(f"metadata is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise errors.InvalidRequest(f"metadata must be a JSON object, got {type(metadata).__name__}")
    try:
        text = json.dumps(metadata, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise errors.InvalidRequest(f"metadata is not JSON-serialisable: {exc}") from None
    if len(text.encode()) > settings.metadata_max_bytes:
        raise errors.InvalidRequest(
            f"metadata is {len(text.encode())} bytes, over SEEDANCE_METADATA_MAX_BYTES="
            f"{settings.metadata_max_bytes}"
        )
    result: dict[str, Any] = json.loads(text)
    return result


def registration_fields(
    settings: Settings,
    *,
    metadata: Any = None,
    on_succeeded: ChainSpec = None,
    on_failed: ChainSpec = None,
) -> dict[str, Any]:
    # Only what differs from the defaults is stored: a small record per in-flight job.
    fields: dict[str, Any] = {}
    meta = validate_metadata(metadata, settings)
    if meta:
        fields["metadata"] = meta
    if on_succeeded is not None:
        fields["on_succeeded"] = normalize_chain(on_succeeded, settings.on_succeeded, "on_succeeded")
    if on_failed is not None:
        fields["on_failed"] = normalize_chain(on_failed, settings.on_failed, "on_failed")
    return fields


def track(
    task_id: str,
    *,
    on_succeeded: ChainSpec = None,
    on_failed: ChainSpec = None,
    metadata: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> AsyncResult:
    """Start tracking a remote task; a second call for the same id returns the first chain's handle."""
    from seedance_worker.engine.poll import _lease_after, poll, publish_poll
    from seedance_worker.wiring.app import ensure_app

    ensure_app()
    settings = settings or get_settings()
    validate_task_id(task_id)
    fields = registration_fields(settings, metadata=metadata, on_succeeded=on_succeeded, on_failed=on_failed)
    schedule = Schedule.from_settings(settings)
    now = time.time()
    owner = str(uuid.uuid4())
    countdown = schedule.first_countdown()
    reg = get_store(settings).register(
        task_id, owner, now=now, lease_at=_lease_after(settings, countdown, now), fields=fields
    )
    if reg.created:
        # If this publish is lost (crash, Redis blip) the record's lease runs out and the sweeper
        # publishes it instead.
        publish_poll(task_id, gen=1, countdown_s=countdown, celery_id=owner, settings=settings)
    result: AsyncResult = poll.AsyncResult(reg.owner)
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
    from seedance_worker.engine.poll import _lease_after, poll, publish_poll
    from seedance_worker.wiring.app import ensure_app

    settings = settings or get_settings()
    if len(task_ids) > settings.track_max_ids:
        raise errors.InvalidRequest(
            f"{len(task_ids)} ids in one call, over SEEDANCE_TRACK_MAX_IDS={settings.track_max_ids}; "
            "send them in batches"
        )
    for tid in task_ids:
        validate_task_id(tid)
    ensure_app()
    fields = registration_fields(settings, metadata=metadata, on_succeeded=on_succeeded, on_failed=on_failed)
    countdown = Schedule.from_settings(settings).first_countdown()
    now = time.time()
    park = settings.poll_park_after_s > 0 and len(task_ids) > 1
    items = [(tid, str(uuid.uuid4())) for tid in task_ids]
    regs = get_store(settings).register_many(
        items,
        now=now,
        lease_at=_lease_after(settings, countdown, now),
        fields=fields,
        park_at=now + countdown if park else 0.0,
    )
    results: list[AsyncResult] = []
    for (tid, owner), reg in zip(items, regs, strict=True):
        if reg.created and not park:
            publish_poll(tid, gen=1, countdown_s=countdown, celery_id=owner, settings=settings)
        results.append(poll.AsyncResult(reg.owner))
    return results


def poll_now(task_id: str, settings: Settings | None = None) -> bool:
    """Poll a tracked job right away (a callback said it changed); False when it is not polling.

    The extra message carries the job's current generation and the chain's own task id: whichever
    of it and the scheduled poll runs first advances the generation, and the other is dropped as
    stale, so this never forks the chain. A 429 ``not_before`` still holds.
    """
    from seedance_worker.engine.poll import publish_poll
    from seedance_worker.wiring.app import ensure_app

    ensure_app()
    settings = settings or get_settings()
    validate_task_id(task_id)
    record = get_store(settings).get(task_id)
    if record is None or record.state != "polling" or not record.owner:
        return False
    owner, canvas = record.owner, record.canvas
    publish_poll(task_id, gen=record.gen, countdown_s=0, celery_id=owner, settings=settings, canvas=canvas)
    return True
