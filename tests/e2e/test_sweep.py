"""The sweeper re-drives jobs whose lease ran out; a poll that keeps crashing is ended."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import chain
from celery.result import AsyncResult

import seedance_worker
from seedance_worker.engine.store import get_store
from seedance_worker.engine.sweep import run_sweep
from seedance_worker.errors import GenerationFailed
from seedance_worker.keys import DUE, LAG
from seedance_worker.testing.simulator import Simulator
from tests.support.e2e_tasks import CANVAS_KEY
from tests.support.env import clean_redis, configure
from tests.support.workers import Workers


@pytest.fixture
def worker(sim: Simulator, env: pytest.MonkeyPatch, tmp_path: Path, redis_url: str) -> Iterator[Simulator]:
    configure(
        env,
        redis_url,
        on_succeeded="",
        on_failed="",
        # The test calls run_sweep() itself; the worker's own sweeper thread would race it.
        sweep_interval_s="3600",
    )
    with Workers(tmp_path, n=1, concurrency=2, extra_args=["--include", "tests.support.e2e_tasks"]):
        yield sim


def _lose_the_message(tid: str, redis_url: str) -> None:
    """Make the job look like its poll message died with a SIGKILLed worker: queue emptied, lease past."""
    r = redis.Redis.from_url(redis_url)
    r.delete("seedance.poll", "unacked", "unacked_index")
    r.zadd(DUE, {tid: time.time() - 1})


@pytest.mark.slow
def test_a_lost_poll_is_re_driven_with_the_current_generation(worker: Simulator, redis_url: str) -> None:
    """With its message gone, the sweeper publishes the poll again and the job still ends, once."""
    sim = worker
    tid = sim.add_task([("queued", 3.0), ("succeeded", None)])
    res = seedance_worker.track(tid)
    deadline = time.time() + 10
    while time.time() < deadline and (get_store().get(tid).polls or 0) < 1:  # type: ignore[union-attr]
        time.sleep(0.05)
    _lose_the_message(tid, redis_url)
    gen_before = get_store().get(tid).gen  # type: ignore[union-attr]
    assert run_sweep() == 1
    assert res.get(timeout=20)["status"] == "succeeded"
    rec = get_store().get(tid)
    assert rec is not None and rec.gen > gen_before and rec.state in ("handoff", "done")
    assert run_sweep(now=time.time()) == 0  # nothing overdue any more


@pytest.mark.slow
def test_a_re_driven_poll_keeps_the_callers_chain(worker: Simulator, redis_url: str) -> None:
    """A poll started in chain(poll.s(id), step.s()) keeps its chain when the sweeper re-drives it."""
    from tests.support.e2e_tasks import canvas_step

    tid = worker.add_task([("queued", 3.0), ("succeeded", None)])
    res = chain(seedance_worker.poll.s(tid), canvas_step.s(tag="swept")).apply_async()
    deadline = time.time() + 10
    while time.time() < deadline and not (get_store().get(tid) and get_store().get(tid).polls):  # type: ignore[union-attr]
        time.sleep(0.05)
    _lose_the_message(tid, redis_url)
    assert run_sweep() == 1
    assert res.get(timeout=20) == {"tag": "swept", "task_id": tid, "status": "succeeded"}
    steps = [json.loads(x) for x in redis.Redis.from_url(redis_url).lrange(CANVAS_KEY, 0, -1)]
    assert steps == [{"tag": "swept", "task_id": tid, "status": "succeeded"}]


def test_a_poll_that_keeps_crashing_its_worker_is_ended(sim: Simulator, redis_url: str) -> None:
    """After SEEDANCE_POLL_MAX_CRASHES starts that never finished, the next run ends the job as
    failed with the reason recorded, without calling the API."""
    clean_redis(redis_url)
    tid = sim.add_task([("running", None)])
    seedance_worker.track(tid, on_failed=[])
    store = get_store()
    for _ in range(5):  # five runs that began and died (SIGKILL, OOM) before advancing the job
        verdict = store.begin(tid, 1, lease_at=time.time() + 60, max_crashes=5).verdict
        assert verdict == "ok"
    sim.clear_log()
    with pytest.raises(GenerationFailed) as info:
        seedance_worker.poll.apply(args=(tid,), kwargs={"options": {"gen": 1}}, throw=True)
    assert info.value.outcome.status == "failed"
    assert info.value.outcome.error == {"code": "PollCrashed", "message": "poll crashed its worker 5 times"}
    rec = store.get(tid)
    assert rec is not None and rec.state in ("handoff", "done") and rec.end_reason == "PollCrashed"
    assert sim.requests(kind="get") == []


@pytest.mark.slow
def test_workers_re_drive_a_lost_poll_without_beat(
    sim: Simulator, env: pytest.MonkeyPatch, tmp_path: Path, redis_url: str
) -> None:
    """No beat, nobody calling run_sweep(): the workers' own sweeper thread re-drives a job whose
    poll message is gone, under the chain's own Celery id."""
    configure(env, redis_url, on_succeeded="", on_failed="", sweep_interval_s="0.5")
    with Workers(tmp_path, n=1, concurrency=2):
        tid = sim.add_task([("queued", 1.0), ("succeeded", None)])
        owner = str(uuid.uuid4())
        # A job whose only poll message was lost: registered, lease already past, nothing queued
        # and nothing held by any worker (a killed worker's message, a Redis that lost its queue).
        now = time.time()
        get_store().register(tid, owner, now=now, lease_at=now - 1, fields={})
        assert AsyncResult(owner).get(timeout=20)["status"] == "succeeded"
        rec = get_store().get(tid)
        assert rec is not None and rec.state in ("handoff", "done") and rec.gen > 1
        logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
        assert f"sweep {tid}: lease ran out at gen=1; re-driving the poll" in logs


def test_a_backlogged_queue_is_not_taken_for_lost_messages(redis_url: str) -> None:
    """A lease past its deadline by less than the lag polls are starting with (a queue backlog) is
    left alone; without that lag the same job is re-driven."""
    clean_redis(redis_url)
    store = get_store()
    now = time.time()
    store.register("cgt-lagging-job", "celery-id-1", now=now - 30, lease_at=now - 3, fields={})
    # Another job's poll starts 10 s after its due time: the queue is 10 s behind.
    store.register("cgt-other-job", "celery-id-2", now=now, lease_at=now + 60, fields={})
    verdict = store.begin("cgt-other-job", 1, lease_at=now + 60, max_crashes=5, lag_s=10.0).verdict
    assert verdict == "ok" and 9.9 < store.fleet_lag_s() <= 10.0
    assert run_sweep() == 0
    assert run_sweep(now=time.time() + 8) == 1  # 11 s past its deadline: lost after all
    redis.Redis.from_url(redis_url).delete(LAG)
    store.register("cgt-lagging-2", "celery-id-3", now=now - 30, lease_at=now - 3, fields={})
    assert store.fleet_lag_s() == 0.0
    assert run_sweep() == 1  # no lag reported: 3 s past the deadline is lost
