"""A fleet-wide request limiter in Redis: GCRA reservations plus a shared 429 cool-down.

Celery's ``rate_limit`` is per worker; N workers would send N times the rate. Here every worker
reserves a slot from one Lua script (the clock is Redis's ``TIME``, so hosts need not agree on the
time). A reservation always advances the "theoretical arrival time" and returns when the slot is,
so a poll is scheduled for its slot and rescheduled at most once for the limiter, instead of
checking and retrying in a storm. Waits are computed and returned in
whole microseconds: Redis truncates Lua numbers to integers, and a fractional wait returned in
milliseconds would read as 0 ("go now") and let the limiter leak.

A 429 sets a cool-down for the API key that pushes back every poll of every worker until the
``Retry-After`` has passed; it is not counted against any job's attempts. Each account
(``SEEDANCE_ACCOUNTS``) has its own limiter and cool-down: one account's 429s never hold another's.

A cool-down that cannot be written (the 429 came while Redis was down or restarting) is kept in
the process until it is written or runs out: the step that the outage makes run again
(``outage.survive_redis_outage``) would otherwise call the API again at once, inside the
``Retry-After`` it was just told. Its next ``acquire`` / ``cooldown_left`` writes it to Redis first.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import redis

from seedance_worker import keys, scripts
from seedance_worker.settings import Settings

# cool-down key -> time.monotonic() at which a cool-down this process could not write ends
_UNWRITTEN: dict[str, float] = {}


@dataclass(frozen=True)
class Permit:
    wait_s: float
    kind: str  # "go" | "slot" | "cooldown"


PERMIT_KINDS = {0: "go", 1: "slot", 2: "cooldown"}  # acquire.lua's second answer


def account_hash(settings: Settings) -> str:
    """Names one account (API key and host) in Redis keys; the key itself is only ever hashed.

    Each account's own: ``settings.for_account(name)`` carries that account's key and base URL (two
    names for the same key and host share one limiter, as they share the API's limit).
    """
    secret = settings.api_key.get_secret_value() if settings.api_key else ""
    return hashlib.sha256(f"{settings.api_base_url}\0{secret}".encode()).hexdigest()[:16]


def limiter_keys(settings: Settings) -> tuple[str, str]:
    """(tat, cooldown) keys: one limiter per API key and host."""
    return keys.rate_limit(account_hash(settings))


class RateLimiter:
    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        *,
        tat_key: str | None = None,
        rps: float | None = None,
        burst: int | None = None,
    ) -> None:
        """The account's limiter; ``tat_key``/``rps``/``burst``: another rate on the same account
        (the list-call cap of batched status), which the account's 429 cool-down holds too."""
        self.tat_key, self.cool_key = limiter_keys(settings)
        if tat_key is not None:
            self.tat_key = tat_key
        rps = settings.rate_limit_rps if rps is None else rps
        burst = settings.rate_limit_burst if burst is None else burst
        self.interval_us = int(1_000_000 / rps) if rps > 0 else 0
        self.tolerance_us = self.interval_us * max(0, burst - 1)
        self._acquire = scripts.load(client, "seedance_worker", "acquire")
        self._cool = scripts.load(client, "seedance_worker", "cool_down")

    def __repr__(self) -> str:
        return f"RateLimiter(interval_us={self.interval_us})"

    def acquire(self) -> Permit:
        """Reserve the next request slot (or learn how long the 429 cool-down still runs)."""
        return self._reserve()

    def try_acquire(self) -> Permit:
        """``acquire`` for a caller that will not wait for its slot: told to wait, it reserves
        nothing (a batched round's chunk is deferred instead; refusals that reserved slots pushed
        the next allowed call ever further ahead until no list call went at all)."""
        return self._reserve("try")

    def _reserve(self, *mode: str) -> Permit:
        self._write_unwritten()
        wait_us, kind = self._acquire(
            keys=[self.tat_key, self.cool_key], args=[self.interval_us, self.tolerance_us, *mode]
        )
        return Permit(int(wait_us) / 1_000_000, PERMIT_KINDS[int(kind)])

    def cooldown_left(self) -> float:
        """Seconds the 429 cool-down still runs (0: none); reserves no slot."""
        self._write_unwritten()
        wait_us, kind = self._acquire(keys=[self.tat_key, self.cool_key], args=[0, 0])
        return int(wait_us) / 1_000_000 if int(kind) == 2 else 0.0

    def cool_down(self, seconds: float) -> None:
        """After a 429: hold every worker's requests for this API key for ``seconds``.

        When Redis cannot take it, the error is raised as before, and the cool-down is kept here
        for this process's next ``acquire`` / ``cooldown_left``.
        """
        seconds = max(0.0, seconds)
        try:
            self._cool(keys=[self.cool_key], args=[seconds])
        except redis.RedisError:
            until = time.monotonic() + seconds
            _UNWRITTEN[self.cool_key] = max(until, _UNWRITTEN.get(self.cool_key, 0.0))
            raise

    def _write_unwritten(self) -> None:
        """Write a cool-down kept in the process (Redis was down at the 429) before reading Redis's."""
        until = _UNWRITTEN.get(self.cool_key)
        if until is None:
            return
        left = until - time.monotonic()
        if left > 0:
            self._cool(keys=[self.cool_key], args=[left])  # raises while Redis is still down
        _UNWRITTEN.pop(self.cool_key, None)


def has_unwritten_cooldown(settings: Settings) -> bool:
    """Does this process hold a 429 cool-down of this account that Redis has not got yet?"""
    return limiter_keys(settings)[1] in _UNWRITTEN
