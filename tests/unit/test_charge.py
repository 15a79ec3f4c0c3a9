"""seedance.charge_usage: exactly one ledger entry per remote task, on a real Redis."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from seedance_worker.engine.store import get_store, reset_stores
from seedance_worker.errors import ConfigError
from seedance_worker.models import Charge, Outcome
from seedance_worker.pricing import PriceBlock, compute_amount, format_amount, load_price_table, price_for
from seedance_worker.settings import get_settings, reset_settings_cache
from seedance_worker.steps.charge import (
    LEDGER,
    LEDGER_BY_TASK,
    charge_usage,
    list_ledger,
)
from tests.support.ids import new_id

MODEL = "seedance-1-5-pro-251215"


@pytest.fixture
def ledger(env: pytest.MonkeyPatch, redis_url: str) -> Any:
    """A Redis database of its own (same server), so ledger totals are exact."""
    parts = urlsplit(redis_url)
    env.setenv("SEEDANCE_REDIS_URL", urlunsplit(parts._replace(path="/7")))
    reset_settings_cache()
    reset_stores()
    r = get_store(get_settings()).r
    r.flushdb()
    return r


def make_outcome(
    task_id: str,
    *,
    tokens: int | None = 108900,
    tier: str | None = "default",
    model: str = MODEL,
    status: str = "succeeded",
) -> dict[str, Any]:
    snap: dict[str, Any] = {"id": task_id, "model": model, "status": status, "service_tier": tier}
    if tokens is not None:
        snap["usage"] = {"completion_tokens": tokens, "total_tokens": tokens}
    return Outcome.model_validate(
        {"task_id": task_id, "status": status, "snapshot": snap, "metadata": {"end_user": "u-42"}}
    ).wire()


def price_file(tmp_path: Path, table: Any) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(table if isinstance(table, str) else json.dumps(table))
    return path


def test_one_entry_and_a_second_run_returns_it(ledger: Any) -> None:
    tid = new_id()
    first = charge_usage(make_outcome(tid))
    charge = Charge.model_validate(first["charge"])
    assert charge.completion_tokens == 108900 and charge.total_tokens == 108900
    assert charge.model == MODEL and charge.service_tier == "default"
    assert charge.amount is None and charge.currency is None  # no price table configured
    assert charge.entry_id and charge.entry_id.startswith("chg_")
    second = charge_usage(make_outcome(tid))
    assert second["charge"] == first["charge"]
    assert ledger.lrange(LEDGER, 0, -1) == [tid]
    entry = json.loads(ledger.hget(LEDGER_BY_TASK, tid))
    assert entry["metadata"] == {"end_user": "u-42"}
    assert entry["task_id"] == tid and isinstance(entry["ts"], float)


def test_concurrent_runs_write_exactly_one_entry(ledger: Any) -> None:
    """8 threads charge the same outcome at once: one entry, and all of them return it."""
    tid = new_id()
    barrier = threading.Barrier(8)
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            results.append(charge_usage(make_outcome(tid)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert len(results) == 8
    assert len({json.dumps(r["charge"], sort_keys=True) for r in results}) == 1
    assert ledger.lrange(LEDGER, 0, -1) == [tid]
    assert ledger.hlen(LEDGER_BY_TASK) == 1


def test_price_table_amount(ledger: Any, env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """108900 tokens at 5.00 per million is 0.5445, a Decimal string without exponent."""
    path = price_file(tmp_path, {MODEL: {"default": "5.00", "flex": "2.50"}, "*": {"default": "1"}})
    env.setenv("SEEDANCE_PRICE_TABLE", str(path))
    env.setenv("SEEDANCE_CURRENCY", "USD")
    reset_settings_cache()
    result = charge_usage(make_outcome(new_id()))
    assert result["charge"]["amount"] == "0.5445"
    assert result["charge"]["currency"] == "USD"
    flex = charge_usage(make_outcome(new_id(), tier="flex"))
    assert flex["charge"]["amount"] == "0.27225"
    other = charge_usage(make_outcome(new_id(), model="seedance-2-0-260101"))
    assert other["charge"]["amount"] == "0.1089"  # the "*" fallback
    unpriced = charge_usage(make_outcome(new_id(), model="seedance-2-0-260101", tier="flex"))
    assert unpriced["charge"]["amount"] is None and unpriced["charge"]["currency"] is None


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected an object"),
        ({MODEL: "5.00"}, "expected an object of service tier"),
        ({MODEL: {"default": "five"}}, "not a decimal number"),
        ({MODEL: {"default": "-1"}}, ">= 0"),
        ({MODEL: {"default": True}}, "decimal string"),
        ({MODEL: {"default": "NaN"}}, "finite"),
    ],
)
def test_bad_price_table_names_the_setting(tmp_path: Path, content: Any, problem: str) -> None:
    path = price_file(tmp_path, content)
    with pytest.raises(ConfigError) as err:
        load_price_table(path)
    assert "SEEDANCE_PRICE_TABLE" in str(err.value)
    assert problem in str(err.value)


def test_missing_price_table_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"SEEDANCE_PRICE_TABLE=.*cannot read"):
        load_price_table(tmp_path / "nope.json")


def test_bad_price_table_records_a_step_error_and_no_entry(
    ledger: Any, env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env.setenv("SEEDANCE_PRICE_TABLE", str(price_file(tmp_path, "{oops")))
    reset_settings_cache()
    tid = new_id()
    result = charge_usage(make_outcome(tid))
    assert result["charge"] is None
    err = result["step_errors"]["charge"]
    assert err["type"] == "ConfigError" and "SEEDANCE_PRICE_TABLE" in err["message"]
    assert ledger.hlen(LEDGER_BY_TASK) == 0


def test_list_ledger_totals(ledger: Any, env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("SEEDANCE_PRICE_TABLE", str(price_file(tmp_path, {"*": {"default": "5.00"}})))
    reset_settings_cache()
    ids = [new_id() for _ in range(3)]
    charge_usage(make_outcome(ids[0], tokens=108900))
    charge_usage(make_outcome(ids[1], tokens=100000))
    charge_usage(make_outcome(ids[2], tokens=None))  # succeeded without usage: tokens unknown
    charge_usage(make_outcome(ids[0], tokens=108900))  # a repeat changes nothing
    entries, totals = list_ledger(get_settings())
    assert [e["task_id"] for e in entries] == ids
    assert totals == {
        "count": 3,
        "completion_tokens": 208900,
        "total_tokens": 208900,
        "amount": {"USD": "1.0445"},
    }
    last, _ = list_ledger(get_settings(), limit=1)
    assert [e["task_id"] for e in last] == [ids[2]]


def test_not_succeeded_without_usage_passes_through(ledger: Any) -> None:
    """A job that ended without a video and without usage is charged nothing."""
    outcome = make_outcome(new_id(), status="failed", tokens=None)
    assert charge_usage(outcome) == outcome
    assert ledger.hlen(LEDGER_BY_TASK) == 0


def test_not_succeeded_with_usage_is_charged(ledger: Any) -> None:
    """A failed task the API reports usage for is billed by Ark, so it gets its entry."""
    tid = new_id()
    result = charge_usage(make_outcome(tid, status="failed", tokens=5000))
    assert result["charge"]["completion_tokens"] == 5000
    entry = json.loads(ledger.hget(LEDGER_BY_TASK, tid))
    assert entry["status"] == "failed" and entry["completion_tokens"] == 5000


def test_amount_formatting() -> None:
    assert compute_amount(108900, Decimal("5.00")) == "0.5445"
    assert compute_amount(1, Decimal("0.4")) == "0"  # 0.0000004 rounds to 0 at 6 places
    assert compute_amount(3, Decimal("1")) == "0.000003"
    assert compute_amount(200_000_000, Decimal("0.5")) == "100"
    assert compute_amount(None, Decimal("1")) is None
    assert format_amount(Decimal("1E+3")) == "1000"
    table = {MODEL: PriceBlock({"default": Decimal("2")}), "*": PriceBlock({"flex": Decimal("1")})}
    assert price_for(table, MODEL, None) == Decimal("2")
    assert price_for(table, MODEL, "flex") == Decimal("1")
    assert price_for(table, "other", "default") is None
