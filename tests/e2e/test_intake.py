"""The callback intake: Ark's callback posts poll the job at once (polling stays the source of truth)."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import shared_task

import seedance_worker
from seedance_worker import intake
from seedance_worker.settings import get_settings
from seedance_worker.testing.simulator import SimConfig, Simulator
from tests.support.env import clean_redis, reset_caches
from tests.support.workers import Workers, worker_env

TOKEN = "intake-test-token-0f9e8d7c6b5a4"
STARTED_KEY = "test:intake:started"
JOBS = 50


@shared_task(name="tests.intake_started")
def intake_started(outcome: dict[str, Any]) -> dict[str, Any]:
    """First downstream task: records when it started."""
    r = redis.Redis.from_url(os.environ["SEEDANCE_REDIS_URL"], decode_responses=True)
    r.hset(STARTED_KEY, outcome["task_id"], repr(time.time()))
    return outcome


def post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"{}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.time() + 15
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as resp:
                assert resp.status == 200
                return
        except OSError:
            assert time.time() < deadline and proc.poll() is None, proc.communicate(timeout=5)
            time.sleep(0.1)


@pytest.fixture
def served(env: pytest.MonkeyPatch, redis_url: str) -> Iterator[str]:
    """The intake WSGI app on a free port in a thread; SEEDANCE_INTAKE_URL/TOKEN point at it."""
    env.setenv("SEEDANCE_INTAKE_TOKEN", TOKEN)
    reset_caches()
    server = intake.make_intake_server("127.0.0.1", 0, get_settings())
    base = f"http://127.0.0.1:{server.server_address[1]}"
    env.setenv("SEEDANCE_INTAKE_URL", base)
    reset_caches()
    clean_redis(redis_url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base
    finally:
        server.shutdown()
        server.server_close()


def test_token_dedupe_bad_json_and_untracked(served: str, sim: Simulator) -> None:
    from prometheus_client import REGISTRY

    def count(result: str) -> float:
        return REGISTRY.get_sample_value("seedance_intake_callbacks_total", {"result": result}) or 0.0

    assert intake.callback_url_for(get_settings()) == f"{served}/callbacks/{TOKEN}"
    good = f"{served}/callbacks/{TOKEN}"
    tid = sim.add_task([("queued", 30.0), ("succeeded", None)])
    seedance_worker.track(tid)  # tracked and polling (no worker here: its poll just waits in Redis)
    body = json.dumps({"id": tid, "status": "running", "updated_at": 1700000000}).encode()

    bad, elsewhere = count("bad_token"), count("not_found")
    for path in (f"/callbacks/{TOKEN[:-1]}", f"/callbacks/{TOKEN}x", "/callbacks/", "/other"):
        assert post(served + path, body)[0] == 404
    assert count("bad_token") == bad + 3 and count("not_found") == elsewhere + 1
    assert post(good, body) == (202, {"result": "accepted"})
    assert post(good, body) == (200, {"result": "duplicate"})
    later = json.dumps({"id": tid, "status": "succeeded", "updated_at": 1700000001}).encode()
    # the early poll granted above has not run yet (no worker): one per generation is enough
    assert post(good, later) == (202, {"result": "pending"})
    # a status the last poll already saw (every job starts queued) costs no extra GET
    same = json.dumps({"id": tid, "status": "queued", "updated_at": 1700000002}).encode()
    assert post(good, same) == (202, {"result": "unchanged"})
    assert post(good, b"{not json")[0] == 400
    assert post(good, b'{"status": "succeeded"}')[0] == 400
    assert post(good, json.dumps({"id": "../etc/passwd"}).encode())[0] == 400
    untracked = json.dumps({"id": "cgt-20990101000000-abcde", "status": "succeeded", "updated_at": 1}).encode()
    assert post(good, untracked) == (202, {"result": "ignored"})
    with urllib.request.urlopen(served + "/healthz", timeout=5) as resp:
        assert resp.status == 200
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(good, timeout=5)  # GET on the callback path
    assert info.value.code == 405
    info.value.close()


def test_short_token_is_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("SEEDANCE_INTAKE_URL", "http://127.0.0.1:1")
    env.setenv("SEEDANCE_INTAKE_TOKEN", "short")
    reset_caches()
    with pytest.raises(seedance_worker.errors.ConfigError, match="SEEDANCE_INTAKE_TOKEN"):
        intake.callback_url_for(get_settings())


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {**worker_env(), "SEEDANCE_INTAKE_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "seedance_worker", "intake", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        assert post(f"http://127.0.0.1:{port}/callbacks/nope", b"{}")[0] == 404
        assert post(f"http://127.0.0.1:{port}/callbacks/{TOKEN}", b"[")[0] == 400
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert TOKEN.encode() not in out + err


@pytest.fixture
def intake_process(env: pytest.MonkeyPatch, redis_url: str) -> Iterator[str]:
    """`seedance-worker intake` in its own process (its own GIL, as deployed); returns its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env.setenv("SEEDANCE_INTAKE_TOKEN", TOKEN)
    env.setenv("SEEDANCE_INTAKE_URL", base)
    reset_caches()
    clean_redis(redis_url)
    proc = subprocess.Popen([sys.executable, "-m", "seedance_worker", "intake", "--port", str(port)],
                            env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_healthy(base, proc)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _breakdown(sim: Simulator, jobs: list[tuple[str, Any]], started: dict[str, float], log: str) -> list[str]:
    """Per job, seconds after the remote success: callback answered, poll received, terminal, downstream."""
    from datetime import datetime

    def ts(line: str) -> float:
        return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()

    lines = log.splitlines()
    cbs = {c.task_id: c.ts for c in sim.callbacks_sent if c.status == "succeeded"}
    out = []
    for tid, res in jobs:
        t0 = sim.task(tid)["terminal_at"]  # type: ignore[index]
        recv = [ts(x) - t0 for x in lines if f"seedance.poll[{res.id}] received" in x]
        term = [ts(x) - t0 for x in lines if f"poll {tid} " in x and "terminal" in x]
        out.append(f"{tid}: callback {cbs.get(tid, t0) - t0:.2f} received {recv[-1:]} terminal {term} "
                   f"downstream {started[tid] - t0:.2f}")  # fmt: skip
    return out


@pytest.mark.slow
def test_callbacks_bring_downstream_within_a_second_of_success(
    intake_process: str, env: pytest.MonkeyPatch, tmp_path: Path, redis_url: str
) -> None:
    """Polls every 30 s, jobs done in ~3 s: only the callbacks can start the hand-off that fast."""
    for name, value in {
        "SEEDANCE_POLL_FIRST_DELAY_S": "1", "SEEDANCE_POLL_MIN_INTERVAL_S": "30",
        "SEEDANCE_POLL_MAX_INTERVAL_S": "30", "SEEDANCE_POLL_QUEUED_INTERVAL_S": "30",
        "SEEDANCE_POLL_RUNNING_INTERVAL_S": "30", "SEEDANCE_POLL_COUNTDOWN_CAP_S": "60",
        "SEEDANCE_VISIBILITY_TIMEOUT_S": "300", "SEEDANCE_ON_SUCCEEDED": "tests.intake_started",
        # callbacks may poll sooner than the schedule's 30 s floor, but not sooner than this
        "SEEDANCE_INTAKE_POLL_MIN_INTERVAL_S": "0.5",
    }.items():  # fmt: skip
        env.setenv(name, value)
    sim = Simulator(config=SimConfig(queued_s=1.5, running_s=1.5)).start()
    env.setenv("SEEDANCE_API_BASE_URL", sim.base_url)
    reset_caches()
    try:
        with Workers(tmp_path, n=1, concurrency=4, extra_args=["--include", "tests.e2e.test_intake"]) as ws:
            submitted = []
            for i in range(JOBS):  # a steady ~3 jobs/s: the successes arrive spread out, as in production
                submitted.append(
                    seedance_worker.submit("seedance-1-5-pro-251215", [{"type": "text", "text": f"a fox {i}"}])
                )
                time.sleep(0.3)
            for _, res in submitted:
                assert res.get(timeout=30)["status"] == "succeeded"
            r = redis.Redis.from_url(redis_url, decode_responses=True)
            deadline = time.time() + 10
            while time.time() < deadline and r.hlen(STARTED_KEY) < JOBS:
                time.sleep(0.1)
            started = {k: float(v) for k, v in r.hgetall(STARTED_KEY).items()}
            req = sim.requests(kind="create")[0]
            assert req.body["callback_url"].startswith(f"{intake_process}/callbacks/j/")  # one per task
            delays = [started[tid] - sim.task(tid)["terminal_at"] for tid, _ in submitted]  # type: ignore[index]
            median = statistics.median(delays)
            print(f"callback -> downstream start: median {median * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms")
            assert median < 1.0, (sorted(delays), _breakdown(sim, submitted[::5], started, ws.logs()))
            # polling alone would have needed ~30 s per job: the callbacks did it
            assert max(delays) < 10.0, sorted(delays)
    finally:
        sim.stop()
