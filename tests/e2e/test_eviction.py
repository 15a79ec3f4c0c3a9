"""An evicting Redis (maxmemory-policy other than noeviction): `check` fails, a worker warns once.

On a Redis this module starts itself (its policy is changed with CONFIG SET), never the session's.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from seedance_worker.testing.redis import EmbeddedRedis
from seedance_worker.testing.simulator import Simulator
from tests.support.workers import WorkerProcess, worker_env

EVICTING = ["allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu",
            "volatile-random", "volatile-ttl"]  # fmt: skip


@pytest.fixture(scope="module")
def own_redis() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    yield server
    server.stop()


@pytest.fixture
def policy(own_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A client of the module's Redis; the policy goes back to noeviction afterwards."""
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    yield client
    client.config_set("maxmemory-policy", "noeviction")
    client.close()


@pytest.fixture(scope="module")
def api() -> Iterator[Simulator]:
    sim = Simulator().start()
    yield sim
    sim.stop()


@pytest.mark.parametrize("name", EVICTING)
def test_every_evicting_policy_is_a_problem_and_noeviction_is_not(policy: redis.Redis, name: str) -> None:
    """allkeys-* evict anything and volatile-* the keys with a TTL (our delivery and idempotency
    marks): each is named as a problem; noeviction is fine."""
    from seedance_worker.connections import eviction_problem  # new with the check

    assert eviction_problem(policy) is None
    policy.config_set("maxmemory-policy", name)
    problem = eviction_problem(policy)
    assert problem is not None
    assert f"maxmemory-policy is {name}" in problem and "set maxmemory-policy noeviction" in problem


def _env(own_redis: EmbeddedRedis, api: Simulator, tmp_path: Path) -> dict[str, str]:
    env = worker_env()
    env.update({"SEEDANCE_REDIS_URL": own_redis.url, "SEEDANCE_API_BASE_URL": api.base_url,
                "SEEDANCE_DOWNLOAD_DIR": str(tmp_path / "videos")})  # fmt: skip
    return env


def test_check_fails_on_an_evicting_redis_and_passes_on_noeviction(
    policy: redis.Redis, own_redis: EmbeddedRedis, api: Simulator, tmp_path: Path
) -> None:
    """`seedance-worker check` says ok with noeviction and exits 1 with allkeys-lru, one line
    naming the policy and the fix."""
    cmd = [sys.executable, "-m", "seedance_worker", "check"]
    env = _env(own_redis, api, tmp_path)
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stderr
    policy.config_set("maxmemory-policy", "allkeys-lru")
    bad = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert bad.returncode == 1, bad
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1, bad.stderr
    assert lines[0].startswith("seedance-worker check: Redis maxmemory-policy is allkeys-lru")
    assert "set maxmemory-policy noeviction" in lines[0]


def test_a_worker_on_an_evicting_redis_starts_and_warns_once(
    policy: redis.Redis, own_redis: EmbeddedRedis, api: Simulator, tmp_path: Path
) -> None:
    """A real worker against a Redis set to allkeys-lru becomes ready and logs the problem in one
    warning line, once."""
    policy.config_set("maxmemory-policy", "allkeys-lru")
    worker = WorkerProcess("evict", env=_env(own_redis, api, tmp_path), logdir=tmp_path, concurrency=1)
    worker.start()
    try:
        worker.wait_ready()
        deadline = time.monotonic() + 10  # the warning comes from the same worker_ready signal
        while "maxmemory-policy" not in worker.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        worker.stop()
    finally:
        worker.kill()
    hits = [line for line in worker.log_text().splitlines() if "maxmemory-policy is allkeys-lru" in line]
    assert len(hits) == 1, worker.log_text()[-3000:]
    assert "WARNING" in hits[0] and "set maxmemory-policy noeviction" in hits[0]
