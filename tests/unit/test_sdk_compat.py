"""The official BytePlus SDK works against the simulator unchanged."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from seedance_worker.testing.simulator import SimConfig, Simulator

ark = pytest.importorskip("byteplussdkarkruntime")
ark_exc = pytest.importorskip("byteplussdkarkruntime._exceptions")

MODEL = "dreamina-seedance-2-0-260128"
CONTENT: list[dict[str, Any]] = [{"type": "text", "text": "a cat"}]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """A simulator with short timings."""
    with Simulator(config=SimConfig(queued_s=0.1, running_s=0.15)) as s:
        yield s


@pytest.fixture
def client(sim: Simulator) -> Any:
    """An SDK client pointed at the simulator, without SDK retries."""
    c = ark.Ark(base_url=sim.base_url, api_key="test-key", max_retries=0, timeout=10)
    yield c
    c.close()


def wait_status(client: Any, task_id: str, status: str, timeout: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.content_generation.tasks.get(task_id=task_id)
        if task.status == status:
            return task
        time.sleep(0.03)
    raise AssertionError(f"{task_id} never reached {status}")


def test_create_get_list_delete(sim: Simulator, client: Any) -> None:
    """create/get/list/delete round-trip through the SDK's own types."""
    tasks = client.content_generation.tasks
    created = tasks.create(model=MODEL, content=CONTENT, return_last_frame=True, safety_identifier="u_1")
    assert created.id.startswith("cgt-")
    queued = tasks.get(task_id=created.id)
    assert (queued.id, queued.model, queued.status) == (created.id, MODEL, "queued")
    assert queued.content is None and queued.usage is None and queued.error is None
    assert queued.execution_expires_after == 172800 and queued.service_tier == "default"

    done = wait_status(client, created.id, "succeeded")
    assert done.content.video_url.startswith(sim.url + "/files/")
    assert done.content.last_frame_url.split("?")[0].endswith(".png")
    assert done.usage.completion_tokens == 108900
    assert done.model_dump()["usage"]["total_tokens"] == 108900
    assert (done.resolution, done.ratio, done.duration, done.framespersecond) == ("720p", "16:9", 5, 24)
    assert done.safety_identifier == "u_1" and done.priority == 0 and done.generate_audio is True

    other = tasks.create(model=MODEL, content=CONTENT).id
    listed = tasks.list(task_ids=[created.id, other], status="succeeded", page_num=1, page_size=10)
    assert listed.total == 1 and [t.id for t in listed.items] == [created.id]
    both = tasks.list(task_ids=[created.id, other])
    assert both.total == 2 and [t.id for t in both.items] == [other, created.id]

    assert tasks.delete(task_id=other) is not None  # queued -> cancelled; the SDK returns an empty model
    assert tasks.get(task_id=other).status == "cancelled"
    tasks.delete(task_id=created.id)  # succeeded -> deleted
    with pytest.raises(ark_exc.ArkNotFoundError) as info:
        tasks.get(task_id=created.id)
    assert info.value.status_code == 404 and info.value.code == "ResourceNotFound"

    create_log = sim.requests(kind="create")[0]
    assert create_log.body["callback_url"] is None  # the SDK sends explicit nulls for unset kwargs
    assert "X-Client-Request-Id" in create_log.headers
    assert all(r.auth_present for r in sim.requests())


def test_sdk_error_mapping(sim: Simulator, client: Any) -> None:
    """Simulator error envelopes surface as the SDK's typed exceptions with code and param."""
    tasks = client.content_generation.tasks
    with pytest.raises(ark_exc.ArkBadRequestError) as bad:
        tasks.create(model=MODEL, content=CONTENT, execution_expires_after=60)
    assert bad.value.code == "InvalidParameter" and bad.value.param == "execution_expires_after"
    running = sim.add_task([("running", None)], model=MODEL)
    with pytest.raises(ark_exc.ArkPermissionDeniedError) as denied:
        tasks.delete(task_id=running)
    assert denied.value.code == "OperationDenied.InvalidState"
    sim.rate_limit_task(running, retry_after_s=5)
    with pytest.raises(ark_exc.ArkRateLimitError):
        tasks.get(task_id=running)
    sim.clear_rate_limits()
    sim.configure(error_rate_5xx=1.0)
    with pytest.raises(ark_exc.ArkInternalServerError):
        tasks.get(task_id=running)
    sim.configure(error_rate_5xx=0.0, api_keys=frozenset({"other-key"}))
    with pytest.raises(ark_exc.ArkAuthenticationError):
        tasks.get(task_id=running)


def test_flex_and_failed_through_sdk(sim: Simulator, client: Any) -> None:
    """A flex task is listed only with service_tier=flex; a failed task exposes error.code."""
    tasks = client.content_generation.tasks
    flex = tasks.create(model="seedance-1-5-pro-251215", content=CONTENT, service_tier="flex").id
    assert flex.startswith("cgt-batch-")
    assert tasks.list(task_ids=[flex]).total == 0
    assert [t.id for t in tasks.list(task_ids=[flex], service_tier="flex").items] == [flex]
    failed = tasks.create(model=MODEL, content=[{"type": "text", "text": "a cat [fail]"}]).id
    task = wait_status(client, failed, "failed")
    assert task.error.code == "OutputVideoSensitiveContentDetected"
