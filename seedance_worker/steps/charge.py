"""``seedance.charge_usage``: one ledger entry per remote task, however often the step runs.

The claim and the entry are one Lua script, so a retried, redelivered or concurrently running copy
can neither write a second entry nor mark the task charged without writing one (a step may run
more than once: acks_late replays it after a crash). The same script settles the task's
reservation (``submit(..., reserve=True)``). The keys, the retention and the readers are in
``ledger.py``.

The charge settles on the API's ``usage``. A job that ended without a video (failed, expired,
cancelled) is charged only when the API reported usage for it; otherwise its reservation is
released and nothing is written. An entry::

    {"entry_id": "chg_<24 hex>", "task_id": "cgt-...", "status": "succeeded", "model": "...",
     "service_tier": "default", "resolution": "720p", "has_video_input": false,
     "completion_tokens": 108900, "total_tokens": 108900, "amount": "0.83853" | null,
     "currency": "USD" | null, "price_per_million": "7.7" | null,
     "price_rule": "dreamina-seedance-2-0-260128/default" | null, "unpriced": null | "why not",
     "estimate": {"tokens": 108900, "amount": "0.83853", "exact": true} | null,
     "reserved": {"tokens": 108900, "amount": "0.83853", "currency": "USD"} | null,
     "metadata": {...}, "ts": 1779348874.9, "account": "volc"}

``account`` is the name of the account (SEEDANCE_ACCOUNTS) the task was made with; an entry of the
default account has none. The price facts come from the last GET (model, tier, resolution) and,
where it does not say, from what ``submit()`` recorded (``Outcome.submitted``); whether the input
held a video only from the latter. ``price_rule`` is the path of the price table that priced the
entry (pricing.py); amounts are Decimal strings, never floats, never summed in Redis.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import redis
from celery import Task, shared_task

from seedance_worker import connections, metrics, scripts
from seedance_worker.errors import ConfigError
from seedance_worker.models import Charge, Outcome
from seedance_worker.outage import survive_redis_outage
from seedance_worker.pricing import PriceFacts, compute_amount, match_price, price_table
from seedance_worker.quote import price_facts
from seedance_worker.settings import Settings, get_settings
from seedance_worker.steps.ledger import (
    DAY_S,
    LEDGER,
    LEDGER_BY_TASK,
    RESERVED,
    RESERVED_AT,
    get_entry,
    get_reservation,
    iter_ledger,
    list_ledger,
    release,
    trim_ledger,
    trim_reservations,
)

# Re-exported: these lived here before ledger.py.
__all__ = [
    "DAY_S", "LEDGER", "LEDGER_BY_TASK", "build_entry", "charge_usage", "entry_id", "get_entry",
    "iter_ledger", "list_ledger", "record_charge", "trim_ledger",
]  # fmt: skip

log = logging.getLogger(__name__)


def entry_id(task_id: str) -> str:
    """Deterministic, so it doubles as a billing system's idempotency key."""
    return "chg_" + hashlib.sha256(f"{task_id}:charge".encode()).hexdigest()[:24]


def charge_facts(out: Outcome) -> PriceFacts:
    """What prices the charge: the last GET's model, tier and resolution (what actually ran), else
    what submit() recorded; whether the input held a video only from the latter."""
    snap = out.snapshot_model()
    sub = price_facts(out.submitted or {})
    return PriceFacts(
        model=(snap.model if snap else None) or sub.model,
        service_tier=(snap.service_tier if snap else None) or sub.service_tier,
        resolution=(snap.resolution if snap else None) or sub.resolution,
        has_video_input=sub.has_video_input,
    )


def _estimate_of(out: Outcome) -> dict[str, Any] | None:
    est = (out.submitted or {}).get("estimate")
    if not isinstance(est, dict):
        return None
    return {"tokens": est.get("tokens"), "amount": est.get("amount"), "exact": est.get("exact")}


def _reserved_of(reservation: dict[str, Any] | None) -> dict[str, Any] | None:
    if not reservation:
        return None
    return {k: reservation.get(k) for k in ("tokens", "amount", "currency")}


