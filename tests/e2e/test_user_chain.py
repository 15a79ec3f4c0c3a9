"""The user's own canvas after ``seedance.poll`` gets the Outcome the downstream steps filled.

The terminal poll replaces itself with the hand-off chain (download, charge, notify), so the
caller's next task, chord body and ``track()``/``submit()`` handle all see the video, the charge
and the notification. Real prefork workers, the simulator over HTTP, a webhook receiver.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import chain, chord
from celery.result import AsyncResult

import seedance_worker
from seedance_worker.engine.store import get_store
from seedance_worker.engine.sweep import run_sweep
from seedance_worker.keys import DUE
from seedance_worker.steps.charge import entry_id
from seedance_worker.testing.simulator import SimConfig, Simulator
from seedance_worker.testing.webhooks import WebhookReceiver
from tests.support.e2e_tasks import CANVAS_KEY, USER_KEY, canvas_step, user_chord_body, user_step
from tests.support.env import configure
from tests.support.waiting import wait_for
from tests.support.workers import Workers, worker_env

pytestmark = pytest.mark.slow

MODEL = "seedance-1-5-pro-251215"
SCRIPT = [("queued", 0.2), ("running", 0.3), ("succeeded", None)]


@dataclass
class Fleet:
    sim: Simulator
    receiver: WebhookReceiver
    ws: Workers
    redis: redis.Redis


@pytest.fixture
def fleet(env: pytest.MonkeyPatch, tmp_path: Path, redis_url: str) -> Iterator[Fleet]:
    """Two workers with the default downstream chain (download, charge, notify)."""
    sim = Simulator(config=SimConfig(queued_s=0.2, running_s=0.3)).start()
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    receiver = WebhookReceiver(secret).start()
    configure(
        env,
        redis_url,
        api_base_url=sim.base_url,
        download_dir=str(tmp_path / "videos"),
        notify_url=receiver.url,
        notify_secret=secret,
        sweep_interval_s="3600",  # the sweeper test calls run_sweep() itself
    )
    try:
        with Workers(tmp_path, n=2, concurrency=2, extra_args=["--include", "tests.support.e2e_tasks"]) as ws:
            yield Fleet(sim, receiver, ws, redis.Redis.from_url(redis_url, decode_responses=True))
    finally:
        receiver.stop()
        sim.stop()


def _user_runs(f: Fleet, tid: str) -> list[dict[str, object]]:
    return [s for s in (json.loads(x) for x in f.redis.lrange(USER_KEY, 0, -1)) if s["task_id"] == tid]


def _finished(f: Fleet, seen: dict[str, object], tid: str) -> None:
    """What a user task saw is the enriched Outcome: the video on disk, the charge, the webhook."""
    assert seen["video_exists"] is True, seen
    assert seen["video_sha256"] == __import__("hashlib").sha256(f.sim.file_bytes(tid)).hexdigest()
    charge = seen["charge"]
    assert isinstance(charge, dict) and charge["entry_id"] == entry_id(tid)
    assert seen["notified"] is True and seen["step_errors"] == {}


def test_chain_after_poll_gets_the_video_and_the_charge(fleet: Fleet) -> None:
    """chain(poll.s(id), user.s()): the user task runs once, after download, charge and notify, with
    the Outcome they filled; the poll's own AsyncResult resolves to that Outcome too."""
    f = fleet
    tid = f.sim.add_task(SCRIPT, usage_tokens=108_900)
    res = chain(seedance_worker.poll.s(tid), user_step.s()).apply_async()
    seen = res.get(timeout=60)
    _finished(f, seen, tid)
    assert len(f.receiver.for_task(tid)) == 1  # notify ran before the user task, once
    poll_result = AsyncResult(res.parent.id).get(timeout=10)  # type: ignore[union-attr]
    assert poll_result["video"]["sha256"] == seen["video_sha256"]
    time.sleep(1.0)
    assert len(_user_runs(f, tid)) == 1


def test_chord_over_five_polls_gives_the_body_five_finished_outcomes(fleet: Fleet) -> None:
    """chord([poll.s(id) x 5], body.s()): the body gets five Outcomes, each with video and charge."""
    f = fleet
    tids = [f.sim.add_task(SCRIPT) for _ in range(5)]
    res = chord([seedance_worker.poll.s(t) for t in tids], user_chord_body.s()).apply_async()
    seen = res.get(timeout=90)
    assert sorted(s["task_id"] for s in seen) == sorted(tids)
    for s in seen:
        _finished(f, s, str(s["task_id"]))


