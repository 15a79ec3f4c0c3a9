"""``seedance.charge_usage``: one ledger entry per remote task, however often the step runs.

The claim and the entry are one Lua script, so a retried, redelivered or concurrently running copy
can neither write a second entry nor mark the task charged without writing one
(a step may run more than once: acks_late replays it after a crash)::

    seedance:ledger:by_task  hash  task_id -> entry JSON (HSETNX: the first writer wins)
    seedance:ledger          list  task_ids in charge order (RPUSH only when HSETNX won)

An entry::

    {"entry_id": "chg_<24 hex>", "task_id": "cgt-...", "model": "...", "service_tier": "default",
     "completion_tokens": 108900, "total_tokens": 108900, "amount": "0.5445" | null,
     "currency": "USD" | null, "price_per_million": "5.00" | null, "metadata": {...}, "ts": 1779348874.9}

Amounts are Decimal strings (never floats, never summed in Redis); ``list_ledger`` adds them up in
Python. The optional price table (``SEEDANCE_PRICE_TABLE``) is a JSON file of prices per million
completion tokens by model and service tier, ``"*"`` being the fallback model::

    {"seedance-1-5-pro-251215": {"default": "2.50", "flex": "1.25"}, "*": {"default": "3.00"}}
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from decimal import Decimal
from typing import Any

from celery import Task, shared_task

from seedance_worker import connections, keys, metrics, scripts
from seedance_worker.errors import ConfigError
from seedance_worker.models import Charge, Outcome
from seedance_worker.outage import survive_redis_outage
from seedance_worker.pricing import compute_amount, format_amount, price_for, price_table
from seedance_worker.settings import Settings, get_settings

log = logging.getLogger(__name__)

LEDGER = keys.LEDGER
LEDGER_BY_TASK = keys.LEDGER_BY_TASK




def entry_id(task_id: str) -> str:
    """Deterministic, so it doubles as a billing system's idempotency key."""
    return "chg_" + hashlib.sha256(f"{task_id}:charge".encode()).hexdigest()[:24]


def build_entry(out: Outcome, settings: Settings, now: float | None = None) -> dict[str, Any]:
    snap = out.snapshot_model()
    usage = snap.usage if snap else None
    completion = usage.completion_tokens if usage else None
    total = usage.total_tokens if usage else None
    model = snap.model if snap else None
    tier = snap.service_tier if snap else None
    price = price_for(price_table(settings.price_table), model, tier)
    billable = completion if completion is not None else total
    amount = compute_amount(billable, price)
    return {
        "entry_id": entry_id(out.task_id),
        "task_id": out.task_id,
        "model": model,
        "service_tier": tier,
        "completion_tokens": completion,
        "total_tokens": total,
        "amount": amount,
        "currency": settings.currency if amount is not None else None,
        "price_per_million": str(price) if price is not None and amount is not None else None,
        "metadata": out.metadata,
        "ts": time.time() if now is None else now,
    }


def record_charge(task_id: str, entry: dict[str, Any], settings: Settings) -> tuple[bool, dict[str, Any]]:
    """Write ``entry`` unless the task already has one; returns (created, the stored entry)."""
    r = connections.get_redis(settings)
    blob = json.dumps(entry, separators=(",", ":"), sort_keys=True)
    script = scripts.load(r, __package__ or "", "charge")
    created, stored = script(keys=[LEDGER_BY_TASK, LEDGER], args=[task_id, blob])
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
    )


def get_entry(task_id: str, settings: Settings | None = None) -> dict[str, Any] | None:
    settings = settings or get_settings()
    raw = connections.get_redis(settings).hget(LEDGER_BY_TASK, task_id)
    return json.loads(raw) if raw else None


def list_ledger(
    settings: Settings | None = None, *, limit: int | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The entries in charge order (the last ``limit`` when given) and their totals."""
    settings = settings or get_settings()
    r = connections.get_redis(settings)
    start = -limit if limit else 0
    ids = [str(x) for x in r.lrange(LEDGER, start, -1)]
    entries: list[dict[str, Any]] = []
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        for raw in r.hmget(LEDGER_BY_TASK, chunk):
            if raw:
                entries.append(json.loads(raw))
    completion = 0
    total = 0
    amounts: dict[str, Decimal] = {}
    for e in entries:
        completion += int(e.get("completion_tokens") or 0)
        total += int(e.get("total_tokens") or 0)
        if e.get("amount") is not None and e.get("currency"):
            cur = str(e["currency"])
            amounts[cur] = amounts.get(cur, Decimal(0)) + Decimal(str(e["amount"]))
    totals = {
        "count": len(entries),
        "completion_tokens": completion,
        "total_tokens": total,
        "amount": {cur: format_amount(value) for cur, value in sorted(amounts.items())},
    }
    return entries, totals


@shared_task(bind=True, name="seedance.charge_usage", acks_late=True, reject_on_worker_lost=True)
@survive_redis_outage
def charge_usage(self: Task, outcome: dict[str, Any]) -> dict[str, Any]:
    """Outcome in, Outcome out with ``charge`` filled: the task's one ledger entry."""
    out = Outcome.model_validate(outcome)
    if not out.succeeded:
        return outcome
    settings = get_settings()
    try:
        entry = build_entry(out, settings)
    except ConfigError as exc:
        # No entry with a wrong amount: the step error says why, and a re-drive after the fix charges.
        log.error("charge task=%s not recorded: %s", out.task_id, exc)
        out.step_errors["charge"] = {"type": "ConfigError", "kind": "price_table", "message": str(exc)}
        return out.wire()
    created, stored = record_charge(out.task_id, entry, settings)
    if created:
        metrics.charged_tokens(stored.get("completion_tokens"), stored.get("model"))
    out.charge = charge_from_entry(stored)
    out.step_errors.pop("charge", None)
    log.info(
        "charge task=%s %s entry=%s tokens=%s amount=%s %s",
        out.task_id,
        "recorded" if created else "already recorded",
        stored.get("entry_id"),
        stored.get("completion_tokens"),
        stored.get("amount"),
        stored.get("currency") or "",
    )
    return out.wire()
