"""``ArkClient.list_tasks``: many tasks read with one list call (responses mocks, then the simulator)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from seedance_worker import errors
from seedance_worker.client import ArkClient
from seedance_worker.models import Status
from seedance_worker.testing.simulator import SimConfig, Simulator

BASE = "https://ark.example.test/api/v3"
KEY = "sk-unit-secret-key-987654321"
LIST_URL = f"{BASE}/contents/generations/tasks"
IDS = [f"cgt-20260805143012-a{i:04d}" for i in range(3)]


def client(max_body_bytes: int = 1024 * 1024) -> ArkClient:
    return ArkClient(BASE, KEY, connect_timeout_s=1, read_timeout_s=1, max_body_bytes=max_body_bytes)


def item(tid: str, status: str = "running", **extra: object) -> dict[str, object]:
    return {"id": tid, "status": status, "created_at": 1785911412, **extra}


def sent_query() -> dict[str, list[str]]:
    return parse_qs(urlsplit(responses.calls[0].request.url or "").query)


@responses.activate
def test_one_call_with_repeated_ids_returns_snapshots_by_id() -> None:
    """One GET: page 1, the page size, each id once as filter.task_ids, tier and model; a dict back."""
    responses.get(LIST_URL, json={"items": [item(IDS[1], "succeeded"), item(IDS[0])], "total": 2})
    found = client().list_tasks([IDS[0], IDS[1], IDS[0]], service_tier="flex", model="m-1", page_size=50)
    assert len(responses.calls) == 1
    q = sent_query()
    assert q["filter.task_ids"] == IDS[:2]
    assert (q["page_num"], q["page_size"], q["filter.service_tier"], q["filter.model"]) == (
        ["1"], ["50"], ["flex"], ["m-1"],
    )  # fmt: skip
    assert set(found) == set(IDS[:2])
    assert found[IDS[0]].status is Status.RUNNING and found[IDS[1]].is_terminal


@responses.activate
def test_missing_ids_are_absent_and_unasked_items_are_dropped() -> None:
    """An id the answer lacks is not in the dict; an item for an id nobody asked for is ignored."""
    stranger = "cgt-20260805143012-zzzzz"
    responses.get(LIST_URL, json={"items": [item(IDS[0]), item(stranger)], "total": 2})
    found = client().list_tasks(IDS)
    assert list(found) == [IDS[0]]
    assert "filter.service_tier" not in sent_query() and "filter.model" not in sent_query()


@pytest.mark.parametrize("status", [404, 405])
@responses.activate
def test_a_404_or_405_on_the_list_path_is_list_unsupported(status: int) -> None:
    """Not TaskNotFound (no task is gone): the API has no list; carries status and request id."""
    responses.get(LIST_URL, json={"error": {"code": "NotFound", "message": "no route"}}, status=status,
                  headers={"X-Request-Id": "021list"})  # fmt: skip
    with pytest.raises(errors.ListUnsupported) as info:
        client().list_tasks(IDS)
    exc = info.value
    assert not isinstance(exc, errors.TaskNotFound) and isinstance(exc, errors.UnexpectedStatus)
    assert (exc.status, exc.code, exc.request_id) == (status, "NotFound", "021list")
    assert KEY not in str(exc) and KEY not in repr(exc.args)


@pytest.mark.parametrize(
    ("status", "cls"),
    [(429, errors.RateLimited), (500, errors.ServerError), (401, errors.AuthenticationFailed),
     (400, errors.InvalidRequest), (403, errors.PermissionDenied)],
)  # fmt: skip
@responses.activate
def test_other_statuses_map_as_for_get(status: int, cls: type[Exception]) -> None:
    """The list call's errors are get_task's classes; a 429 keeps its Retry-After."""
    responses.get(LIST_URL, json={"error": {"code": "X", "message": "m"}}, status=status,
                  headers={"Retry-After": "7"})  # fmt: skip
    with pytest.raises(cls) as info:
        client().list_tasks(IDS)
    if isinstance(info.value, errors.RateLimited):
        assert info.value.retry_after_s == 7


@responses.activate
def test_the_body_cap_and_the_key_scrubbing_apply() -> None:
    """An answer over the cap is BadResponse; a key echoed in an item is redacted before parsing."""
    big = {"items": [item(t, pad="x" * 3000) for t in IDS], "total": 3}
    responses.get(LIST_URL, json=big)
    with pytest.raises(errors.BadResponse, match="MAX_BODY_BYTES"):
        client(max_body_bytes=4096).list_tasks(IDS)
    responses.replace(responses.GET, LIST_URL, json={"items": [
        item(IDS[0], "failed", error={"code": "E", "message": f"bad key {KEY}"})], "total": 1})  # fmt: skip
    snap = client().list_tasks(IDS)[IDS[0]]
    assert snap.error is not None and KEY not in (snap.error.message or "")
    assert "[redacted]" in (snap.error.message or "")


@responses.activate
def test_bad_arguments_make_no_call() -> None:
    """No ids: {} and no request; more ids than the page holds, a bad id or page size: InvalidRequest."""
    assert client().list_tasks([]) == {}
    with pytest.raises(errors.InvalidRequest, match="fit"):
        client().list_tasks(IDS, page_size=2)
    with pytest.raises(errors.InvalidRequest):
        client().list_tasks(["../etc/passwd"])
    with pytest.raises(errors.InvalidRequest):
        client().list_tasks(IDS, page_size=501)
    assert len(responses.calls) == 0


# ---- against the simulator --------------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(config=SimConfig(api_keys=frozenset({KEY}))) as s:
        yield s


def test_against_the_simulator_tiers_windows_and_a_refused_list(sim: Simulator) -> None:
    """100 ids in one call; flex ones only with service_tier="flex"; a refused list is ListUnsupported."""
    c = ArkClient(sim.base_url, KEY, connect_timeout_s=1, read_timeout_s=2)
    default = [sim.add_task([("running", None)]) for _ in range(99)] + [sim.add_task([("succeeded", None)])]
    flex = [sim.add_task([("queued", None)], service_tier="flex") for _ in range(2)]
    found = c.list_tasks(default)
    assert set(found) == set(default) and len(sim.requests("list")) == 1
    assert found[default[-1]].video_url and found[default[0]].status is Status.RUNNING
    assert set(c.list_tasks(default[:3] + flex)) == set(default[:3])
    assert set(c.list_tasks(default[:3] + flex, service_tier="flex")) == set(flex)
    sim.configure(list_refusal=405)
    with pytest.raises(errors.ListUnsupported) as info:
        c.list_tasks(default[:3])
    assert info.value.status == 405 and info.value.request_id
    assert c.get_task(default[0]).id == default[0]
