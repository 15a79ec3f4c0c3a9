"""A rolling upgrade strands no job: Redis state written by the single-folder layout finishes here.

``data/v1_inflight.json`` is what commit 96d59fa (before the floors) left in Redis for four jobs in
flight: one tracked and never polled (its countdown message in the queue), one polled four times by
an old worker that was then stopped (gen 5, status running, its message restored to the queue), and
two tracked together and parked for the dispatcher. Every key is restored as it was (the job hashes,
the due/parked/jobs indexes, the kombu queue with the old messages) and today's workers take over.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.result import AsyncResult

import seedance_worker
from seedance_worker.engine.store import get_store
from seedance_worker.testing.simulator import Simulator
from tests.support.env import clean_redis, reset_caches
from tests.support.workers import Workers

pytestmark = pytest.mark.slow

STATE = json.loads((Path(__file__).parent / "data" / "v1_inflight.json").read_text())


CAPTURED_AT = 1796194283.0  # about when the state was captured (2026-12-02)


def _moved(value: Any, shift_s: float) -> Any:
    """A Unix time of the capture moved by ``shift_s``; anything else as it was."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        return value
    return repr(t + shift_s) if 1.7e9 < t < 2e9 else value


def _restore(r: redis.Redis, keys: dict[str, Any]) -> None:
    # The jobs were tracked at capture time: restored days later as they were, their 48 h
    # deadlines would have passed. Every time in them moves to now, so the test does not age.
    shift_s = time.time() - CAPTURED_AT
    for key, item in keys.items():
        kind, value = item["type"], item["value"]
        if kind == "hash":
            r.hset(key, mapping={f: _moved(v, shift_s) for f, v in value.items()})
        elif kind == "zset":
            r.zadd(key, {member: float(_moved(score, shift_s)) for member, score in value})
        elif kind == "list":
            r.rpush(key, *value)
        elif kind == "set":
            r.sadd(key, *value)
        elif kind == "string":
            r.set(key, value)


@pytest.fixture
def old_state(env: pytest.MonkeyPatch, redis_url: str) -> Iterator[Simulator]:
    sim = Simulator().start()
    for task_id in STATE["jobs"].values():
        sim.add_task([("running", 1.5), ("succeeded", None)], task_id=task_id)
    env.setenv("SEEDANCE_API_BASE_URL", sim.base_url)
    reset_caches()
    clean_redis(redis_url)
    _restore(redis.Redis.from_url(redis_url, decode_responses=True), STATE["keys"])
    yield sim
    sim.stop()


def test_jobs_tracked_by_the_old_layout_finish_under_the_new(old_state: Simulator, tmp_path: Path) -> None:
    """Each of the four jobs keeps its chain's id, continues from its recorded generation, is polled
    by the new code, downloads its video and ends with one succeeded Outcome."""
    sim = old_state
    before = {tid: int(STATE["keys"][f"seedance:job:{tid}"]["value"]["gen"]) for tid in STATE["jobs"].values()}
    owners = {tid: STATE["keys"][f"seedance:job:{tid}"]["value"]["owner"] for tid in before}
    with Workers(tmp_path, n=2, concurrency=2):
        results = {tid: AsyncResult(owner, app=seedance_worker.app) for tid, owner in owners.items()}
        outcomes = {tid: res.get(timeout=60) for tid, res in results.items()}
        deadline = time.time() + 30
        while time.time() < deadline and any(get_store().get(t).state != "done" for t in before):  # type: ignore[union-attr]
            time.sleep(0.1)
    for tid, outcome in outcomes.items():
        assert outcome["status"] == "succeeded", outcome
        record = get_store().get(tid)
        assert record is not None and record.state == "done" and record.owner == owners[tid]
        assert record.gen > before[tid], "the new code continued the old generation, not a new chain"
        final = record.outcome or {}
        assert final.get("video") and Path(final["video"]["uri"].removeprefix("file://")).exists()
        assert sim.requests("get", task_id=tid), "the new workers polled it"
    polled = STATE["jobs"]["polled"]
    assert (get_store().get(polled).polls or 0) > 4  # type: ignore[union-attr]
