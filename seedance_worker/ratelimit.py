"""A fleet-wide request limiter in Redis: GCRA reservations plus a shared 429 cool-down.

Celery's ``rate_limit`` is per worker; N workers would send N times the rate. Here every worker
reserves a slot from one Lua script (the clock is Redis's ``TIME``, so hosts need not agree on the
time). A reservation always advances the "theoretical arrival time" and returns when the slot is,
so a poll is scheduled for its slot and rescheduled at most once for the limiter, instead of
checking and retrying in a storm (celery-polling.md section 4). Waits are computed and returned in
whole microseconds: Redis truncates Lua numbers to integers, and a fractional wait returned in
milliseconds would read as 0 ("go now") and let the limiter leak.

A 429 sets a cool-down for the API key that pushes back every poll of every worker until the
``Retry-After`` has passed; it is not counted against any job's attempts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis

from seedance_worker.settings import Settings

PREFIX = "seedance:rl:"

# KEYS[1]=tat KEYS[2]=cooldown; ARGV: emission interval us, burst tolerance us (0 = limiter off)
# -> {wait_us, kind}: kind 0 = go now, 1 = reserved slot in wait_us, 2 = cooling down for wait_us
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cool = tonumber(redis.call('GET', KEYS[2]) or '0')
if cool > now then return {math.ceil(cool - now), 2} end
local interval = tonumber(ARGV[1])
if interval <= 0 then return {0, 0} end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tonumber(ARGV[2]) - now
if wait < 0 then wait = 0 end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
if wait > 0 then return {math.max(1, math.ceil(wait)), 1} end
return {0, 0}
"""

# KEYS[1]=cooldown; ARGV: seconds -> the cool-down end (us); only ever extended
_COOL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_us = now + math.ceil(tonumber(ARGV[1]) * 1000000)
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_us > cur then
  redis.call('SET', KEYS[1], string.format('%.0f', until_us), 'PX', math.ceil((until_us - now) / 1000) + 1000)
  return until_us
end
return cur
"""


@dataclass(frozen=True)
class Permit:
    wait_s: float
    kind: str  # "go" | "slot" | "cooldown"


def limiter_keys(settings: Settings) -> tuple[str, str]:
    """(tat, cooldown) keys: one limiter per API key and host; the key itself is only ever hashed."""
    secret = settings.api_key.get_secret_value() if settings.api_key else ""
    key = hashlib.sha256(f"{settings.api_base_url}\0{secret}".encode()).hexdigest()[:16]
    return f"{PREFIX}{key}:tat", f"{PREFIX}{key}:cooldown"


class RateLimiter:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.tat_key, self.cool_key = limiter_keys(settings)
        rps = settings.rate_limit_rps
        self.interval_us = int(1_000_000 / rps) if rps > 0 else 0
        self.tolerance_us = self.interval_us * max(0, settings.rate_limit_burst - 1)
        self._acquire = client.register_script(_ACQUIRE)
        self._cool = client.register_script(_COOL)

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
