"""``seedance.charge_usage``: one ledger entry per remote task, however often the step runs.

The claim and the entry are one Lua script, so a retried, redelivered or concurrently running copy
can neither write a second entry nor mark the task charged without writing one
(a step may run more than once: acks_late replays it after a crash)::

    seedance:ledger:by_task  hash  task_id -> entry JSON (HSETNX: the first writer wins)
    seedance:ledger          list  task_ids in charge order (RPUSH only when HSETNX won)

Retention: every new entry trims the oldest ones charged more than
``SEEDANCE_LEDGER_RETENTION_DAYS`` (40) ago, oldest first, stopping at the first entry that is
younger or whose job record still exists (its chain may still run or be re-fired, and the entry is
its idempotency key). ``seedance-worker ledger --export jsonl`` takes the entries out before then.

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
import itertools
import json
import logging
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import redis
from celery import Task, shared_task

from seedance_worker import connections, keys, metrics, scripts
from seedance_worker.engine.handoff import still_tracked
from seedance_worker.errors import ConfigError
from seedance_worker.models import Charge, Outcome
from seedance_worker.outage import survive_redis_outage
from seedance_worker.pricing import compute_amount, format_amount, price_for, price_table
from seedance_worker.settings import Settings, get_settings

log = logging.getLogger(__name__)

LEDGER = keys.LEDGER
LEDGER_BY_TASK = keys.LEDGER_BY_TASK
TRIM_BATCH = 100  # entries looked at per new entry: a backlog of old ones drains 100 at a time
DAY_S = 86400


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


def _charged_at(raw: str | bytes | None) -> float:
    """An entry's ``ts``; an id without a readable entry counts as old (there is nothing to keep)."""
    try:
        return float(json.loads(raw)["ts"]) if raw else 0.0
    except (ValueError, TypeError, KeyError):
        return 0.0


def trim_ledger(
    settings: Settings | None = None, *, now: float | None = None, limit: int = TRIM_BATCH
) -> int:
    """Drop the oldest entries charged before the retention, oldest first; return how many went.

    Stops at the first entry that is younger, or whose job record still exists: that chain may still
    run or be re-fired, and the entry is what keeps it from charging twice.
    """
    settings = settings or get_settings()
    r = connections.get_redis(settings)
    cutoff = (time.time() if now is None else now) - settings.ledger_retention_days * DAY_S
    ids = [str(x) for x in r.lrange(LEDGER, 0, limit - 1)]
    if not ids:
        return 0
    old: list[str] = []
    for tid, raw in zip(ids, r.hmget(LEDGER_BY_TASK, ids), strict=True):
        if _charged_at(raw) >= cutoff:
            break
        old.append(tid)
    tracked = still_tracked(old, settings)
    expired = list(itertools.takewhile(lambda tid: tid not in tracked, old))
    if not expired:
        return 0
    script = scripts.load(r, __package__ or "", "ledger_trim")
    return int(script(keys=[LEDGER, LEDGER_BY_TASK], args=expired))


def iter_ledger(settings: Settings | None = None, *, since: float | None = None) -> Iterator[dict[str, Any]]:
    """Every entry in charge order (those charged at or after ``since`` when given).

    The ids are read in one go, so a trim running meanwhile cannot shift the list under the reader;
    an entry trimmed before its turn is left out (it was past the retention).
    """
    settings = settings or get_settings()
    r = connections.get_redis(settings)
    ids = [str(x) for x in r.lrange(LEDGER, 0, -1)]
    for i in range(0, len(ids), 500):
        for raw in r.hmget(LEDGER_BY_TASK, ids[i : i + 500]):
            if raw and (since is None or _charged_at(raw) >= since):
                yield json.loads(raw)


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


def _trim_quietly(settings: Settings) -> None:
    """Retention is housekeeping: a failure here must not fail (and re-run) a recorded charge."""
    try:
        dropped = trim_ledger(settings)
    except redis.RedisError as exc:
        log.warning("ledger trim failed: %s: %s", type(exc).__name__, exc)
        return
    if dropped:
        log.info("ledger: dropped %d entries older than %d days", dropped, settings.ledger_retention_days)


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
        _trim_quietly(settings)
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
