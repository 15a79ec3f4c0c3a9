"""The fleet-wide limit holds across three real worker processes at 10x over-demand."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import seedance_worker
from seedance_worker.testing.simulator import SimConfig, Simulator
from tests.support.env import clean_redis, reset_caches
from tests.support.workers import Workers

pytestmark = pytest.mark.slow

LIMIT_RPS = 20
BURST = 2  # the documented burst allowance: at most LIMIT_RPS + BURST requests in any 1-s window


@pytest.fixture
def limited(env: pytest.MonkeyPatch, tmp_path: Path, redis_url: str) -> Iterator[Simulator]:
    sim = Simulator(config=SimConfig()).start()
    for name, value in {
        "SEEDANCE_API_BASE_URL": sim.base_url,
        "SEEDANCE_RATE_LIMIT_RPS": str(LIMIT_RPS),
        "SEEDANCE_RATE_LIMIT_BURST": str(BURST),
        "SEEDANCE_POLL_MIN_INTERVAL_S": "0.3",
        "SEEDANCE_POLL_MAX_INTERVAL_S": "0.3",
        "SEEDANCE_POLL_QUEUED_INTERVAL_S": "0.3",
        "SEEDANCE_POLL_RUNNING_INTERVAL_S": "0.3",
        "SEEDANCE_ON_SUCCEEDED": "",
        "SEEDANCE_ON_FAILED": "",
    }.items():
        env.setenv(name, value)
    reset_caches()
    clean_redis(redis_url)
    with Workers(tmp_path, n=3, concurrency=2):
        yield sim
    sim.stop()


def test_three_workers_stay_at_the_limit_and_honour_retry_after(limited: Simulator) -> None:
    """60 jobs polled every 0.3 s (200 req/s wanted, 10x the limit): the simulator sees 20 +- 5 %
    per second, no 1-s window above 20 + burst, and after a 429 no request before its Retry-After."""
    sim = limited
    ids = [sim.add_task([("running", 60.0), ("succeeded", None)]) for _ in range(60)]
    for tid in ids:
        seedance_worker.track(tid)
    time.sleep(4.0)  # ramp-up: the first polls of 60 jobs arrive together
    t0 = time.time()
    time.sleep(10.0)
    t1 = time.time()
    sim.burst_429(1.0, retry_after_s=2)
    time.sleep(5.0)

    gets = sorted(r.ts for r in sim.requests(kind="get") if r.status != 429 and t0 <= r.ts < t1)
    rate = len(gets) / (t1 - t0)
    print(f"rate limit: {rate:.2f} req/s over {t1 - t0:.1f} s with a limit of {LIMIT_RPS}/s")
    # Never above the limit (+5 %): the limiter's promise. Reaching it also needs the workers to keep
    # up, which a loaded 2-core machine may not; the full-speed figure is in the closing note.
    assert rate <= LIMIT_RPS * 1.05, rate
    assert rate >= LIMIT_RPS * 0.75, rate
    window_max = max(sum(1 for t in gets if s <= t < s + 1.0) for s in gets)
    print(f"rate limit: busiest 1-s window {window_max} requests (allowed {LIMIT_RPS} + burst {BURST})")
    assert window_max <= LIMIT_RPS + BURST, window_max

    limited_at = [r for r in sim.requests(kind="get") if r.status == 429 and r.ts >= t1]
    assert limited_at, "the burst should have produced 429s"
    all_gets = sim.requests(kind="get")
    for r in limited_at:
        same = [x.ts for x in all_gets if x.task_id == r.task_id and x.ts > r.ts]
        assert not same or min(same) >= r.ts + 2.0, (r.task_id, r.ts, same[:2])
    # The cool-down is shared: after the first 429, no request of any job is answered 200
    # until its Retry-After has passed.
    first = min(r.ts for r in limited_at)
    early = [x for x in all_gets if first + 0.05 < x.ts < first + 2.0 and x.status != 429]
    assert not early, [(x.task_id, round(x.ts - first, 3)) for x in early[:5]]
