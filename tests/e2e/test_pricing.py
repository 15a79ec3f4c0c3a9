"""Exact pricing with real prefork workers against the simulator (issue 15, item 2).

Four jobs submitted with ``reserve=True``: Seedance 2.0 without and with a reference video (7.7 and
4.7 per million tokens), and 1.5 pro on the default and the flex tier (flex half price; 2.0 has no
flex tier). Each ledger entry carries the price that applied; the estimate made at submit equals the
final charge on the simulator's usage; the reservations are settled. A job that fails without usage
charges nothing and frees its reservation; one the API reports usage for is charged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import seedance_worker
from seedance_worker import errors
from seedance_worker.engine.store import get_store
from seedance_worker.steps.ledger import get_entry, get_reservation, list_reservations
from seedance_worker.testing.simulator import SimConfig, Simulator
from tests.support.env import configure
from tests.support.waiting import wait_for
from tests.support.workers import Workers

pytestmark = pytest.mark.slow

V20 = "dreamina-seedance-2-0-260128"
PRO15 = "seedance-1-5-pro-251215"
PRICES = {
    V20: {"default": "7.7", "video_input": {"default": "4.7"}},
    PRO15: {"default": "2.4", "flex": "1.2"},
}
TEXT = [{"type": "text", "text": "a red fox in snow"}]
VIDEO = [
    *TEXT,
    {"type": "video_url", "video_url": {"url": "https://x.test/ref.mp4"}, "role": "reference_video"},
]
# name: (model, content, create fields, price per million, price rule)
JOBS: dict[str, tuple[str, list[dict[str, Any]], dict[str, Any], str, str]] = {
    "2.0 text": (V20, TEXT, {"resolution": "720p", "ratio": "16:9", "duration": 5}, "7.7", f"{V20}/default"),
    "2.0 video": (V20, VIDEO, {"resolution": "720p", "ratio": "16:9", "duration": 5}, "4.7",
                  f"{V20}/video_input/default"),
    "1.5 default": (PRO15, TEXT, {"resolution": "480p", "ratio": "4:3", "duration": 6}, "2.4", f"{PRO15}/default"),
    "1.5 flex": (PRO15, TEXT, {"resolution": "480p", "ratio": "4:3", "duration": 6, "service_tier": "flex"},
                 "1.2", f"{PRO15}/flex"),
}  # fmt: skip


@pytest.fixture
def fleet(env: pytest.MonkeyPatch, tmp_path: Path, redis_url: str) -> Iterator[Simulator]:
    sim = Simulator(config=SimConfig(queued_s=0.3, running_s=0.6)).start()
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(PRICES))
    configure(env, redis_url, api_base_url=sim.base_url, price_table=str(prices), currency="USD",
              download_dir=str(tmp_path / "videos"))  # fmt: skip
    try:
        with Workers(tmp_path, n=1, concurrency=2):
            yield sim
    finally:
        sim.stop()


def test_four_jobs_carry_their_price_and_the_estimate_is_the_final_charge(fleet: Simulator) -> None:
    sim = fleet
    submitted = {
        name: seedance_worker.submit(model, content, reserve=True, metadata={"job": name}, **fields)
        for name, (model, content, fields, _, _) in JOBS.items()
    }
    ids = {name: remote_id for name, (remote_id, _) in submitted.items()}
    reserved = {x["task_id"]: x for x in list_reservations()}
    assert set(ids.values()) <= set(reserved)
    # The estimate is available at submit: in the job record (Outcome.submitted) and the reservation.
    estimates = {}
    for name, tid in ids.items():
        record = get_store().get(tid)
        assert record is not None and record.submitted is not None
        estimates[name] = record.submitted["estimate"]
        assert reserved[tid]["amount"] == estimates[name]["amount"]
    assert estimates["2.0 text"]["tokens"] == 108_900  # 121 frames of 1280x720: the seed example
    assert estimates["1.5 default"]["tokens"] == (6 * 24 + 1) * 752 * 560 // 1024

    for name, (_, result) in submitted.items():
        outcome = result.get(timeout=60)
        assert outcome["status"] == "succeeded" and outcome["video"], (name, outcome)

    for name, (model, content, _, price, rule) in JOBS.items():
        tid, est = ids[name], estimates[name]
        entry = get_entry(tid)
        assert entry is not None, name
        assert (entry["price_per_million"], entry["price_rule"], entry["model"]) == (price, rule, model), name
        assert entry["has_video_input"] is (content is VIDEO)
        assert entry["completion_tokens"] == sim.task(tid)["usage_tokens"] == est["tokens"], name  # type: ignore[index]
        assert entry["amount"] == est["amount"] == entry["reserved"]["amount"], name
        exact = Decimal(est["tokens"]) * Decimal(price) / 1_000_000
        assert Decimal(entry["amount"]) == exact.quantize(Decimal("0.000001")), name  # to the micro-unit
        assert get_reservation(tid) is None, name
    flex, default = get_entry(ids["1.5 flex"]), get_entry(ids["1.5 default"])
    assert flex is not None and default is not None and flex["service_tier"] == "flex"
    assert Decimal(flex["price_per_million"]) * 2 == Decimal(default["price_per_million"])  # flex: half price
    assert abs(Decimal(flex["amount"]) * 2 - Decimal(default["amount"])) <= Decimal("0.000001")
    print("\n" + "\n".join(f"{n}: {get_entry(t)['amount']} USD at {get_entry(t)['price_rule']}"  # type: ignore[index]
                           for n, t in ids.items()))  # fmt: skip


def test_a_job_without_a_video_charges_nothing_unless_the_api_reports_usage(fleet: Simulator) -> None:
    sim = fleet
    failed_id, result = seedance_worker.submit(V20, [{"type": "text", "text": "a fox [fail]"}], reserve=True)
    assert get_reservation(failed_id) is not None
    with pytest.raises(errors.GenerationFailed):
        result.get(timeout=60)
    wait_for(lambda: get_reservation(failed_id) is None, 30, "the reservation to be released")
    assert get_entry(failed_id) is None

    usage = {"usage": {"completion_tokens": 20_000, "total_tokens": 20_000}}
    billed = sim.add_task([("running", 0.3), ("failed", None)], model=V20, response_extra=usage)
    facts = {"model": V20, "service_tier": "default", "resolution": "720p", "has_video_input": False}
    with pytest.raises(errors.GenerationFailed):
        seedance_worker.track(billed, submitted=facts).get(timeout=60)
    entry = wait_for(lambda: get_entry(billed), 30, "the failed task's entry")
    assert (
        entry["status"] == "failed" and entry["amount"] == "0.154" and entry["price_rule"] == f"{V20}/default"
    )
