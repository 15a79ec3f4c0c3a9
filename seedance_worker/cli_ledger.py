"""``seedance-worker ledger``: totals by account, model and day; every entry as a table, JSON, JSON
lines or CSV (the last two for billing systems)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from seedance_worker.cli_output import EXIT_OK, console, print_json

FORMATS = ("table", "json", "jsonl", "csv")


def _amount_text(amounts: dict[str, str]) -> str:
    return ", ".join(f"{value} {cur}" for cur, value in amounts.items()) or "-"


def _export(fmt: str, since: float | None) -> int:
    """Every entry (charged at or after ``since``) on stdout, in charge order; the count on stderr."""
    from seedance_worker.settings import get_settings
    from seedance_worker.steps.ledger import iter_ledger
    from seedance_worker.steps.ledger_report import write_csv, write_jsonl

    entries = iter_ledger(get_settings(), since=since)
    count = write_csv(entries, sys.stdout) if fmt == "csv" else write_jsonl(entries, sys.stdout)
    sys.stdout.flush()
    print(f"exported {count} ledger entries", file=sys.stderr)
    return EXIT_OK


def _entries_table(entries: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    from seedance_worker.settings import DEFAULT_ACCOUNT

    table = Table(title=f"ledger: {len(entries)} entries")
    accounts = any(e.get("account") for e in entries)
    for col in ("task id", *(("account",) if accounts else ()), "model", "tier", "tokens", "price",
                "amount", "metadata"):  # fmt: skip
        table.add_column(col)
    for e in entries:
        amount = f"{e.get('amount')} {e.get('currency')}" if e.get("amount") else "-"
        price = f"{e.get('price_per_million')} ({e.get('price_rule')})" if e.get("price_rule") else "-"
        table.add_row(
            str(e.get("task_id")),
            *((str(e.get("account") or DEFAULT_ACCOUNT),) if accounts else ()),
            str(e.get("model")),
            str(e.get("service_tier") or "-"),
            str(e.get("completion_tokens")),
            price,
            amount,
            json.dumps(e.get("metadata") or {}),
        )
    return table


def _totals_table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="totals by day (UTC), account and model")
    for col in ("day", "account", "model", "charges", "tokens", "amount"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["day"], row["account"], row["model"], str(row["count"]),
                      str(row["completion_tokens"]), _amount_text(row["amount"]))  # fmt: skip
    return table


def cmd_ledger(args: argparse.Namespace) -> int:
    from seedance_worker.settings import get_settings
    from seedance_worker.steps.ledger import iter_ledger, list_reservations, totals_of
    from seedance_worker.steps.ledger_report import by_account_model_day, reservation_totals

    fmt = args.export or ("json" if args.json else args.format)
    if fmt in ("jsonl", "csv"):
        return _export(fmt, args.since)
    settings = get_settings()
    entries = list(iter_ledger(settings, since=args.since))
    report: dict[str, Any] = {
        "entries": entries,
        "totals": totals_of(entries),
        "by_account_model_day": by_account_model_day(entries),
        "reserved": reservation_totals(list_reservations(settings)),
    }
    if fmt == "json":
        print_json(report)
        return EXIT_OK
    out = console()
    if args.entries:
        out.print(_entries_table(entries))
    out.print(_totals_table(report["by_account_model_day"]))
    totals, reserved = report["totals"], report["reserved"]
    print(f"total: {totals['count']} charges, {totals['completion_tokens']} tokens, "
          f"{_amount_text(totals['amount'])}; reserved: {reserved['count']} jobs, "
          f"{reserved['tokens']} tokens, {_amount_text(reserved['amount'])}")  # fmt: skip
    return EXIT_OK


def add_ledger_parser(sub: Any) -> None:
    s = sub.add_parser("ledger", help="charges: totals by account, model and day; exports for billing")
    s.add_argument("--format", choices=FORMATS, default="table",
                   help="table (default), json (entries and totals), jsonl or csv (every entry, for "
                   "billing)")  # fmt: skip
    s.add_argument("--entries", action="store_true", help="table: also one row per entry")
    s.add_argument("--since", type=float, help="only entries charged at or after this unix time")
    s.add_argument("--json", action="store_true", help="the same as --format json")
    s.add_argument("--export", choices=["jsonl", "csv"], help="the same as --format jsonl|csv")
    s.set_defaults(func=cmd_ledger)
