"""Progress of a job in flight: the poll's POLLING state and the on_status_change hook."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery.result import AsyncResult

import seedance_worker
from seedance_worker.engine.progress import POLLING
from seedance_worker.testing.simulator import SimConfig, Simulator
from tests.support.e2e_tasks import STATUS_KEY
from tests.support.env import configure
from tests.support.workers import Workers

pytestmark = pytest.mark.slow

SCRIPT = [("queued", 1.5), ("running", 1.5), ("succeeded", None)]


@pytest.fixture(params=["get", "batch"])
def sim(
    request: pytest.FixtureRequest, env: pytest.MonkeyPatch, tmp_path: Path, redis_url: str
) -> Iterator[Simulator]:
    """Per-job GETs, and batched status (the default), whose rounds report progress with no poll."""
    sim = Simulator(config=SimConfig()).start()
    configure(env, redis_url, api_base_url=sim.base_url, on_succeeded="", on_failed="",
              on_status_change="tests.status_hook", status_source=request.param, batch_round_s="0.5",
              batch_queued_interval_s="0.5")  # fmt: skip
    try:
        with Workers(tmp_path, n=1, concurrency=2, extra_args=["--include", "tests.support.e2e_tasks"]):
            yield sim
    finally:
        sim.stop()


def _sample(handles: list[AsyncResult], until_s: float) -> dict[str, list[tuple[str, dict[str, object]]]]:
    """(state, info) of every handle, every 50 ms, until all are ready."""
    seen: dict[str, list[tuple[str, dict[str, object]]]] = defaultdict(list)
    deadline = time.monotonic() + until_s
    while time.monotonic() < deadline and not all(h.ready() for h in handles):
        for h in handles:
            # One read of state and info together: read apart, a job ending in between gives
            # POLLING with the final Outcome as its info.
            meta = h.backend.get_task_meta(h.id)
            state, info = meta["status"], meta["result"]
            if state == POLLING:
                seen[h.id].append((state, dict(info)))
        time.sleep(0.05)
    return seen


def test_polling_state_and_one_hook_run_per_transition(sim: Simulator, redis_url: str) -> None:
    """10 jobs queued -> running -> succeeded: each handle reads POLLING with the remote status
    (queued, then running) and its poll count while in flight, SUCCESS at the end; the hook ran
    once per transition: (none) -> queued and queued -> running, in that order, for each job."""
    tids = [sim.add_task(SCRIPT) for _ in range(10)]
    handles = [seedance_worker.track(t) for t in tids]
    seen = _sample(handles, 60)
    for tid, h in zip(tids, handles, strict=True):
        assert h.get(timeout=30)["status"] == "succeeded" and h.state == "SUCCESS"
        infos = [info for _, info in seen[h.id]]
        statuses = [i["status"] for i in infos]
        assert "queued" in statuses and "running" in statuses, (tid, statuses)
        assert statuses.index("running") > statuses.index("queued")
        assert all(i["task_id"] == tid for i in infos)
        polls = [int(i["polls"]) for i in infos]  # type: ignore[call-overload]
        assert polls == sorted(polls) and polls[-1] >= 2
        assert all(float(i["next_due_at"]) > 0 for i in infos)  # type: ignore[arg-type]
    time.sleep(1.0)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    changes: dict[str, list[tuple[str | None, str]]] = defaultdict(list)
    for raw in r.lrange(STATUS_KEY, 0, -1):
        c = json.loads(raw)
        changes[c["task_id"]].append((c["from"], c["to"]))
    for tid in tids:
        assert changes[tid] == [(None, "queued"), ("queued", "running")], (tid, changes[tid])
