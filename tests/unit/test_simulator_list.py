"""The simulator's list endpoint as a multi-id read: paging up to 500, repeated ids, hidden flex,
the 7-day window, a refused list (a gateway without it) and a rate limit of its own."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import requests

from seedance_worker.testing.simulator import SimConfig, Simulator

TASKS = "/contents/generations/tasks"
MODEL_15 = "seedance-1-5-pro-251215"
MODEL_20 = "dreamina-seedance-2-0-260128"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(config=SimConfig(queued_s=60, running_s=60)) as s:
        yield s


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.headers["Authorization"] = "Bearer test-key"
        yield s


def listing(
    http: requests.Session, sim: Simulator, ids: Sequence[str] = (), **params: Any
) -> requests.Response:
    query = [("filter.task_ids", i) for i in ids] + [
        (k.replace("__", "."), str(v)) for k, v in params.items()
    ]
    return http.get(sim.base_url + TASKS, params=query)


def error_code(resp: requests.Response) -> str:
    code: str = resp.json()["error"]["code"]
    return code


def test_repeated_ids_page_size_up_to_500_and_total_before_paging(
    sim: Simulator, http: requests.Session
) -> None:
    """120 ids in one call: page_size 500 returns all, 100 pages them; total counts every match."""
    ids = [sim.add_task([("queued", None)]) for _ in range(120)]
    others = [sim.add_task([("queued", None)]) for _ in range(5)]
    body = listing(http, sim, ids, page_size=500).json()
    assert body["total"] == 120 and {t["id"] for t in body["items"]} == set(ids)
    assert all(t["status"] == "queued" and "created_at" in t for t in body["items"])
    first = listing(http, sim, ids, page_size=100).json()
    second = listing(http, sim, ids, page_size=100, page_num=2).json()
    assert (len(first["items"]), len(second["items"]), first["total"], second["total"]) == (100, 20, 120, 120)
    assert {t["id"] for t in first["items"] + second["items"]} == set(ids)
    assert listing(http, sim, []).json()["total"] == 125  # no id filter: every task (default page of 10)
    assert len(listing(http, sim, []).json()["items"]) == 10
    assert listing(http, sim, others[:2], page_size=500).json()["total"] == 2


def test_items_are_the_get_object_and_the_status_filter_narrows(
    sim: Simulator, http: requests.Session
) -> None:
    """A listed item is what GET answers (video URL, usage); filter.status applies with the ids."""
    done = sim.add_task([("succeeded", None)])
    waiting = sim.add_task([("queued", None)])
    items = {t["id"]: t for t in listing(http, sim, [done, waiting], page_size=100).json()["items"]}
    got = http.get(f"{sim.base_url}{TASKS}/{done}").json()
    assert items[done] == got and items[done]["content"]["video_url"] and items[done]["usage"]
    only = listing(http, sim, [done, waiting], filter__status="queued").json()
    assert [t["id"] for t in only["items"]] == [waiting] and only["total"] == 1


def test_flex_is_listed_only_with_the_flex_tier_filter(sim: Simulator, http: requests.Session) -> None:
    """The same ids, asked without and with filter.service_tier=flex: each tier's tasks only."""
    default = sim.add_task([("running", None)])
    flex = sim.add_task([("running", None)], service_tier="flex")
    assert [t["id"] for t in listing(http, sim, [default, flex]).json()["items"]] == [default]
    body = listing(http, sim, [default, flex], filter__service_tier="flex").json()
    assert [t["id"] for t in body["items"]] == [flex] and body["items"][0]["service_tier"] == "flex"
    assert listing(http, sim, [default, flex], filter__service_tier="default").json()["total"] == 1


def test_model_filter_and_a_key_that_must_name_the_model(sim: Simulator, http: requests.Session) -> None:
    """filter.model narrows; with list_requires_model a list without it is a 400 naming the param."""
    a = sim.add_task([("queued", None)], model=MODEL_15)
    b = sim.add_task([("queued", None)], model=MODEL_20)
    assert [t["id"] for t in listing(http, sim, [a, b], filter__model=MODEL_20).json()["items"]] == [b]
    sim.configure(list_requires_model=True)
    refused = listing(http, sim, [a, b])
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "filter.model"
    assert listing(http, sim, [a, b], filter__model=MODEL_15).json()["total"] == 1


def test_list_covers_the_last_seven_days_only(http: requests.Session) -> None:
    """A task older than 7 days is still readable by GET (retention set longer) but not listed."""
    now = [1_800_000_000.0]
    cfg = SimConfig(retention_s=30 * 86400.0)
    with Simulator(config=cfg, clock=lambda: now[0]) as sim:
        old = sim.add_task([("succeeded", None)])
        now[0] += 7 * 86400 - 60
        new = sim.add_task([("succeeded", None)])
        assert listing(http, sim, [old, new]).json()["total"] == 2
        now[0] += 120  # old is now 7 days and a minute old
        assert [t["id"] for t in listing(http, sim, [old, new]).json()["items"]] == [new]
        assert http.get(f"{sim.base_url}{TASKS}/{old}").status_code == 200


@pytest.mark.parametrize(("status", "code"), [(404, "NotFound"), (405, "MethodNotAllowed")])
def test_a_refused_list_answers_like_a_gateway_without_it(
    sim: Simulator, http: requests.Session, status: int, code: str
) -> None:
    """list_refusal makes every list call a 404 or 405 (recorded as a list call); GET still works."""
    tid = sim.add_task([("queued", None)])
    sim.configure(list_refusal=status)
    resp = listing(http, sim, [tid])
    assert resp.status_code == status and error_code(resp) == code
    assert http.get(f"{sim.base_url}{TASKS}/{tid}").status_code == 200
    assert [r.status for r in sim.requests("list")] == [status]
    sim.configure(list_refusal=None)
    assert listing(http, sim, [tid]).json()["total"] == 1
    with pytest.raises(ValueError, match="list_refusal"):
        SimConfig(list_refusal=500)


def test_list_has_a_rate_limit_of_its_own(sim: Simulator, http: requests.Session) -> None:
    """list_rps_limit empties a bucket for list calls only: the third list is a 429, GETs pass."""
    tid = sim.add_task([("queued", None)])
    sim.configure(list_rps_limit=0.1, list_rps_burst=2)
    codes = [listing(http, sim, [tid]).status_code for _ in range(3)]
    limited = listing(http, sim, [tid])
    assert codes == [200, 200, 429] and limited.status_code == 429
    assert error_code(limited) == "RateLimitExceeded.EndpointRPMExceeded"
    assert int(limited.headers["Retry-After"]) >= 1
    assert all(http.get(f"{sim.base_url}{TASKS}/{tid}").status_code == 200 for _ in range(5))
    assert {r.fault for r in sim.requests("list") if r.status == 429} == {"list_rps_limit"}
    sim.configure(list_rps_limit=None)
    assert listing(http, sim, [tid]).status_code == 200