def build_entry(
    out: Outcome,
    settings: Settings,
    now: float | None = None,
    reservation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    snap = out.snapshot_model()
    usage = snap.usage if snap else None
    completion = usage.completion_tokens if usage else None
    total = usage.total_tokens if usage else None
    facts = charge_facts(out)
    match = match_price(price_table(settings.price_table), facts)
    billable = completion if completion is not None else total
    amount = compute_amount(billable, match.price)
    priced = amount is not None
    entry = {
        "entry_id": entry_id(out.task_id),
        "task_id": out.task_id,
        "status": out.status,
        "model": facts.model,
        "service_tier": facts.service_tier,
        "resolution": facts.resolution,
        "has_video_input": facts.has_video_input,
        "completion_tokens": completion,
        "total_tokens": total,
        "amount": amount,
        "currency": settings.currency if priced else None,
        "price_per_million": str(match.price) if priced else None,
        "price_rule": match.rule if priced else None,
        "unpriced": None if priced or billable is None else match.reason,
        "estimate": _estimate_of(out),
        "reserved": _reserved_of(reservation),
        "metadata": out.metadata,
        "ts": time.time() if now is None else now,
    }
    if out.account is not None:
        entry["account"] = out.account
    return entry


def record_charge(task_id: str, entry: dict[str, Any], settings: Settings) -> tuple[bool, dict[str, Any]]:
    """Write ``entry`` unless the task already has one, settling its reservation; returns (created,
    the stored entry)."""
    r = connections.get_redis(settings)
    blob = json.dumps(entry, separators=(",", ":"), sort_keys=True)
    script = scripts.load(r, __package__ or "", "charge")
    created, stored = script(keys=[LEDGER_BY_TASK, LEDGER, RESERVED, RESERVED_AT], args=[task_id, blob])
    return bool(int(created)), json.loads(stored)


def charge_from_entry(entry: dict[str, Any]) -> Charge:
    return Charge(
        completion_tokens=entry.get("completion_tokens"),
        total_tokens=entry.get("total_tokens"),
        model=entry.get("model"),
        service_tier=entry.get("service_tier"),
        amount=entry.get("amount"),
        currency=entry.get("currency"),
        entry_id=entry.get("entry_id"),
        price_rule=entry.get("price_rule"),
        price_per_million=entry.get("price_per_million"),
    )


def reports_usage(out: Outcome) -> bool:
    snap = out.snapshot_model()
    usage = snap.usage if snap else None
    return usage is not None and (usage.completion_tokens is not None or usage.total_tokens is not None)


def _trim_quietly(settings: Settings) -> None:
    """Retention is housekeeping: a failure here must not fail (and re-run) a recorded charge."""
    try:
        dropped = trim_ledger(settings)
        stale = trim_reservations(settings)
    except redis.RedisError as exc:
        log.warning("ledger trim failed: %s: %s", type(exc).__name__, exc)
        return
    if dropped or stale:
        log.info(
            "ledger: dropped %d entries and %d reservations older than %d days",
            dropped, stale, settings.ledger_retention_days,
        )  # fmt: skip


@shared_task(bind=True, name="seedance.charge_usage", acks_late=True, reject_on_worker_lost=True)
@survive_redis_outage
def charge_usage(self: Task, outcome: dict[str, Any]) -> dict[str, Any]:
    """Outcome in, Outcome out with ``charge`` filled: the task's one ledger entry."""
    out = Outcome.model_validate(outcome)
    settings = get_settings()
    if not out.succeeded and not reports_usage(out):
        # No video and no usage reported: nothing to charge; what was reserved is free again.
        if release(out.task_id, settings):
            log.info("charge task=%s %s without usage: reservation released", out.task_id, out.status)
        return outcome
    try:
        entry = build_entry(out, settings, reservation=get_reservation(out.task_id, settings))
    except ConfigError as exc:
        # No entry with a wrong amount: the step error says why, and a re-drive after the fix charges.
        log.error("charge task=%s not recorded: %s", out.task_id, exc)
        out.step_errors["charge"] = {"type": "ConfigError", "kind": "price_table", "message": str(exc)}
        return out.wire()
    created, stored = record_charge(out.task_id, entry, settings)
    if created:
        metrics.charged_tokens(stored.get("completion_tokens"), stored.get("model"))
        _trim_quietly(settings)
    out.charge = charge_from_entry(stored)
    out.step_errors.pop("charge", None)
    log.info(
        "charge task=%s %s entry=%s tokens=%s amount=%s %s price=%s",
        out.task_id,
        "recorded" if created else "already recorded",
        stored.get("entry_id"),
        stored.get("completion_tokens"),
        stored.get("amount"),
        stored.get("currency") or "",
        stored.get("price_rule") or stored.get("unpriced") or "-",
    )
    return out.wire()
