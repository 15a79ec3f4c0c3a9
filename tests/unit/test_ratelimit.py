"""The fleet-wide limiter: GCRA reservations in Redis and the shared 429 cool-down."""

from __future__ import annotations

import threading
import time

import redis

from seedance_worker.ratelimit import RateLimiter
from seedance_worker.settings import load_settings


def limiter(redis_url: str, rps: float, burst: int = 1, key: str | None = None) -> RateLimiter:
    s = load_settings({"SEEDANCE_RATE_LIMIT_RPS": str(rps), "SEEDANCE_RATE_LIMIT_BURST": str(burst),
                       "SEEDANCE_API_KEY": key or f"k-{time.time_ns()}"})  # fmt: skip
    return RateLimiter(redis.Redis.from_url(redis_url), s)


def test_reservations_are_spaced_by_the_emission_interval(redis_url: str) -> None:
    """100 concurrent reservations at 20/s get slots 50 ms apart: 5 s of slots, none shared."""
    rl = limiter(redis_url, 20)
    t0 = time.time()
    slots: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(10):
            p = rl.acquire()
            with lock:
                slots.append(time.time() + p.wait_s)

    threads = [threading.Thread(target=take) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    slots.sort()
    assert len(slots) == 100
    assert 4.9 <= slots[-1] - t0 <= 5.3
    # Slots sit on a 50 ms grid (allowing the jitter of when each caller read its clock).
    per_second = [sum(1 for s in slots if t0 + k <= s < t0 + k + 1) for k in range(5)]
    assert all(18 <= n <= 21 for n in per_second), per_second


def test_burst_allowance_lets_the_first_requests_through(redis_url: str) -> None:
    """With burst 5, five requests go at once and the sixth waits an interval."""
    rl = limiter(redis_url, 10, burst=5)
    waits = [rl.acquire().wait_s for _ in range(6)]
    assert waits[:5] == [0, 0, 0, 0, 0] and 0.05 < waits[5] <= 0.11


def test_sub_millisecond_waits_are_not_rounded_to_zero(redis_url: str) -> None:
    """At 5,000/s, 200 back-to-back reservations get waits of 200 us, 400 us, ... never 0.

    A script returning fractional milliseconds would be truncated by Redis to 0 ("go now") and
    let the limiter leak; waits are returned in whole microseconds.
    """
    rl = limiter(redis_url, 5000)
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    for _ in range(200):
        rl._acquire(keys=[rl.tat_key, rl.cool_key], args=[rl.interval_us, rl.tolerance_us], client=pipe)
    results = pipe.execute()  # executed back to back on the server: the reservations pile up
    waits_us = [int(w) for w, _kind in results]
    assert waits_us[0] == 0
    assert all(w > 0 for w in waits_us[1:]), waits_us[:10]
    assert waits_us[-1] > waits_us[1] > 0  # they pile up, 200 us per reservation


def test_a_429_cools_down_every_caller_on_the_key(redis_url: str) -> None:
    """After cool_down(1.5), another worker's limiter for the same key is told to wait ~1.5 s."""
    key = f"shared-{time.time_ns()}"
    a, b = limiter(redis_url, 0, key=key), limiter(redis_url, 0, key=key)
    assert a.acquire().kind == "go"
    a.cool_down(1.5)
    p = b.acquire()
    assert p.kind == "cooldown" and 1.3 < p.wait_s <= 1.5
    a.cool_down(0.2)  # a shorter cool-down never shortens a longer one
    assert b.acquire().wait_s > 1.2
    other = limiter(redis_url, 0, key="another-key")
    assert other.acquire().kind == "go"
