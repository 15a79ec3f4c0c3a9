"""A job's registration and its poll messages: what track(), the sweeper and the dispatcher share.

``registration_fields`` turns the caller's metadata and chains into the few fields a job record
keeps (only what differs from the defaults). ``publish_poll`` sends a poll message by task name
(``seedance.poll``), so nothing here imports the poll task itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, TypeAlias

from celery import current_app, signature
from celery.canvas import Signature

from seedance_worker import errors
from seedance_worker.engine import tracing
from seedance_worker.settings import Settings

POLL_TASK = "seedance.poll"
SUBMITTED_MAX_BYTES = 4096  # price facts and an estimate: a few hundred bytes

ChainSpec: TypeAlias = str | Signature | dict[str, Any] | Sequence[str | Signature | dict[str, Any]] | None


def refuse_eager(what: str, eager: bool) -> None:
    """A poll reschedules itself with a countdown, which eager mode cannot wait for: it would recurse
    until RecursionError. Refuse at once, saying what to use instead."""
    if eager:
        raise errors.ConfigError(
            f"{what} cannot run with task_always_eager=True (a poll reschedules itself with a countdown, "
            "which eager mode cannot honour): run a worker instead; in pytest, the seedance_celery_worker "
            "fixture of the seedance_worker.testing plugin is an in-process one"
        )


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
    limit = settings.metadata_max_bytes
    return json_object(metadata, "metadata", limit, f"SEEDANCE_METADATA_MAX_BYTES={limit}")


def json_object(value: Any, what: str, max_bytes: int, limit_text: str) -> dict[str, Any]:
    """``value`` as the plain JSON object a record keeps (a copy through JSON), refused by name
    when it is not an object, not serialisable or over ``max_bytes`` encoded."""
    if not isinstance(value, dict):
        raise errors.InvalidRequest(f"{what} must be a JSON object, got {type(value).__name__}")
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise errors.InvalidRequest(f"{what} is not JSON-serialisable: {exc}") from None
    if len(text.encode()) > max_bytes:
        raise errors.InvalidRequest(f"{what} is {len(text.encode())} bytes, over {limit_text}")
    result: dict[str, Any] = json.loads(text)
    return result


def registration_fields(
    settings: Settings,
    *,
    metadata: Any = None,
    on_succeeded: ChainSpec = None,
    on_failed: ChainSpec = None,
    raw: bool = False,
    account: str | None = None,
    submitted: dict[str, Any] | None = None,
) -> dict[str, Any]:
    # Only what differs from the defaults is stored: a small record per in-flight job.
    fields: dict[str, Any] = {"raw": True} if raw else {}
    name = settings.account_name(account)  # an unknown name is refused here, before anything is kept
    if name is not None:
        fields["account"] = name
    meta = validate_metadata(metadata, settings)
    if meta:
        fields["metadata"] = meta
    if on_succeeded is not None:
        fields["on_succeeded"] = normalize_chain(on_succeeded, settings.on_succeeded, "on_succeeded")
    if on_failed is not None:
        fields["on_failed"] = normalize_chain(on_failed, settings.on_failed, "on_failed")
    if submitted:
        fields["submitted"] = validate_submitted(submitted)
        if submitted.get("service_tier") == "flex":
            fields["service_tier"] = "flex"  # a batched list call must ask for flex from the first read
    return fields


def validate_submitted(submitted: Any) -> dict[str, Any]:
    """The price facts a job keeps (``Outcome.submitted``): a small JSON object."""
    return json_object(submitted, "submitted", SUBMITTED_MAX_BYTES, str(SUBMITTED_MAX_BYTES))


def publish_poll(
    task_id: str,
    *,
    gen: int | None,
    countdown_s: float,
    celery_id: str,
    settings: Settings,
    follow: bool = False,
    canvas: dict[str, Any] | None = None,
    handoff: str | None = None,
    snapshot: dict[str, Any] | None = None,
    trace: str | None = None,
) -> None:
    """Publish a fresh poll message for a job (track(), the sweeper, the dispatcher).

    ``canvas`` is the caller's own poll signature (kept in the job record when the poll started in
    a user's chain or group), so a re-published poll still continues the caller's canvas.
    ``handoff`` ("fire" | "salvage") makes it a hand-off poll (handoff.py: ``refire``); ``snapshot``
    (a terminal one, from a batched round's list call) stands in for the poll's own GET. ``trace``
    (the job record's) makes the publish a child of the job's root span (tracing.py).
    """
    options: dict[str, Any] = {"gen": gen, "due": time.time() + max(0.0, countdown_s)}
    if handoff:
        options["handoff"] = handoff
    if snapshot is not None:
        options["snapshot"] = snapshot  # a batched round read it: the poll ends the job from it
    if follow:
        options = {"follow": True}
    countdown = countdown_s if countdown_s > 0 else None
    with tracing.attached(trace):
        if canvas:
            sig = signature(canvas, app=current_app)
            sig.apply_async(
                (task_id,), {"options": options}, task_id=celery_id, countdown=countdown, expires=None
            )
            return
        current_app.signature(POLL_TASK, args=(task_id,), kwargs={"options": options}).apply_async(
            task_id=celery_id, countdown=countdown, queue=settings.poll_queue
        )
