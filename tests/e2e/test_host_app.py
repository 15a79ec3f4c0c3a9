"""A host project that configures seedance in code, as a new user does: no SEEDANCE_* variable in
the worker or in the process calling track(), `celery -A <host> worker` without -Q, the job store
on the host's own Redis (a database of its own here, so a record in the default one would show)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import seedance_worker
from seedance_worker import keys
from seedance_worker.engine.store import get_store
from seedance_worker.testing.simulator import SimConfig, Simulator
from seedance_worker.wiring import host
from tests.support.env import clean_redis, reset_caches
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess, worker_env

pytestmark = pytest.mark.slow

HOST_DB = 7
HOST_KEY = "host-key-not-a-secret-0123456789"


def _host_url(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + f"/{HOST_DB}"


@pytest.fixture(params=["tests.support.host_app", "tests.support.host_django_app"])
def host_fleet(
    request: pytest.FixtureRequest, env: pytest.MonkeyPatch, tmp_path: Path, redis_url: str
) -> Iterator[tuple[Any, Simulator, Path]]:
    module = request.param
    # Only the host's key is accepted: a poll that read another configuration would get 401s.
    sim = Simulator(config=SimConfig(queued_s=0.3, running_s=0.5, api_keys=frozenset({HOST_KEY}))).start()
    videos = tmp_path / "videos"
    for name in [n for n in os.environ if n.upper().startswith("SEEDANCE_")]:
        env.delenv(name)
    host_url = _host_url(redis_url)
    values = {"HOST_REDIS_URL": host_url, "HOST_API_BASE_URL": sim.base_url, "HOST_DOWNLOAD_DIR": str(videos),
              "HOST_API_KEY": HOST_KEY}  # fmt: skip
    for k, v in values.items():
        env.setenv(k, v)
    reset_caches()
    clean_redis(host_url)
    clean_redis(redis_url)
    sys.modules.pop(module, None)
    app = importlib.import_module(module).app
    worker = WorkerProcess("host", env=worker_env(), logdir=tmp_path, concurrency=2)
    cmd = worker.cmd
    del cmd[cmd.index("-Q") : cmd.index("-Q") + 2]  # a host worker as users start it: no -Q
    cmd[cmd.index("seedance_worker")] = module
    app.set_current()
    try:
        worker.start().wait_ready()
        yield app, sim, videos
    finally:
        worker.stop()
        sim.stop()
        host.forget()
        seedance_worker.app.set_current()
        reset_caches()


def test_a_host_configured_in_code_polls_downloads_and_charges_on_its_own_redis(
    host_fleet: tuple[Any, Simulator, Path], redis_url: str
) -> None:
    """20 jobs through a worker started without -Q; every record, video and charge where the host
    said, none in the Redis database the environment default would have used."""
    app, sim, videos = host_fleet
    ids = [sim.add_task([("queued", 0.3), ("running", 0.5), ("succeeded", None)]) for _ in range(20)]
    results = [seedance_worker.track(t) for t in ids]
    assert all(r.app is app for r in results)  # published through the host app
    for tid, res in zip(ids, results, strict=True):
        assert res.get(timeout=60)["task_id"] == tid
    store = get_store()
    assert store.r.connection_pool.connection_kwargs["db"] == HOST_DB

    def all_done() -> bool:
        return all((rec := store.get(t)) is not None and rec.state == "done" for t in ids)

    wait_for(all_done, 60, "every job downloaded and charged")
    for tid in ids:
        outcome = store.get(tid).outcome or {}  # type: ignore[union-attr]
        assert (videos / f"{tid}.mp4").is_file() and outcome["video"]["sha256"]
        assert outcome["charge"]["completion_tokens"] == 108900
    # Every status read (list calls in the default batched mode, GETs for ids a list missed) was
    # accepted: made with the host's key, which is the only one this simulator takes.
    reads = sim.requests(kind="list") + sim.requests(kind="get")
    assert reads and {r.status for r in reads} == {200}
    default_db = redis.Redis.from_url(redis_url)
    assert not any(default_db.exists(keys.job(t)) for t in ids)
    assert store.r.zcard(keys.DUE) == 0  # nothing left due on the host Redis either
