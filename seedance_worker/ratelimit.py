"""A fleet-wide request limiter in Redis: GCRA reservations plus a shared 429 cool-down.

Celery's ``rate_limit`` is per worker; N workers would send N times the rate. Here every worker
reserves a slot from one Lua script (the clock is Redis's ``TIME``, so hosts need not agree on the
time). A reservation always advances the "theoretical arrival time" and returns when the slot is,
so a poll is scheduled for its slot and rescheduled at most once for the limiter, instead of
checking and retrying in a storm. Waits are computed and returned in
whole microseconds: Redis truncates Lua numbers to integers, and a fractional wait returned in
milliseconds would read as 0 ("go now") and let the limiter leak.

A 429 sets a cool-down for the API key that pushes back every poll of every worker until the
``Retry-After`` has passed; it is not counted against any job's attempts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis

from seedance_worker import keys, scripts
from seedance_worker.settings import Settings


@dataclass(frozen=True)
class Permit:
    wait_s: float
    kind: str  # "go" | "slot" | "cooldown"


def limiter_keys(settings: Settings) -> tuple[str, str]:
    """(tat, cooldown) keys: one limiter per API key and host; the key itself is only ever hashed."""
    secret = settings.api_key.get_secret_value() if settings.api_key else ""
    key = hashlib.sha256(f"{settings.api_base_url}\0{secret}".encode()).hexdigest()[:16]
    return keys.rate_limit(key)


class RateLimiter:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.tat_key, self.cool_key = limiter_keys(settings)
        rps = settings.rate_limit_rps
        self.interval_us = int(1_000_000 / rps) if rps > 0 else 0
        self.tolerance_us = self.interval_us * max(0, settings.rate_limit_burst - 1)
        self._acquire = scripts.load(client, "seedance_worker", "acquire")
        self._cool = scripts.load(client, "seedance_worker", "cool_down")

    def __repr__(self) -> str:
        return f"RateLimiter(interval_us={self.interval_us})"

    def acquire(self) -> Permit:
        """Reserve the next request slot (or learn how long the 429 cool-down still runs)."""
        wait_us, kind = self._acquire(
            keys=[self.tat_key, self.cool_key], args=[self.interval_us, self.tolerance_us]
        )
        return Permit(int(wait_us) / 1_000_000, {0: "go", 1: "slot", 2: "cooldown"}[int(kind)])

    def cool_down(self, seconds: float) -> None:
        """After a 429: hold every worker's requests for this API key for ``seconds``."""
        self._cool(keys=[self.cool_key], args=[max(0.0, seconds)])
