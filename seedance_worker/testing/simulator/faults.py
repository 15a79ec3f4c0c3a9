"""Which injected fault a task-API request meets: 429 bursts and per-task limits set by the test,
the ``rps_limit`` token bucket (and ``list_rps_limit``'s, for list calls only), and the random
5xx / 429 / timeout / malformed draws.
"""

from __future__ import annotations

import math
import random
import time

from seedance_worker.testing.simulator.config import RequestKind, SimConfig
from seedance_worker.testing.simulator.wire import ApiError, rate_limited


def bucket_size(cfg: SimConfig) -> float:
    if cfg.rps_limit is None:
        return 0.0
    return cfg.rps_burst if cfg.rps_burst is not None else max(1.0, cfg.rps_limit)


def list_bucket_size(cfg: SimConfig) -> float:
    if cfg.list_rps_limit is None:
        return 0.0
    return cfg.list_rps_burst if cfg.list_rps_burst is not None else max(1.0, cfg.list_rps_limit)


class _Bucket:
    """A token bucket refilled at ``rate`` per second up to ``size``; a request takes one token."""

    def __init__(self, size: float) -> None:
        self.tokens = size
        self.at = time.monotonic()

    def take(self, rate: float, size: float, fault: str) -> None:
        mono = time.monotonic()
        self.tokens = min(size, self.tokens + (mono - self.at) * rate)
        self.at = mono
        if self.tokens < 1.0:
            raise rate_limited(max(1, math.ceil((1.0 - self.tokens) / rate)), fault)
        self.tokens -= 1.0


class FaultGate:
    """The fault state; every method expects the caller to hold the simulator's lock.

    Limits run on ``time.monotonic()`` (real seconds), not on the simulator clock, so a burst ends
    on time even under an injected clock that stands still.
    """

    def __init__(self, cfg: SimConfig) -> None:
        self._rng = random.Random(cfg.seed)
        self._bucket = _Bucket(bucket_size(cfg))
        self._list_bucket = _Bucket(list_bucket_size(cfg))
        self._burst_until = 0.0
        self._burst_retry_after = 1
        self._task_limits: dict[str, tuple[float, int]] = {}

    def reseed(self, seed: int | None) -> None:
        self._rng = random.Random(seed)

    def refill(self, cfg: SimConfig) -> None:
        """Full buckets for a changed ``rps_limit`` / ``rps_burst`` (or their ``list_`` twins)."""
        self._bucket = _Bucket(bucket_size(cfg))
        self._list_bucket = _Bucket(list_bucket_size(cfg))

    def burst(self, duration_s: float, retry_after_s: int) -> None:
        self._burst_until = time.monotonic() + duration_s
        self._burst_retry_after = int(retry_after_s)

    def limit_task(self, task_id: str, end_mono: float, retry_after_s: int) -> None:
        self._task_limits[task_id] = (end_mono, int(retry_after_s))

    def clear(self) -> None:
        self._task_limits.clear()
        self._burst_until = 0.0

    def forget(self, task_id: str) -> None:
        self._task_limits.pop(task_id, None)

    def decide(self, kind: RequestKind, task_id: str | None, cfg: SimConfig) -> str | None:
        """Raise the 429s/500s due for this request; return "timeout"/"malformed" or None."""
        mono = time.monotonic()
        if mono < self._burst_until:
            ra = self._burst_retry_after
            raise rate_limited(ra, "429_burst")
        if task_id is not None and task_id in self._task_limits:
            end, ra = self._task_limits[task_id]
            if mono < end:
                raise rate_limited(ra, "429_task")
            del self._task_limits[task_id]
        if cfg.rps_limit is not None and cfg.rps_limit > 0:
            self._bucket.take(cfg.rps_limit, bucket_size(cfg), "rps_limit")
        if kind == "list" and cfg.list_rps_limit is not None and cfg.list_rps_limit > 0:
            self._list_bucket.take(cfg.list_rps_limit, list_bucket_size(cfg), "list_rps_limit")
        if cfg.timeout_rate > 0 and self._rng.random() < cfg.timeout_rate:
            return "timeout"
        if cfg.error_rate_5xx > 0 and self._rng.random() < cfg.error_rate_5xx:
            raise ApiError(
                500,
                "InternalServiceError",
                "The service encountered an unexpected internal error.",
                fault="5xx",
            )
        if cfg.rate_429 > 0 and self._rng.random() < cfg.rate_429:
            raise rate_limited(int(cfg.retry_after_s), "429")
        if cfg.malformed_rate > 0 and self._rng.random() < cfg.malformed_rate:
            return "malformed"
        return None
