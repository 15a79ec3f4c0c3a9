"""Long waits are parked in Redis and published on time by the workers' dispatcher."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import chain

import seedance_worker
from seedance_worker.engine.store import get_store
from seedance_worker.keys import PARKED
from seedance_worker.testing.simulator import SimConfig, Simulator
from tests.support.e2e_tasks import CANVAS_KEY
from tests.support.env import configure
from tests.support.workers import Workers

pytestmark = pytest.mark.slow


@pytest.fixture
def parked(env: pytest.MonkeyPatch, tmp_path: Path, redis_url: str) -> Iterator[Simulator]:
    """Every wait over 0.4 s is parked; intervals of 0.6-1.0 s; one prefork worker."""
    sim = Simulator(config=SimConfig()).start()
    configure(
        env,
        redis_url,
        api_base_url=sim.base_url,
        poll_park_after_s="0.4",
        poll_min_interval_s="0.6",
        poll_queued_interval_s="1.0",
        poll_running_interval_s="0.8",
        dispatch_interval_s="0.2",
        on_succeeded="",
        on_failed="",
    )
    with Workers(tmp_path, n=1, concurrency=2, extra_args=["--include", "tests.support.e2e_tasks"]):
        yield sim
    sim.stop()


def test_parked_polls_run_on_time_and_jobs_finish(parked: Simulator, redis_url: str) -> None:
    """40 jobs whose waits are all parked finish; each GET comes close to its scheduled time."""
    sim = parked
    ids = [sim.add_task([("queued", 1.5), ("running", 2.0), ("succeeded", None)]) for _ in range(40)]
    results = [seedance_worker.track(t) for t in ids]
    r = redis.Redis.from_url(redis_url)
    seen_parked = 0
    deadline = time.time() + 60
    while time.time() < deadline and not all(res.ready() for res in results):
        seen_parked = max(seen_parked, r.zcard(PARKED))
        time.sleep(0.05)
    assert all(res.get(timeout=5)["status"] == "succeeded" for res in results)
    assert seen_parked >= 20, "the waits should have been parked in Redis, not held as countdowns"
    assert r.zcard(PARKED) == 0
    deadline = time.time() + 20
    while time.time() < deadline and any(get_store().get(t).state != "done" for t in ids):  # type: ignore[union-attr]
        time.sleep(0.1)
    for tid in ids:
        rec = get_store().get(tid)
        assert rec is not None and rec.state == "done"
        gets = [x.ts for x in sim.requests(kind="get") if x.task_id == tid]
        assert len(gets) == rec.polls
        gaps = [b - a for a, b in itertools.pairwise(gets)]
        # Never earlier than the schedule allows (how late they run is a benchmark: bench/inflight.py).
        assert min(gaps) >= 0.6 * 0.95, gaps


def test_a_parked_poll_keeps_the_callers_chain(parked: Simulator, redis_url: str) -> None:
    """chain(poll.s(id), step.s()) still runs the step once when the poll's waits were parked."""
    from tests.support.e2e_tasks import canvas_step

    tid = parked.add_task([("queued", 1.5), ("running", 1.5), ("succeeded", None)])
    res = chain(seedance_worker.poll.s(tid), canvas_step.s(tag="parked")).apply_async()
    assert res.get(timeout=30) == {"tag": "parked", "task_id": tid, "status": "succeeded"}
    time.sleep(0.5)
    steps = [json.loads(x) for x in redis.Redis.from_url(redis_url).lrange(CANVAS_KEY, 0, -1)]
    assert steps == [{"tag": "parked", "task_id": tid, "status": "succeeded"}]
    rec = get_store().get(tid)
    assert rec is not None and rec.polls >= 3 and rec.canvas is not None
