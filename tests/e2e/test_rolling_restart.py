"""A rolling restart of every worker (SIGTERM one by one) mid-run loses nothing, duplicates nothing,
and costs at most one extra poll per job."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import seedance_worker
from seedance_worker.engine.store import get_store
from seedance_worker.testing.simulator import SimConfig, Simulator
from tests.support.e2e_tasks import RECORD_KEY
from tests.support.env import configure
from tests.support.workers import Workers

pytestmark = pytest.mark.slow


@pytest.fixture
def fleet(env: pytest.MonkeyPatch, tmp_path: Path, redis_url: str) -> Iterator[tuple[Simulator, Workers]]:
    sim = Simulator(config=SimConfig()).start()
    configure(
        env,
        redis_url,
        api_base_url=sim.base_url,
        poll_min_interval_s="0.5",
        poll_max_interval_s="1.5",
        on_succeeded="tests.record_outcome",
        on_failed="tests.record_outcome",
    )
    ws = Workers(tmp_path, n=3, concurrency=2, extra_args=["--include", "tests.support.e2e_tasks"])
    with ws:
        yield sim, ws
    sim.stop()


def test_rolling_restart_loses_nothing(fleet: tuple[Simulator, Workers], redis_url: str) -> None:
    """60 jobs; each of the 3 workers gets SIGTERM in turn (waiting for its warm shutdown) and a
    replacement starts; every job ends right, its downstream runs once, and GETs <= polls + 1."""
    sim, ws = fleet
    # No beat here: a poll message lost in a warm shutdown (celery#4354: a BRPOP answer dropped
    # unread) is re-driven by the workers' own sweeper thread.
    ids = [sim.add_task([("queued", 2.0 + i % 5), ("running", 4.0 + i % 7), ("succeeded", None)]) for i in range(60)]
    results = [seedance_worker.track(t) for t in ids]
    time.sleep(2.0)
    shutdowns = []
    for old in list(ws.procs[:3]):
        t0 = time.time()
        old.stop(timeout_s=30)  # SIGTERM: warm shutdown, held countdown messages go back to the queue
        shutdowns.append(time.time() - t0)
        ws.spawn().wait_ready()
    assert all(res.get(timeout=90)["status"] == "succeeded" for res in results)

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    deadline = time.time() + 30
    while time.time() < deadline and (r.llen(RECORD_KEY) < len(ids) or any(
            get_store().get(t).state != "done" for t in ids)):  # type: ignore[union-attr]  # fmt: skip
        time.sleep(0.2)
    time.sleep(1.0)
    runs = Counter(json.loads(x)["task_id"] for x in r.lrange(RECORD_KEY, 0, -1))
    assert set(runs) == set(ids) and max(runs.values()) == 1
    gets = Counter(x.task_id for x in sim.requests(kind="get"))
    for tid in ids:
        rec = get_store().get(tid)
        assert rec is not None and rec.state == "done" and rec.handoff_fires == 1
        assert gets[tid] <= rec.polls + 1, (tid, gets[tid], rec.polls)
    assert max(shutdowns) < 10.0, shutdowns
    extra = sum(gets[t] - get_store().get(t).polls for t in ids)  # type: ignore[union-attr]
    print(f"rolling restart: warm shutdowns {[round(s, 1) for s in shutdowns]} s, {extra} extra GETs for 60 jobs")
