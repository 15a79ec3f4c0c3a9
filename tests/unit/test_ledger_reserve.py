"""Reservations and the ledger's reports, on a real Redis: a reservation is held until the job's
charge settles it, released when the job ends with nothing to charge, never made for a charged
task; totals by account, model and day; the CSV and JSON lines exports."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from seedance_worker.cli import main
from seedance_worker.engine.store import get_store, reset_stores
from seedance_worker.models import Outcome
from seedance_worker.settings import get_settings, reset_settings_cache
from seedance_worker.steps.charge import charge_usage
from seedance_worker.steps.ledger import (
    RESERVED,
    RESERVED_AT,
    get_entry,
    get_reservation,
    list_reservations,
    reserve,
    trim_reservations,
)
from seedance_worker.steps.ledger_report import CSV_COLUMNS, by_account_model_day, day_of
from tests.support.ids import new_id

V20 = "dreamina-seedance-2-0-260128"
DAY_S = 86400


@pytest.fixture
def r(env: pytest.MonkeyPatch, redis_url: str, tmp_path: Path) -> Any:
    """A Redis database of this module's own (same server), a price table for 2.0."""
    parts = urlsplit(redis_url)
    env.setenv("SEEDANCE_REDIS_URL", urlunsplit(parts._replace(path="/8")))
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({V20: {"default": "7.7", "video_input": {"default": "4.7"}}}))
    env.setenv("SEEDANCE_PRICE_TABLE", str(prices))
    reset_settings_cache()
    reset_stores()
    client = get_store(get_settings()).r
    client.flushdb()
    yield client
    client.flushdb()


def submitted(video: bool) -> dict[str, Any]:
    amount = "0.51183" if video else "0.83853"
    return {"model": V20, "service_tier": "default", "resolution": "720p", "ratio": "16:9", "duration": 5,
            "has_video_input": video, "estimate": {"tokens": 108900, "amount": amount, "exact": not video}}  # fmt: skip


def outcome(tid: str, *, status: str = "succeeded", tokens: int | None = 108900, video: bool = False,
            account: str | None = None) -> dict[str, Any]:  # fmt: skip
    snap: dict[str, Any] = {"id": tid, "model": V20, "status": status, "service_tier": "default",
                            "resolution": "720p"}  # fmt: skip
    if tokens is not None:
        snap["usage"] = {"completion_tokens": tokens, "total_tokens": tokens}
    return Outcome.model_validate({"task_id": tid, "status": status, "snapshot": snap,
                                   "submitted": submitted(video), "account": account}).wire()  # fmt: skip


def reservation(tid: str, amount: str = "0.83853", ts: float | None = None) -> dict[str, Any]:
    return {"task_id": tid, "tokens": 108900, "amount": amount, "currency": "USD", "ts": ts or time.time()}


def test_the_charge_settles_the_reservation_and_the_entry_shows_both(r: Any) -> None:
    """The entry carries the price that applied, the estimate and what was reserved; the
    reservation is gone with the entry written."""
    tid = new_id()
    assert reserve(tid, reservation(tid, "0.51183"), get_settings())
    assert not reserve(tid, reservation(tid), get_settings())  # one reservation per task
    charge_usage(outcome(tid, video=True))
    entry = get_entry(tid)
    assert entry is not None
    assert (entry["price_rule"], entry["price_per_million"], entry["amount"]) == (
        f"{V20}/video_input/default", "4.7", "0.51183")  # fmt: skip
    assert entry["has_video_input"] is True and entry["resolution"] == "720p"
    assert entry["estimate"] == {"tokens": 108900, "amount": "0.51183", "exact": False}
    assert entry["reserved"] == {"tokens": 108900, "amount": "0.51183", "currency": "USD"}
    assert get_reservation(tid) is None and r.zcard(RESERVED_AT) == 0
    assert not reserve(tid, reservation(tid), get_settings())  # a charged task is never reserved again


def test_a_job_without_video_and_usage_releases_its_reservation_and_charges_nothing(r: Any) -> None:
    for status in ("failed", "expired", "cancelled"):
        tid = new_id()
        assert reserve(tid, reservation(tid), get_settings())
        assert charge_usage(outcome(tid, status=status, tokens=None))["charge"] is None
        assert get_reservation(tid) is None and get_entry(tid) is None
    assert r.hlen(RESERVED) == 0


def test_a_failed_job_with_usage_settles_its_reservation_on_the_usage(r: Any) -> None:
    tid = new_id()
    assert reserve(tid, reservation(tid), get_settings())
    charge_usage(outcome(tid, status="failed", tokens=20_000))
    entry = get_entry(tid)
    assert entry is not None and entry["status"] == "failed" and entry["amount"] == "0.154"
    assert get_reservation(tid) is None


def test_an_unsettled_reservation_goes_after_the_retention_unless_its_job_is_tracked(r: Any) -> None:
    settings = get_settings()
    old, kept = new_id(), new_id()
    reserve(old, reservation(old, ts=time.time() - 41 * DAY_S), settings)
    reserve(kept, reservation(kept, ts=time.time() - 41 * DAY_S), settings)
    get_store(settings).register(kept, "owner", now=time.time(), lease_at=time.time() + 600, fields={})
    assert trim_reservations(settings) == 1
    assert [x["task_id"] for x in list_reservations()] == [kept]


def test_totals_by_account_model_and_day_and_the_exports(r: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Two days, two accounts: one totals row per (day, account, model); `--format csv` has a
    header and a row per entry, `--format jsonl` a JSON object per entry."""
    ids = [new_id() for _ in range(3)]
    charge_usage(outcome(ids[0]))
    charge_usage(outcome(ids[1], video=True))
    charge_usage(outcome(ids[2], account="volc"))
    reserve(new_id(), reservation("open"), get_settings())
    today = day_of(time.time())
    assert main(["ledger", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["by_account_model_day"] == [
        {"day": today, "account": "default", "model": V20, "count": 2, "completion_tokens": 217800,
         "amount": {"USD": "1.35036"}},
        {"day": today, "account": "volc", "model": V20, "count": 1, "completion_tokens": 108900,
         "amount": {"USD": "0.83853"}},
    ]  # fmt: skip
    assert report["totals"]["amount"] == {"USD": "2.18889"}
    assert report["reserved"] == {"count": 1, "tokens": 108900, "amount": {"USD": "0.83853"}}
    yesterday = [{"ts": time.time() - DAY_S, "model": V20, "completion_tokens": 1, "amount": "1",
                  "currency": "USD"}, *report["entries"]]  # fmt: skip
    assert [row["day"] for row in by_account_model_day(yesterday)] == [
        day_of(time.time() - DAY_S),
        today,
        today,
    ]

    assert main(["ledger", "--format", "csv"]) == 0
    out = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out.out)))
    assert list(rows[0]) == list(CSV_COLUMNS) and [row["task_id"] for row in rows] == ids
    assert rows[1]["price_rule"] == f"{V20}/video_input/default" and rows[1]["has_video_input"] == "true"
    assert (rows[2]["account"], rows[0]["account"], rows[0]["amount"], rows[0]["day"]) == ("volc", "default",
                                                                                           "0.83853", today)  # fmt: skip
    assert "exported 3 ledger entries" in out.err
    assert main(["ledger", "--format", "jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["task_id"] for e in lines] == ids and lines == report["entries"]
    assert main(["ledger"]) == 0
    table = capsys.readouterr().out
    assert "totals by day (UTC), account and model" in table and "volc" in table
    assert (
        "total: 3 charges, 326700 tokens, 2.18889 USD; reserved: 1 jobs, 108900 tokens, 0.83853 USD" in table
    )
