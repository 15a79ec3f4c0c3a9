"""The client against the simulator over a real socket: endpoints, errors, request ids, no key leaks."""

from __future__ import annotations

import time
from typing import Any

import pytest

from seedance_worker import errors
from seedance_worker.client import ArkClient
from seedance_worker.models import Status
from seedance_worker.testing.simulator import SimConfig, Simulator

KEY = "sk-live-SECRET-0123456789abcdef"


@pytest.fixture
def server() -> Any:
    with Simulator(config=SimConfig(queued_s=0.05, running_s=0.1, api_keys=frozenset({KEY}))) as s:
        yield s


def mk(server: Simulator, key: str = KEY, read_timeout_s: float = 2.0) -> ArkClient:
    return ArkClient(server.base_url, key, connect_timeout_s=1, read_timeout_s=read_timeout_s)


def no_key(exc: BaseException) -> None:
    for text in (str(exc), repr(exc), repr(exc.args)):
        assert KEY not in text


def test_create_get_list_delete(server: Simulator) -> None:
    """create -> get -> list (ids, status, model, paging) -> delete, over HTTP."""
    c = mk(server)
    body = {"model": "seedance-1-5-pro-251215", "content": [{"type": "text", "text": "a cat"}]}
    ids = [c.create_task(body) for _ in range(3)]
    assert all(i.startswith("cgt-") for i in ids)
    snap = c.get_task(ids[0])
    assert snap.id == ids[0] and snap.status in (Status.QUEUED, Status.RUNNING, Status.SUCCEEDED)
    time.sleep(0.3)
    done = c.get_task(ids[0])
    assert done.status is Status.SUCCEEDED and done.video_url and done.usage and done.usage.completion_tokens
    lst = c.list_page(task_ids=ids[:2])
    assert lst.total == 2 and {i.id for i in lst.items} == set(ids[:2])
    assert c.list_page(status="succeeded", model="seedance-1-5-pro-251215").total == 3
    page = c.list_page(page_size=2, page_num=2)
    assert page.total == 3 and len(page.items) == 1
    c.delete_task(ids[0])
    with pytest.raises(errors.TaskNotFound):
        c.get_task(ids[0])


def test_error_classes_over_the_wire(server: Simulator) -> None:
    """400, 401, 404, 429 (Retry-After 7), 500, timeout and malformed bodies map to their classes."""
    c = mk(server)
    tid = server.add_task([("queued", None)])
    with pytest.raises(errors.InvalidRequest) as bad:
        c._request("POST", "/contents/generations/tasks", json_body={"model": "m", "content": [],
                                                                      "execution_expires_after": 5})  # fmt: skip
    assert bad.value.status == 400 and bad.value.request_id and bad.value.code
    with pytest.raises(errors.AuthenticationFailed) as auth:
        mk(server, key="wrong-key").get_task(tid)
    assert auth.value.status == 401 and auth.value.request_id
    with pytest.raises(errors.TaskNotFound) as nf:
        c.get_task("cgt-20990101000000-zzzzz")
    assert nf.value.status == 404 and nf.value.request_id and nf.value.request_id in nf.value.message
    server.rate_limit_task(tid, retry_after_s=7, until=time.time() + 5)
    with pytest.raises(errors.RateLimited) as rl:
        c.get_task(tid)
    assert rl.value.retry_after_s == 7 and rl.value.request_id
    server.clear_rate_limits()
    server.configure(error_rate_5xx=1.0)
    with pytest.raises(errors.ServerError) as five:
        c.get_task(tid)
    assert five.value.status == 500 and five.value.request_id
    server.configure(error_rate_5xx=0.0, malformed_rate=1.0)
    with pytest.raises(errors.BadResponse) as mal:
        c.get_task(tid)
    assert mal.value.request_id
    server.configure(malformed_rate=0.0, timeout_rate=1.0, timeout_sleep_s=1.0)
    with pytest.raises(errors.RequestTimeout):
        mk(server, read_timeout_s=0.3).get_task(tid)
    for exc in (bad.value, auth.value, nf.value, rl.value, five.value, mal.value):
        no_key(exc)


def test_create_timeout_is_ambiguous_and_not_reposted(server: Simulator) -> None:
    """A create whose answer times out raises SubmitAmbiguous after one POST (the task was made)."""
    server.configure(timeout_rate=1.0, timeout_sleep_s=1.0)
    with pytest.raises(errors.SubmitAmbiguous) as info:
        mk(server, read_timeout_s=0.3).create_task(
            {"model": "seedance-1-5-pro-251215", "content": [{"type": "text", "text": "x"}]}
        )
    no_key(info.value)
    time.sleep(1.0)
    assert len(server.requests(kind="create")) == 1
    assert len(server.tasks()) == 1  # the server did make it: posting again would pay twice


def test_unreachable_base_url_is_a_connection_error() -> None:
    """Nothing listening: ConnectionFailed, retryable, no key in the message."""
    c = ArkClient("http://127.0.0.1:9/api/v3", KEY, connect_timeout_s=0.5, read_timeout_s=0.5)
    with pytest.raises(errors.ConnectionFailed) as info:
        c.get_task("cgt-20990101000000-zzzzz")
    assert isinstance(info.value, errors.RetryableError)
    no_key(info.value)
