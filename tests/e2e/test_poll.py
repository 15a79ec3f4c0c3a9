"""The poll loop end to end: real Redis, real prefork `celery -A seedance_worker worker` processes,
the simulator over HTTP."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import chain, chord, group

import seedance_worker
from seedance_worker.engine.store import get_store
from seedance_worker.errors import GenerationCancelled, GenerationExpired, GenerationFailed, TaskNotFound
from seedance_worker.testing.simulator import SimConfig, Simulator
from tests.support.e2e_tasks import CANVAS_KEY, RECORD_KEY
from tests.support.env import configure
from tests.support.workers import Workers, worker_env

pytestmark = pytest.mark.slow


@pytest.fixture
def e2e(env: pytest.MonkeyPatch, tmp_path: Path, redis_url: str) -> Iterator[tuple[Simulator, Workers]]:
    """The simulator plus two prefork workers (-c 2) whose downstream chain is a recording user task."""
    sim = Simulator(config=SimConfig(queued_s=0.3, running_s=0.6)).start()
    configure(
        env,
        redis_url,
        api_base_url=sim.base_url,
        on_succeeded="tests.record_outcome,tests.after_record",
        on_failed="tests.record_outcome",
    )
    with Workers(tmp_path, n=2, concurrency=2, extra_args=["--include", "tests.support.e2e_tasks"]) as ws:
        yield sim, ws
    sim.stop()


def _gets_by_task(sim: Simulator) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for rec in sim.requests(kind="get"):
        if rec.task_id:
            out[rec.task_id].append(rec.ts)
    return out


def test_200_jobs_mixed_fates_each_end_right_once(e2e: tuple[Simulator, Workers], redis_url: str) -> None:
    """200 jobs (succeeded, failed, expired, cancelled, unknown, undocumented status) end right, their
    downstream chain runs exactly once, and no GET reaches a job after its terminal poll."""
    sim, ws = e2e
    fates: dict[str, str] = {}
    for i in range(200):
        kind = i % 6
        if kind == 0 or kind == 1:
            tid = sim.add_task([("queued", 0.3), ("running", 0.8), ("succeeded", None)])
            fates[tid] = "succeeded"
        elif kind == 2:
            tid = sim.add_task([("queued", 0.2), ("running", 0.5), ("failed", None)], error_code="InternalServiceError")
            fates[tid] = "failed"
        elif kind == 3:
            tid = sim.add_task([("queued", 0.5), ("expired", None)])
            fates[tid] = "expired"
        elif kind == 4:
            tid = sim.add_task([("queued", 0.4), ("cancelled", None)])
            fates[tid] = "cancelled"
        else:
            if i % 12 == 5:
                tid = f"cgt-20990101{i:06d}-zzzzz"
                fates[tid] = "not_found"
            else:
                tid = sim.add_task([("queued", 0.2), ("preprocessing", 1.0), ("running", 0.3), ("succeeded", None)])
                fates[tid] = "succeeded"
    results = {tid: seedance_worker.track(tid, metadata={"n": n}) for n, tid in enumerate(fates)}
    expected_exc = {"failed": GenerationFailed, "expired": GenerationExpired, "cancelled": GenerationCancelled,
                    "not_found": TaskNotFound}  # fmt: skip
    for tid, res in results.items():
        if not res.ready():
            try:
                res.get(timeout=60, propagate=False)
            except Exception as exc:
                rec = get_store().get(tid)
                rr = redis.Redis.from_url(redis_url)
                keys = {k.decode(): rr.type(k).decode() for k in rr.keys("*") if not k.startswith(b"seedance:job")}
                qs = {k: rr.llen(k) for k, t in keys.items() if t == "list"}
                pytest.fail(f"{tid} ({fates[tid]}) did not end: {exc!r}; keys {sorted(keys)[:40]} lists {qs}; "
                            f"app {seedance_worker.poll.app} {seedance_worker.poll.app.conf.broker_url}; record {rec}; "
                            f"sim {sim.task(tid)}; log tail: {ws.logs()[-4000:]}")
        if fates[tid] == "succeeded":
            outcome = res.get(timeout=60)
            assert outcome["status"] == "succeeded" and outcome["task_id"] == tid
            assert outcome["snapshot"]["usage"]["completion_tokens"] > 0
        else:
            with pytest.raises(expected_exc[fates[tid]]) as info:
                res.get(timeout=60)
            assert type(info.value) is expected_exc[fates[tid]]
            assert info.value.outcome.status == fates[tid] and info.value.outcome.task_id == tid

    # Downstream: exactly one run of the configured chain per job (and its second step once).
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    n_succeeded = sum(f == "succeeded" for f in fates.values())
    deadline = time.time() + 60
    while time.time() < deadline and (
        r.llen(RECORD_KEY) < len(fates) or r.llen(RECORD_KEY + ":after") < n_succeeded
    ):
        time.sleep(0.2)
    time.sleep(1.0)  # let any duplicate show up
    runs = Counter(json.loads(x)["task_id"] for x in r.lrange(RECORD_KEY, 0, -1))
    assert set(runs) == set(fates) and max(runs.values()) == 1, runs.most_common(3)
    after = [json.loads(x) for x in r.lrange(RECORD_KEY + ":after", 0, -1)]
    assert len(after) == n_succeeded
    assert all(a["enriched_by"] == "tests.record_outcome" for a in after)

    # Job records: done, with the right status; and no GET after the terminal poll.
    store = get_store()
    deadline = time.time() + 30
    while time.time() < deadline and any(store.get(t).state != "done" for t in fates):  # type: ignore[union-attr]
        time.sleep(0.2)
    gets = _gets_by_task(sim)
    for tid, fate in fates.items():
        rec = store.get(tid)
        assert rec is not None and rec.state == "done" and rec.status == fate, (tid, rec)
        assert rec.handoff == "done" and rec.handoff_fires == 1
        if fate == "not_found":
            assert len(gets[tid]) == 1
            continue
        terminal_at = sim.task(tid)["terminal_at"]  # type: ignore[index]
        after_end = [t for t in gets[tid] if t >= terminal_at]
        assert len(after_end) == 1, (tid, fate, gets[tid], terminal_at)
        assert rec.polls == len(gets[tid])


def test_canvas_chain_group_and_chord(e2e: tuple[Simulator, Workers], redis_url: str) -> None:
    """chain(poll.s(id), user.s()) runs user once with the Outcome; group and chord of polls work."""
    sim, _ = e2e
    a = sim.add_task([("queued", 0.2), ("running", 0.4), ("succeeded", None)])
    b = sim.add_task([("queued", 0.3), ("succeeded", None)])
    c = sim.add_task([("running", 0.5), ("succeeded", None)])
    from tests.support.e2e_tasks import canvas_step, collect

    res = chain(seedance_worker.poll.s(a), canvas_step.s(tag="chain")).apply_async(expires=2)
    assert res.get(timeout=30) == {"tag": "chain", "task_id": a, "status": "succeeded"}
    g = group(seedance_worker.poll.s(b), seedance_worker.poll.s(c)).apply_async()
    assert sorted(o["task_id"] for o in g.get(timeout=30)) == sorted([b, c])
    d = sim.add_task([("queued", 0.2), ("succeeded", None)])
    e = sim.add_task([("queued", 0.4), ("succeeded", None)])
    ch = chord([seedance_worker.poll.s(d), seedance_worker.poll.s(e)], collect.s()).apply_async()
    assert ch.get(timeout=30) == sorted([d, e])
    time.sleep(1.0)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    steps = [json.loads(x) for x in r.lrange(CANVAS_KEY, 0, -1)]
    assert steps == [{"tag": "chain", "task_id": a, "status": "succeeded"}]  # once, despite expires=2

    f = sim.add_task([("queued", 0.2), ("failed", None)], error_code="OutputVideoSensitiveContentDetected")
    with pytest.raises(GenerationFailed) as info:
        seedance_worker.track(f).get(timeout=30)
    assert info.value.outcome.status == "failed"
    assert info.value.outcome.error == {"code": "OutputVideoSensitiveContentDetected",
                                        "message": info.value.outcome.error["message"]}  # type: ignore[index]


def test_track_five_times_concurrently_gives_one_chain(e2e: tuple[Simulator, Workers]) -> None:
    """Five concurrent track() calls: one chain, the same handle, one GET per scheduled poll."""
    sim, _ = e2e
    tid = sim.add_task([("queued", 0.5), ("running", 1.0), ("succeeded", None)])
    handles: list[str] = []
    barrier = threading.Barrier(5)

    def go() -> None:
        barrier.wait()
        handles.append(seedance_worker.track(tid).id)

    threads = [threading.Thread(target=go) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(handles)) == 1
    outcome = seedance_worker.track(tid).get(timeout=30)
    assert outcome["status"] == "succeeded"
    rec = get_store().get(tid)
    assert rec is not None
    gets = _gets_by_task(sim)[tid]
    assert len(gets) == rec.polls == outcome["polls"]
    gaps = [b - a for a, b in itertools.pairwise(gets)]
    assert min(gaps) >= 0.2 * 0.9  # never two polls closer than the minimum interval


def test_retry_after_is_honoured(e2e: tuple[Simulator, Workers]) -> None:
    """A job answered 429 Retry-After: 3 gets no GET before 3 s have passed."""
    sim, _ = e2e
    tid = sim.add_task([("queued", 0.5), ("running", 0.5), ("succeeded", None)])
    sim.rate_limit_task(tid, retry_after_s=3, until=time.time() + 1.0)
    outcome = seedance_worker.track(tid).get(timeout=30)
    assert outcome["status"] == "succeeded"
    recs = [x for x in sim.requests(kind="get") if x.task_id == tid]
    limited = [x for x in recs if x.status == 429]
    assert limited, "the simulator should have answered 429 at least once"
    for lim in limited:
        later = [x.ts for x in recs if x.ts > lim.ts]
        assert later and min(later) - lim.ts >= 3.0, (lim.ts, later[:3])


def test_worker_refuses_a_countdown_cap_near_the_visibility_timeout(tmp_path: Path) -> None:
    """`celery -A seedance_worker worker` exits non-zero, naming both settings."""
    env = worker_env()
    env.update({"SEEDANCE_POLL_COUNTDOWN_CAP_S": "50", "SEEDANCE_VISIBILITY_TIMEOUT_S": "60"})
    out = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "seedance_worker", "worker", "-P", "solo", "--without-mingle",
         "--without-gossip", "--without-heartbeat"],
        env=env, capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
    )  # fmt: skip
    assert out.returncode != 0
    assert "refusing to start" in out.stderr
    assert "SEEDANCE_POLL_COUNTDOWN_CAP_S" in out.stderr and "SEEDANCE_VISIBILITY_TIMEOUT_S" in out.stderr
