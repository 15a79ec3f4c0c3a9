"""Ledger entries as a billing system reads them: totals by account, model and day, and exports
(JSON lines, CSV). Pure: entries in, rows or text out."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterable
from typing import IO, Any

from seedance_worker.settings import DEFAULT_ACCOUNT
from seedance_worker.steps.ledger import amounts_by_currency

# One column per entry field a billing import needs, in a fixed order (a new field goes last).
CSV_COLUMNS = (
    "entry_id", "task_id", "ts", "charged_at", "day", "account", "status", "model", "service_tier",
    "resolution", "has_video_input", "completion_tokens", "total_tokens", "price_rule",
    "price_per_million", "amount", "currency", "estimated_tokens", "estimated_amount",
    "reserved_amount", "metadata",
)  # fmt: skip


def day_of(ts: Any) -> str:
    """The UTC day (``2026-08-05``) of a unix time: billing days do not move with the host's zone."""
    try:
        return time.strftime("%Y-%m-%d", time.gmtime(float(ts)))
    except (TypeError, ValueError, OverflowError):
        return ""


def by_account_model_day(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (day, account, model): how many charges, their tokens and amounts per currency."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for e in entries:
        key = (day_of(e.get("ts")), str(e.get("account") or DEFAULT_ACCOUNT), str(e.get("model") or ""))
        groups.setdefault(key, []).append(e)
    return [
        {
            "day": day,
            "account": account,
            "model": model,
            "count": len(rows),
            "completion_tokens": sum(int(e.get("completion_tokens") or 0) for e in rows),
            "amount": amounts_by_currency(rows),
        }
        for (day, account, model), rows in sorted(groups.items())
    ]


def reservation_totals(reservations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "count": len(reservations),
        "tokens": sum(int(x.get("tokens") or 0) for x in reservations),
        "amount": amounts_by_currency(reservations),
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def csv_row(entry: dict[str, Any]) -> list[str]:
    estimate = entry.get("estimate") or {}
    reserved = entry.get("reserved") or {}
    ts = entry.get("ts")
    derived = {
        "charged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(ts))) if ts else None,
        "day": day_of(ts) if ts else None,
        "account": entry.get("account") or DEFAULT_ACCOUNT,
        "estimated_tokens": estimate.get("tokens"),
        "estimated_amount": estimate.get("amount"),
        "reserved_amount": reserved.get("amount"),
        "metadata": entry.get("metadata") or {},
    }
    return [_cell(derived[col] if col in derived else entry.get(col)) for col in CSV_COLUMNS]


def write_csv(entries: Iterable[dict[str, Any]], out: IO[str]) -> int:
    """A header row, then one row per entry; returns how many entries."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    n = 0
    for entry in entries:
        writer.writerow(csv_row(entry))
        n += 1
    return n


def write_jsonl(entries: Iterable[dict[str, Any]], out: IO[str]) -> int:
    n = 0
    for entry in entries:
        out.write(json.dumps(entry, separators=(",", ":"), sort_keys=True) + "\n")
        n += 1
    return n