def test_track_and_submit_handles_resolve_to_the_finished_outcome(fleet: Fleet) -> None:
    """track(id).get() and submit(...)[1].get() return after download, charge and notify."""
    f = fleet
    tid = f.sim.add_task(SCRIPT)
    out = seedance_worker.track(tid).get(timeout=60)
    assert out["video"] and out["charge"]["entry_id"] == entry_id(tid) and out["notification"]["delivered"]
    remote_id, handle = seedance_worker.submit(MODEL, [{"type": "text", "text": "a cat"}])
    out = handle.get(timeout=90)
    assert out["task_id"] == remote_id and out["video"] and out["charge"]["entry_id"] == entry_id(remote_id)
    assert out["notification"]["delivered"] is True


def test_a_failed_download_shows_in_the_handle_and_wait_exits_nonzero(fleet: Fleet, tmp_path: Path) -> None:
    """A succeeded job whose video cannot be fetched: the handle's Outcome carries
    step_errors.download, and `seedance-worker track --wait` exits 1 for it (0 for a good one)."""
    f = fleet
    bad = f.sim.add_task(SCRIPT, response_extra={"content": {"video_url": "http://127.0.0.1:99999/x.mp4"}})
    good = f.sim.add_task(SCRIPT)
    out = seedance_worker.track(bad).get(timeout=60)
    assert out["video"] is None and out["step_errors"]["download"]["kind"] == "invalid_url"
    env = worker_env()
    cmd = [sys.executable, "-m", "seedance_worker", "track", "--wait", "--timeout", "60"]
    done = subprocess.run([*cmd, bad], env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "download" in done.stdout
    done = subprocess.run([*cmd, good], env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr


def test_raw_gives_the_terminal_outcome_and_runs_the_chain_beside(fleet: Fleet) -> None:
    """poll.s(id, {"raw": True}): the next task gets the Outcome as the API gave it (no video yet),
    while the downstream chain still downloads, charges and notifies once."""
    f = fleet
    tid = f.sim.add_task(SCRIPT)
    res = chain(seedance_worker.poll.s(tid, {"raw": True}), canvas_step.s(tag="raw")).apply_async()
    assert res.get(timeout=60) == {"tag": "raw", "task_id": tid, "status": "succeeded"}
    rec = wait_for(lambda: (r := get_store().get(tid)) is not None and r.state == "done" and r, 30, "done")
    assert rec.outcome["video"] and rec.outcome["charge"]["entry_id"] == entry_id(tid)  # type: ignore[index]
    assert len(f.receiver.for_task(tid)) == 1


def test_a_lost_handoff_is_re_fired_into_the_callers_chain(
    env: pytest.MonkeyPatch, tmp_path: Path, redis_url: str
) -> None:
    """The hand-off chain is lost (its queue emptied before any post worker ran it): the sweeper's
    hand-off poll replaces itself with the chain again, and the caller's next task gets the finished
    Outcome, once."""
    sim = Simulator(config=SimConfig(queued_s=0.2, running_s=0.3)).start()
    configure(env, redis_url, api_base_url=sim.base_url, download_dir=str(tmp_path / "v"),
              on_failed="", sweep_interval_s="3600")  # fmt: skip
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        tid = sim.add_task(SCRIPT)
        with Workers(tmp_path, n=1, queues="seedance.poll", extra_args=["--include", "tests.support.e2e_tasks"]):
            res = chain(seedance_worker.poll.s(tid), canvas_step.s(tag="refired")).apply_async()
            wait_for(lambda: (x := get_store().get(tid)) is not None and x.state == "handoff"
                     and x.handoff == "fired", 30, "hand-off fired")  # fmt: skip
            time.sleep(0.5)
            assert r.llen("seedance.post") >= 1  # the chain's first step, waiting for a post worker
            r.delete("seedance.post")  # lost
            r.zadd(DUE, {tid: time.time() - 1})
            assert run_sweep() == 1
            wait_for(lambda: r.llen("seedance.post") >= 1, 20, "the re-fired chain published")
        with Workers(tmp_path, n=1, queues="seedance.post", extra_args=["--include", "tests.support.e2e_tasks"]):
            assert res.get(timeout=60) == {"tag": "refired", "task_id": tid, "status": "succeeded"}
            time.sleep(1.0)
        rec = get_store().get(tid)
        assert rec is not None and rec.state == "done" and rec.handoff_fires == 2
        assert rec.outcome is not None and rec.outcome["video"] is not None
        steps = [json.loads(x) for x in r.lrange(CANVAS_KEY, 0, -1)]
        assert steps == [{"tag": "refired", "task_id": tid, "status": "succeeded"}]
    finally:
        sim.stop()
