"""Batched status end to end: due jobs read with one list call per chunk, real prefork workers,
the simulator over HTTP. A job that ends gets its own poll message, so chains, groups and chords
behave as with per-job polls."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import chain, chord, group

import seedance_worker
from seedance_worker.engine.store import get_store
from seedance_worker.errors import GenerationFailed, TaskNotFound
from seedance_worker.testing.simulator import SimConfig, Simulator
from seedance_worker.track import track_many
from tests.support.e2e_tasks import canvas_step, collect
from tests.support.env import configure
from tests.support.waiting import wait_for
from tests.support.workers import Workers

pytestmark = pytest.mark.slow

SCRIPT = [("queued", 0.5), ("running", 1.0), ("succeeded", None)]


@pytest.fixture
def batch_env(env: pytest.MonkeyPatch, redis_url: str) -> Iterator[Simulator]:
    sim = Simulator(config=SimConfig()).start()
    configure(env, redis_url, api_base_url=sim.base_url, status_source="batch", batch_round_s="0.5",
              batch_queued_interval_s="1", on_succeeded="", on_failed="")  # fmt: skip
    try:
        yield sim
    finally:
        sim.stop()


def _workers(tmp_path: Path, n: int = 2) -> Workers:
    return Workers(tmp_path, n=n, concurrency=2, extra_args=["--include", "tests.support.e2e_tasks"])


def test_forty_jobs_are_read_in_list_calls_and_end_once(batch_env: Simulator, tmp_path: Path) -> None:
    """40 jobs tracked together: their status comes from list calls (a few per round, not one GET per
    job per poll); each ends succeeded exactly once, with no read of any after its end."""
    sim = batch_env
    tids = [sim.add_task(SCRIPT) for _ in range(40)]
    with _workers(tmp_path):
        handles = track_many(tids)
        outs = [h.get(timeout=60) for h in handles]
    assert [o["status"] for o in outs] == ["succeeded"] * 40
    lists = sim.requests(kind="list")
    gets = sim.requests(kind="get")
    assert lists, "no list call"
    assert len(gets) == 0, [g.task_id for g in gets]  # every id was in the answers
    polls = sum(get_store().get(t).polls for t in tids)  # type: ignore[union-attr]
    assert len(lists) * 5 < polls  # a list call read many jobs at once
    for tid in tids:
        rec = get_store().get(tid)
        assert rec is not None and rec.state == "done"
        ids_after = [r for r in lists if tid in r.query.get("filter.task_ids", []) and r.ts > rec.terminal_at]  # type: ignore[operator]
        assert ids_after == [], tid


def test_chain_group_and_chord_over_batched_jobs(batch_env: Simulator, tmp_path: Path) -> None:
    """chain(poll.s(id), step.s()), a group and a chord of polls give the same results as per-job."""
    sim = batch_env
    a, b, c, d, e = (sim.add_task(SCRIPT) for _ in range(5))
    with _workers(tmp_path):
        res = chain(seedance_worker.poll.s(a), canvas_step.s(tag="batch")).apply_async()
        g = group(seedance_worker.poll.s(b), seedance_worker.poll.s(c)).apply_async()
        ch = chord([seedance_worker.poll.s(d), seedance_worker.poll.s(e)], collect.s()).apply_async()
        assert res.get(timeout=60) == {"tag": "batch", "task_id": a, "status": "succeeded"}
        assert sorted(o["task_id"] for o in g.get(timeout=60)) == sorted([b, c])
        assert ch.get(timeout=60) == sorted([d, e])
        f = sim.add_task(
            [("queued", 0.5), ("failed", None)], error_code="OutputVideoSensitiveContentDetected"
        )
        with pytest.raises(GenerationFailed):
            seedance_worker.track(f).get(timeout=60)
    assert sim.requests(kind="list")


def test_flex_and_default_jobs_in_one_fleet_are_both_found(batch_env: Simulator, tmp_path: Path) -> None:
    """A flex task is invisible to a list call without filter.service_tier=flex: its first read falls
    back to a GET, which teaches the job its tier; later rounds list it with the flex filter."""
    sim = batch_env
    slow = [("queued", 1.0), ("running", 3.0), ("succeeded", None)]
    flex = [sim.add_task(slow, service_tier="flex") for _ in range(3)]
    default = [sim.add_task(slow) for _ in range(3)]
    with _workers(tmp_path):
        outs = [h.get(timeout=60) for h in track_many(flex + default)]
    assert all(o["status"] == "succeeded" for o in outs)
    for tid in flex:
        assert get_store().get(tid).service_tier == "flex"  # type: ignore[union-attr]
        assert 1 <= len(sim.requests(kind="get", task_id=tid)) <= 2  # the fallback, not every poll
    flex_lists = [r for r in sim.requests(kind="list") if r.query.get("filter.service_tier") == ["flex"]]
    assert flex_lists and all(set(r.query["filter.task_ids"]) <= set(flex) for r in flex_lists)
    for tid in default:
        assert sim.requests(kind="get", task_id=tid) == []


def test_a_refused_list_falls_back_to_gets(batch_env: Simulator, tmp_path: Path) -> None:
    """An API without list (404 on the list path): one refused call, then every job is read by its own
    GET, and all end."""
    sim = batch_env
    sim.configure(list_refusal=404)
    tids = [sim.add_task(SCRIPT) for _ in range(6)]
    with _workers(tmp_path):
        outs = [h.get(timeout=60) for h in track_many(tids)]
    assert all(o["status"] == "succeeded" for o in outs)
    assert len(sim.requests(kind="list")) == 1
    assert all(sim.requests(kind="get", task_id=t) for t in tids)


def test_a_job_missing_from_the_list_is_read_by_get(batch_env: Simulator, tmp_path: Path) -> None:
    """A task the list does not return (created before the list's 7-day window) is read by GET."""
    sim = batch_env
    sim.configure(list_window_s=0.01)  # every task is out of the list's window
    time.sleep(0.05)
    tid = sim.add_task(SCRIPT)
    with _workers(tmp_path):
        assert seedance_worker.track(tid).get(timeout=60)["status"] == "succeeded"
    assert sim.requests(kind="get", task_id=tid)


def test_gateway_words_and_an_early_404(batch_env: Simulator, tmp_path: Path, env: pytest.MonkeyPatch,
                                        redis_url: str) -> None:  # fmt: skip
    """`processing` and `pending` read as running and queued (the snapshot keeps the word); a 404
    within SEEDANCE_NOT_FOUND_GRACE_S of tracking is retried, and after it the job ends not_found."""
    sim = batch_env
    configure(env, not_found_grace_s="2")
    with _workers(tmp_path):
        words = sim.add_task([("pending", 1.0), ("processing", 1.5), ("succeeded", None)])
        out = seedance_worker.track(words).get(timeout=60)
        assert out["status"] == "succeeded"
        rec = get_store().get(words)
        assert rec is not None and rec.polls >= 2  # read while pending and processing: not an error
        assert rec.last_error is None
        h = seedance_worker.track("cgt-20261203000000-nope1")
        t0 = time.time()
        with pytest.raises(TaskNotFound):
            h.get(timeout=60)
        assert time.time() - t0 >= 2.0
    rec = wait_for(lambda: get_store().get("cgt-20261203000000-nope1"), 5, "record")
    assert rec.polls >= 2  # retried within the grace, then ended


def test_no_list_call_names_a_job_before_its_retry_after(batch_env: Simulator, tmp_path: Path) -> None:
    """A 429 storm on list calls (Retry-After 2): the account cools down, no call naming any job of
    a refused list comes before the Retry-After has passed, and every job still ends."""
    sim = batch_env
    slow = [("queued", 2.0), ("running", 4.0), ("succeeded", None)]
    with _workers(tmp_path):
        tids = [sim.add_task(slow) for _ in range(20)]
        handles = track_many(tids)
        wait_for(lambda: len(sim.requests(kind="list")) >= 2, 20, "rounds running")
        sim.burst_429(3.0, retry_after_s=2)
        outs = [h.get(timeout=90) for h in handles]
    assert all(o["status"] == "succeeded" for o in outs)
    calls = sim.requests(kind="list") + sim.requests(kind="get")
    refused = [r for r in calls if r.status == 429]
    assert refused, "the storm refused nothing"
    for r in refused:
        named = set(r.query.get("filter.task_ids", [])) | ({r.task_id} if r.task_id else set())
        early = [c for c in calls if r.ts < c.ts < r.ts + 2.0 - 0.05
                 and named & (set(c.query.get("filter.task_ids", [])) | ({c.task_id} if c.task_id else set()))]  # fmt: skip
        assert early == [], (r.ts, [(c.ts, c.status) for c in early])


def test_a_running_job_is_read_in_every_round(
    batch_env: Simulator, tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    """README: a running job is read every round. Its wait counts from the round that read it, not
    from the tick that got to that round a little later (which put every read two rounds on). As
    with the defaults, the running interval is exactly one round (min interval = round)."""
    # First read at once (no 5 s first delay eating into the running window), jitter off.
    configure(env, batch_round_s="1", poll_min_interval_s="1", dispatch_interval_s="0.25",
              poll_first_delay_s="0.2", poll_first_jitter_ratio="0")  # fmt: skip
    sim = batch_env
    with _workers(tmp_path, n=1):  # the task starts running once the worker is up
        tid = sim.add_task([("queued", 0.0), ("running", 8.0), ("succeeded", None)])
        assert seedance_worker.track(tid).get(timeout=60)["status"] == "succeeded"
    state = sim.task(tid)
    assert state is not None and state["terminal_at"] is not None
    started, ended = state["history"][1][1], state["terminal_at"]
    reads = sorted(r.ts for r in sim.requests(kind="list") if tid in r.query.get("filter.task_ids", []))
    running = [ts for ts in reads if started < ts < ended]
    gaps = sorted(b - a for a, b in itertools.pairwise(running))
    assert len(running) >= 6, gaps  # 8 s running: about 8 reads (every other round: 4)
    assert gaps[len(gaps) // 2] < 1.5, gaps  # one round apart, not two (2 s)
