"""A host app whose broker is RabbitMQ: install(app), a real worker, countdown polls over AMQP, the
poll state and the results in Redis. Skipped only when nothing listens on 127.0.0.1:5672."""

from __future__ import annotations

import contextlib
import importlib
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import seedance_worker
from seedance_worker.engine.store import get_store
from seedance_worker.testing.simulator import SimConfig, Simulator
from seedance_worker.wiring import host
from tests.support.env import clean_redis, reset_caches
from tests.support.workers import WorkerProcess, worker_env

pytestmark = pytest.mark.slow


def _rabbit_listening() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def rabbit(env: pytest.MonkeyPatch, tmp_path: Path, redis_url: str) -> Iterator[tuple[Any, Simulator, WorkerProcess]]:
    if not _rabbit_listening():
        pytest.skip("RabbitMQ is not listening on 127.0.0.1:5672")
    suffix = uuid.uuid4().hex[:8]
    poll_q, post_q = f"seedance.poll.t{suffix}", f"seedance.post.t{suffix}"
    sim = Simulator(config=SimConfig(queued_s=0.5, running_s=1.0)).start()
    env.setenv("SEEDANCE_API_BASE_URL", sim.base_url)
    env.setenv("SEEDANCE_POLL_QUEUE", poll_q)  # fresh queues: nothing left over from earlier runs
    env.setenv("SEEDANCE_POST_QUEUE", post_q)
    reset_caches()
    clean_redis(redis_url)
    sys.modules.pop("tests.support.rabbit_app", None)
    app = importlib.import_module("tests.support.rabbit_app").app
    worker = WorkerProcess("rabbit", env=worker_env(), logdir=tmp_path, concurrency=2, queues=f"{poll_q},{post_q}")
    worker.cmd[worker.cmd.index("seedance_worker")] = "tests.support.rabbit_app"
    app.set_current()
    try:
        worker.start().wait_ready()
        yield app, sim, worker
    finally:
        worker.stop()
        sim.stop()
        seedance_worker.app.set_current()
        host.forget()
        with app.connection_for_write() as conn:
            for q in (poll_q, post_q):
                with contextlib.suppress(Exception):
                    conn.default_channel.queue_delete(q)


def test_host_app_on_rabbitmq_polls_with_countdowns_and_hands_off(
    rabbit: tuple[Any, Simulator, WorkerProcess], redis_url: str
) -> None:
    app, sim, worker = rabbit
    assert app.conf.broker_url.startswith("amqp://")
    ids = [sim.add_task([("queued", 0.5), ("running", 1.0), ("succeeded", None)]) for _ in range(3)]
    failing = sim.add_task([("queued", 0.3), ("failed", None)], error_code="OutputVideoSensitiveContentDetected")
    results = [seedance_worker.track(t, metadata={"n": i}) for i, t in enumerate(ids)]
    assert all(r.app is app for r in results)  # published through the host app, over AMQP
    for tid, res in zip(ids, results, strict=True):
        outcome = res.get(timeout=40)
        assert outcome["status"] == "succeeded" and outcome["task_id"] == tid
        assert outcome["polls"] >= 2, outcome  # at least one countdown reschedule went over RabbitMQ
    with pytest.raises(seedance_worker.GenerationFailed) as info:
        seedance_worker.track(failing).get(timeout=40)
    assert info.value.outcome.status == "failed"

    # the hand-off chains (download, charge, notify, complete) ran on the post queue, once each
    store = get_store()
    import time

    deadline = time.time() + 20
    while time.time() < deadline and not all((r := store.get(t)) is not None and r.handoff == "done" for t in ids):
        time.sleep(0.2)
    for tid in ids:
        rec = store.get(tid)
        assert rec is not None and rec.state == "done" and rec.handoff == "done" and rec.handoff_fires == 1, rec
        final = rec.outcome or {}
        assert final["video"]["bytes"] > 0 and final["charge"]["completion_tokens"] > 0
    # the messages never touched Redis: no kombu queue lists there, only the poll state and results
    r = redis.Redis.from_url(redis_url)
    poll_q = seedance_worker.get_settings().poll_queue
    assert not r.exists(poll_q) and not list(r.scan_iter("_kombu.binding.*"))
    assert r.zcard("seedance:jobs") >= 4
    log = worker.log_text()
    assert "refusing to start" not in log and "amqp://" in log
