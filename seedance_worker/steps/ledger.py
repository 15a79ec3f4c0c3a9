"""The ledger's Redis state: entries (written by ``charge.py``), reservations, retention, reading.

::

    seedance:ledger:by_task      hash  task_id -> entry JSON (HSETNX: the first writer wins)
    seedance:ledger              list  task_ids in charge order (RPUSH only when HSETNX won)
    seedance:ledger:reserved     hash  task_id -> reservation JSON (submit(..., reserve=True))
    seedance:ledger:reserved_at  zset  task_id -> when it was reserved (for its retention)

A reservation holds the estimate made at submit until the job's charge settles it: the charge's
Lua script writes the entry and removes the reservation together, and a job that ends without
usage (no video, nothing reported) only removes it. A reservation is never made for a task that
has an entry already.

Retention: every new entry trims the oldest entries and reservations made more than
``SEEDANCE_LEDGER_RETENTION_DAYS`` (40) ago, oldest first, stopping at the first that is younger
or whose job record still exists (its chain may still run or be re-fired, and the entry is its
idempotency key). ``seedance-worker ledger --format jsonl|csv`` takes entries out before then.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

from seedance_worker import connections, keys, scripts
from seedance_worker.engine.handoff import still_tracked
from seedance_worker.pricing import format_amount
from seedance_worker.settings import Settings, get_settings

LEDGER = keys.LEDGER
LEDGER_BY_TASK = keys.LEDGER_BY_TASK
RESERVED = keys.LEDGER_RESERVED
RESERVED_AT = keys.LEDGER_RESERVED_AT
TRIM_BATCH = 100  # entries looked at per new entry: a backlog of old ones drains 100 at a time
DAY_S = 86400
READ_BATCH = 500  # ids per HMGET when reading many entries or reservations


def charged_at(raw: str | bytes | None) -> float:
    """An entry's ``ts``; an id without a readable entry counts as old (there is nothing to keep)."""
    try:
        return float(json.loads(raw)["ts"]) if raw else 0.0
    except (ValueError, TypeError, KeyError):
        return 0.0


# --- reservations ---------------------------------------------------------------------------------


def reserve(task_id: str, reservation: dict[str, Any], settings: Settings) -> bool:
    """Hold ``reservation`` for the task until its charge; False when it holds one or is charged."""
    r = connections.get_redis(settings)
    now = float(reservation.get("ts") or time.time())
    blob = json.dumps(reservation, separators=(",", ":"), sort_keys=True)
    script = scripts.load(r, __package__ or "", "reserve")
    return bool(int(script(keys=[LEDGER_BY_TASK, RESERVED, RESERVED_AT], args=[task_id, blob, now])))


def get_reservation(task_id: str, settings: Settings | None = None) -> dict[str, Any] | None:
    raw = connections.get_redis(settings or get_settings()).hget(RESERVED, task_id)
    return json.loads(raw) if raw else None


def release(task_id: str, settings: Settings) -> bool:
    """Drop the task's reservation (its job ended without anything to charge)."""
    return bool(_drop_reservations(connections.get_redis(settings), [task_id]))


def _drop_reservations(r: Any, task_ids: list[str]) -> int:
    """Drop these tasks' reservations (hash and time index together); how many there were."""
    pipe = r.pipeline(transaction=True)
    pipe.hdel(RESERVED, *task_ids)
    pipe.zrem(RESERVED_AT, *task_ids)
    removed, _ = pipe.execute()
    return int(removed)


def _values(r: Any, key: str, ids: list[str]) -> Iterator[str]:
    """The values of ``ids`` in hash ``key``, in order, skipping the missing: one HMGET per
    ``READ_BATCH``."""
    for i in range(0, len(ids), READ_BATCH):
        yield from (raw for raw in r.hmget(key, ids[i : i + READ_BATCH]) if raw)


def list_reservations(settings: Settings | None = None) -> list[dict[str, Any]]:
    """The open reservations, oldest first."""
    r = connections.get_redis(settings or get_settings())
    ids = [str(x) for x in r.zrange(RESERVED_AT, 0, -1)]
    return [json.loads(raw) for raw in _values(r, RESERVED, ids)]


def trim_reservations(settings: Settings, *, now: float | None = None, limit: int = TRIM_BATCH) -> int:
    """Drop reservations made before the retention whose job record is gone (never charged: a
    chain without ``seedance.charge_usage``, or a job that stopped being tracked)."""
    r = connections.get_redis(settings)
    cutoff = (time.time() if now is None else now) - settings.ledger_retention_days * DAY_S
    old = [str(x) for x in r.zrangebyscore(RESERVED_AT, "-inf", cutoff, start=0, num=limit)]
    tracked = still_tracked(old, settings)
    gone = [tid for tid in old if tid not in tracked]
    if gone:
        _drop_reservations(r, gone)
    return len(gone)


# --- entries --------------------------------------------------------------------------------------


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
        if charged_at(raw) >= cutoff:
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
    for raw in _values(r, LEDGER_BY_TASK, ids):
        if since is None or charged_at(raw) >= since:
            yield json.loads(raw)


def get_entry(task_id: str, settings: Settings | None = None) -> dict[str, Any] | None:
    settings = settings or get_settings()
    raw = connections.get_redis(settings).hget(LEDGER_BY_TASK, task_id)
    return json.loads(raw) if raw else None


def amounts_by_currency(entries: Iterable[dict[str, Any]], field: str = "amount") -> dict[str, str]:
    """Amounts added up per currency, in Python (Decimal: never floats, never summed in Redis)."""
    sums: dict[str, Decimal] = {}
    for e in entries:
        if e.get(field) is not None and e.get("currency"):
            cur = str(e["currency"])
            sums[cur] = sums.get(cur, Decimal(0)) + Decimal(str(e[field]))
    return {cur: format_amount(value) for cur, value in sorted(sums.items())}


def totals_of(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "count": len(entries),
        "completion_tokens": sum(int(e.get("completion_tokens") or 0) for e in entries),
        "total_tokens": sum(int(e.get("total_tokens") or 0) for e in entries),
        "amount": amounts_by_currency(entries),
    }


def list_ledger(
    settings: Settings | None = None, *, limit: int | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The entries in charge order (the last ``limit`` when given) and their totals."""
    settings = settings or get_settings()
    r = connections.get_redis(settings)
    start = -limit if limit else 0
    ids = [str(x) for x in r.lrange(LEDGER, start, -1)]
    entries = [json.loads(raw) for raw in _values(r, LEDGER_BY_TASK, ids)]
    return entries, totals_of(entries)
