"""The fleet-wide limiter: GCRA reservations in Redis and the shared 429 cool-down."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from seedance_worker.ratelimit import RateLimiter, has_unwritten_cooldown
from seedance_worker.settings import Settings, load_settings
from seedance_worker.testing.redis import EmbeddedRedis


def a_settings(key: str, rps: float = 0, burst: int = 1) -> Settings:
    return load_settings({"SEEDANCE_RATE_LIMIT_RPS": str(rps), "SEEDANCE_RATE_LIMIT_BURST": str(burst),
                          "SEEDANCE_API_KEY": key})  # fmt: skip


def limiter(redis_url: str, rps: float, burst: int = 1, key: str | None = None) -> RateLimiter:
    return RateLimiter(redis.Redis.from_url(redis_url), a_settings(key or f"k-{time.time_ns()}", rps, burst))


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


def test_a_cool_down_redis_could_not_take_holds_this_process_and_is_written_later() -> None:
    """A 429 while Redis restarts: cool_down raises (the outage wrapper runs the step again), and that
    re-run's acquire is still told to wait out the Retry-After, which it writes to Redis for the fleet.

    Seen in the fault storm: a download's URL refresh got a 429 as Redis came back, the cool-down
    was lost, and the step's re-run asked the API again 0.2 s later, inside the Retry-After of 2 s.
    """
    server = EmbeddedRedis().start()
    try:
        key = f"outage-{time.time_ns()}"
        a = limiter(server.url, 0, key=key)
        server.stop()
        with pytest.raises(redis.ConnectionError):
            a.cool_down(2.0)
        assert has_unwritten_cooldown(a_settings(key))
        server.start()
        p = a.acquire()
        assert p.kind == "cooldown" and 1.5 < p.wait_s <= 2.0, p
        assert not has_unwritten_cooldown(a_settings(key))
        # written through: another worker on the same key (no local note) is held too
        b = limiter(server.url, 0, key=key)
        assert 1.5 < b.cooldown_left() <= 2.0
    finally:
        server.stop()


def test_a_try_that_is_told_to_wait_reserves_nothing(redis_url: str) -> None:
    """A batched round that defers its chunk must not push the rate on: 50 refused tries leave the
    next slot where one refusal found it (reserving ones moved it 50 intervals, 10 s at 5/s: the
    soak's livelock, where deferred chunks came back as fast as the cap refilled)."""
    rl = limiter(redis_url, 5)
    assert rl.try_acquire().kind == "go"
    first = rl.try_acquire()
    assert first.kind == "slot" and 0 < first.wait_s <= 0.2
    for _ in range(50):
        rl.try_acquire()
    again = rl.try_acquire()
    assert again.kind == "slot" and again.wait_s <= first.wait_s
    time.sleep(first.wait_s + 0.01)
    assert rl.try_acquire().kind == "go"  # the slot the refusals did not take


def test_a_reserving_acquire_told_to_wait_holds_its_slot(redis_url: str) -> None:
    """The per-job poll path waits for the slot it was given: each wait is one interval later."""
    rl = limiter(redis_url, 5)
    rl.acquire()
    waits = [rl.acquire().wait_s for _ in range(3)]
    assert waits[0] < waits[1] < waits[2] and waits[2] - waits[0] == pytest.approx(0.4, abs=0.02)
