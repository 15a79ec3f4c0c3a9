"""cancel(), `seedance-worker cancel` and revoke(): a queued job is DELETEd and ends cancelled, with
no read after; a running one is refused (or, asked to, stops being tracked); nothing resumes it.
Each test runs with per-job GETs and with batched status (the default), where a job in flight has
no poll message for a revoke to meet."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery.result import AsyncResult

import seedance_worker
from seedance_worker.engine.store import get_store
from seedance_worker.errors import GenerationCancelled
from seedance_worker.testing.simulator import SimConfig, Simulator
from tests.support.e2e_tasks import RECORD_KEY
from tests.support.env import configure
from tests.support.waiting import wait_for
from tests.support.workers import Workers, worker_env

pytestmark = pytest.mark.slow

QUEUED = [("queued", 300.0), ("succeeded", None)]
RUNNING = [("running", 4.0), ("succeeded", None)]


@pytest.fixture(params=["get", "batch"])
def sim(request: pytest.FixtureRequest, env: pytest.MonkeyPatch, redis_url: str) -> Iterator[Simulator]:
    sim = Simulator(config=SimConfig()).start()
    configure(env, redis_url, api_base_url=sim.base_url, on_succeeded="tests.record_outcome",
              on_failed="tests.record_outcome", sweep_interval_s="1", poll_lease_grace_s="1",
              status_source=request.param, batch_round_s="0.5", batch_queued_interval_s="1")  # fmt: skip
    try:
        yield sim
    finally:
        sim.stop()


def _workers(tmp_path: Path) -> Workers:
    return Workers(tmp_path, n=2, concurrency=2, extra_args=["--include", "tests.support.e2e_tasks"])


def _polled(tid: str) -> bool:
    rec = get_store().get(tid)
    return rec is not None and rec.polls >= 1


def _reads_after(sim: Simulator, tid: str, at: float) -> list[float]:
    """When a GET, or a list call naming the job, read it after ``at``."""
    gets = [r.ts for r in sim.requests(kind="get", task_id=tid)]
    lists = [r.ts for r in sim.requests(kind="list") if tid in r.query.get("filter.task_ids", [])]
    return sorted(ts for ts in gets + lists if ts > at)


def _downstream_runs(redis_url: str, tid: str) -> list[str]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    return [d["status"] for d in (json.loads(x) for x in r.lrange(RECORD_KEY, 0, -1)) if d["task_id"] == tid]


def _sigkill_all(ws: Workers) -> None:
    for w in ws.procs:
        if w.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.proc.pid, signal.SIGKILL)
            w.proc.wait(10)


def test_cancel_ten_queued_jobs_then_kill_and_restart_every_worker(
    sim: Simulator, tmp_path: Path, redis_url: str
) -> None:
    """10 queued jobs cancelled: 10 DELETEs, 10 handles raising GenerationCancelled, on_failed run
    once each, no GET of any after its cancel, and none polled again after every worker is
    SIGKILLed and restarted (sweeper and dispatcher running)."""
    tids = [sim.add_task(QUEUED) for _ in range(10)]
    with _workers(tmp_path) as ws:
        handles = [seedance_worker.track(t) for t in tids]
        wait_for(lambda: all(_polled(t) for t in tids), 20, "every job polled once")
        cancelled_at = {}
        for tid in tids:
            res = seedance_worker.cancel(tid)
            assert res.result == "cancelled" and res.ended, res
            cancelled_at[tid] = time.time()
        for h in handles:
            with pytest.raises(GenerationCancelled) as info:
                h.get(timeout=30)
            assert info.value.outcome.status == "cancelled"
            # Ended by this cancel, or (a race under load) by a read that saw Ark's cancelled status
            # between the DELETE and the cancel's own finish: cancelled either way, never re-polled.
            error = info.value.outcome.error or {}
            assert error == {"code": "Cancelled", "message": "cancelled on Ark (it was queued)"} or not error
        _sigkill_all(ws)
    with _workers(tmp_path):
        time.sleep(6.0)  # sweeps every second, leases of 1 s grace: a resumable job would be polled
    for tid in tids:
        assert [r.task_id for r in sim.requests(kind="delete", task_id=tid)] == [tid]
        assert _reads_after(sim, tid, cancelled_at[tid]) == [], tid
        rec = get_store().get(tid)
        assert rec is not None and rec.state == "done" and rec.status == "cancelled"
        assert _downstream_runs(redis_url, tid) == ["cancelled"]  # on_failed, once
        assert (sim.task(tid) or {}).get("status") == "cancelled"


def test_a_running_job_is_not_cancelled_unless_tracking_is_stopped(
    sim: Simulator, tmp_path: Path, redis_url: str
) -> None:
    """Ark refuses to cancel a running task: cancel() says so and the job goes on to succeed; with
    stop_tracking the job ends cancelled here with no downstream step, and no GET after."""
    keep, stop = sim.add_task(RUNNING), sim.add_task(RUNNING)
    with _workers(tmp_path):
        h_keep, h_stop = seedance_worker.track(keep), seedance_worker.track(stop)
        wait_for(lambda: _polled(keep) and _polled(stop), 20, "both polled")
        refused = seedance_worker.cancel(keep)
        assert refused.result == "running" and not refused.ended and "cannot be cancelled" in refused.message
        stopped = seedance_worker.cancel(stop, stop_tracking=True)
        at = time.time()
        assert stopped.result == "stopped_tracking" and stopped.ended
        assert h_keep.get(timeout=30)["status"] == "succeeded"
        with pytest.raises(GenerationCancelled) as info:
            h_stop.get(timeout=30)
        assert info.value.outcome.error["code"] == "TrackingStopped"  # type: ignore[index]
        time.sleep(1.0)
    assert _downstream_runs(redis_url, keep) == ["succeeded"]
    assert _downstream_runs(redis_url, stop) == []  # no downstream effects
    assert _reads_after(sim, stop, at) == []


def test_revoke_of_a_poll_id_cancels_the_job(sim: Simulator, tmp_path: Path, redis_url: str) -> None:
    """AsyncResult(poll id).revoke(): the worker that meets the next poll message DELETEs the queued
    task and ends the job cancelled; on_failed runs once; the handle reads REVOKED."""
    tid = sim.add_task(QUEUED)
    with _workers(tmp_path):
        handle = seedance_worker.track(tid)
        wait_for(lambda: _polled(tid), 20, "polled once")
        AsyncResult(handle.id).revoke()
        rec = wait_for(lambda: (r := get_store().get(tid)) is not None and r.state == "done" and r, 30,
                       "job done after revoke")  # fmt: skip
        assert rec.status == "cancelled"
        assert len(sim.requests(kind="delete", task_id=tid)) == 1
        wait_for(lambda: _downstream_runs(redis_url, tid) == ["cancelled"], 10, "on_failed ran")
        assert handle.state == "REVOKED"


def test_cli_cancel_exit_codes(sim: Simulator, tmp_path: Path) -> None:
    """`seedance-worker cancel ID`: exit 0 for a queued job it cancelled, 1 for a running one."""
    queued, running = sim.add_task(QUEUED), sim.add_task([("running", 30.0), ("succeeded", None)])
    with _workers(tmp_path):
        seedance_worker.track(queued), seedance_worker.track(running)
        wait_for(lambda: _polled(queued) and _polled(running), 20, "both polled")
        cmd = [sys.executable, "-m", "seedance_worker", "cancel"]
        done = subprocess.run([*cmd, queued], env=worker_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and f"{queued}: cancelled" in done.stdout, done.stdout + done.stderr
        done = subprocess.run([*cmd, running], env=worker_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and f"{running}: running" in done.stdout, done.stdout + done.stderr
        done = subprocess.run([*cmd, "--stop-tracking", running], env=worker_env(), capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0 and "stopped_tracking" in done.stdout, done.stdout + done.stderr
