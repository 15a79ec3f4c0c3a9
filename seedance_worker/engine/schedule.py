"""When to poll next: one pure function, no I/O, unit-tested rule by rule.

Rules (each one is a test in tests/test_schedule.py):

1. The first poll comes ``first_delay_s`` after tracking (the only countdown below the minimum),
   jittered by ``first_jitter_ratio`` either way: ids tracked together do not all poll at once.
2. ``queued`` polls start slower than ``running`` ones: a queue wait is long and says little.
3. Intervals grow by ``backoff_factor`` per poll in the same status, toward ``max_interval_s``
   (``running_backoff_factor`` for running jobs; by default they stay flat, see bench/detection.py).
4. Full jitter between the minimum and the grown interval, so thousands of jobs spread out.
5. A 429's ``Retry-After`` is a floor: the next poll never comes earlier.
6. Errors that may pass (5xx, network, malformed body) back off exponentially (x2 per error) up to
   the maximum interval, and never end the job: only the deadline does.
7. Every countdown is capped at ``countdown_cap_s`` (well below the broker's visibility timeout);
   a longer ``Retry-After`` wait is served as several capped hops (the poll re-checks ``not_before``).
8. Past ``created_at + execution_expires_after + deadline_grace_s`` the job ends as expired even if
   the server never says so. A ``created_at`` that cannot be the task's (<= 0, more than the API's
   7-day retention before tracking, or more than a day after it) counts from ``tracked_at``
   instead, and an ``execution_expires_after`` <= 0 is the API's default: a bad clock or a bad
   body never ends a running job early.
9. A 404 within ``not_found_grace_s`` of the task's creation (or, not knowing it, of tracking) is
   a gateway that has not seen the task yet: retried with the error backoff, not the end.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol

from seedance_worker.settings import Settings

DEFAULT_EXPIRES_AFTER_S = 172_800  # the API's default execution_expires_after (48 h)
TASK_RETENTION_S = 7 * 86_400  # the API forgets a task after 7 days: no deadline lies beyond that
CLOCK_SKEW_S = 86_400  # a created_at this far after tracking is a wrong clock, not a task
ROUND_START_S = 0.005  # a round starts this long after its grid time


class Uniform(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True)
class Schedule:
    first_delay_s: float = 1.0
    min_interval_s: float = 2.0
    max_interval_s: float = 30.0
    queued_interval_s: float = 10.0
    running_interval_s: float = 4.0
    backoff_factor: float = 1.5
    deadline_grace_s: float = 900.0
    countdown_cap_s: float = 300.0
    running_backoff_factor: float | None = None  # None: the same growth as queued
    not_found_grace_s: float = 0.0  # a 404 this soon after creation (or tracking) is retried
    first_jitter_ratio: float = 0.0  # the first poll at first_delay_s x (1 +- ratio)

    @classmethod
    def from_settings(cls, s: Settings) -> Schedule:
        if s.status_source == "batch":
            # A job is read in a round with many others, so a read is cheap: running jobs every
            # round, queued ones every batch_queued_interval_s, both flat. Growing the queued
            # interval saved no call (the round's list call is made for the running jobs anyway)
            # and let a task that left the queue run to its end unseen: p95 detection 11.8-19.5 s
            # with growth, 2.0 s flat (bench/budget.py, one account at its caps).
            return cls(
                first_delay_s=s.poll_first_delay_s,
                first_jitter_ratio=s.poll_first_jitter_ratio,
                min_interval_s=min(s.poll_min_interval_s, s.batch_round_s),
                max_interval_s=max(s.poll_max_interval_s, s.batch_queued_interval_s),
                queued_interval_s=s.batch_queued_interval_s,
                running_interval_s=s.batch_round_s,
                backoff_factor=1.0,
                deadline_grace_s=s.poll_deadline_grace_s,
                countdown_cap_s=s.poll_countdown_cap_s,
                running_backoff_factor=1.0,
                not_found_grace_s=s.not_found_grace_s,
            )
        return cls(
            first_delay_s=s.poll_first_delay_s,
            min_interval_s=s.poll_min_interval_s,
            max_interval_s=s.poll_max_interval_s,
            queued_interval_s=s.poll_queued_interval_s,
            running_interval_s=s.poll_running_interval_s,
            backoff_factor=s.poll_backoff_factor,
            deadline_grace_s=s.poll_deadline_grace_s,
            countdown_cap_s=s.poll_countdown_cap_s,
            running_backoff_factor=s.poll_running_backoff_factor,
            first_jitter_ratio=s.poll_first_jitter_ratio,
        )

    def first_countdown(self, rng: Uniform | None = None) -> float:
        """Seconds until a newly tracked job's first poll: around ``first_delay_s``, never exactly
        the same for jobs tracked in one call (their GETs would all land in the same second)."""
        first = self.first_delay_s
        if self.first_jitter_ratio > 0 and first > 0:
            spread = first * min(1.0, self.first_jitter_ratio)
            first = (rng or random).uniform(first - spread, first + spread)
        return min(first, self.countdown_cap_s)

    def base_interval(self, status: str | None, polls_in_status: int) -> float:
        """The un-jittered interval after ``polls_in_status`` polls that all saw ``status``."""
        if status == "queued":
            base, factor = self.queued_interval_s, self.backoff_factor
        else:
            # A running job ends soon; detection delay matters more there than GETs saved.
            base = self.running_interval_s
            factor = self.running_backoff_factor or self.backoff_factor
        grown = base * factor ** max(0, polls_in_status - 1)
        return _clamp(grown, self.min_interval_s, self.max_interval_s)

    def error_interval(self, error_streak: int) -> float:
        grown = self.min_interval_s * 2.0 ** max(0, error_streak - 1)
        return _clamp(grown, self.min_interval_s, self.max_interval_s)

    def next_countdown(
        self,
        *,
        status: str | None,
        polls_in_status: int = 1,
        error_streak: int = 0,
        retry_after_s: float | None = None,
        rng: Uniform | None = None,
    ) -> float:
        """Seconds until the next poll of one job."""
        rng = rng or random
        ceiling = (
            self.error_interval(error_streak)
            if error_streak > 0
            else self.base_interval(status, polls_in_status)
        )
        countdown = rng.uniform(self.min_interval_s, ceiling) if ceiling > self.min_interval_s else ceiling
        if retry_after_s is not None and retry_after_s > 0:
            # A little on top so this job does not land exactly with every other job told the same.
            countdown = max(countdown, retry_after_s + rng.uniform(0.05, 0.05 + 0.1 * retry_after_s))
        return min(countdown, self.countdown_cap_s)

    def deadline(self, created_at: float | None, expires_after_s: float | None, tracked_at: float) -> float:
        """The time after which a job is ended as expired even if the server never says so."""
        plausible = (
            created_at is not None
            and created_at > 0
            and tracked_at - TASK_RETENTION_S <= created_at <= tracked_at + CLOCK_SKEW_S
        )
        start = created_at if plausible and created_at is not None else tracked_at
        window = expires_after_s if expires_after_s is not None and expires_after_s > 0 else None
        window = min(window or DEFAULT_EXPIRES_AFTER_S, TASK_RETENTION_S)
        return start + window + self.deadline_grace_s


def on_grid(t: float, round_s: float) -> float:
    """``t`` rounded up to the fleet's round grid: jobs due in the same round are read together."""
    return math.ceil(t / round_s) * round_s


def next_round(settings: Settings, now: float, countdown_s: float, *, read_round: float) -> float:
    """Batched status: the round that reads again a job read in the round due at ``read_round``.

    The wait counts from that round's grid time, not from when a dispatcher tick got to it (a
    round runs up to a tick late, plus the list call): counted from the wall clock, a wait of one
    round always landed two rounds on, so running jobs were read every other round. Never the
    round being read, however late it runs."""
    round_s = settings.batch_round_s
    after_now = math.floor(now / round_s) * round_s + round_s
    return max(on_grid(read_round + countdown_s, round_s), after_now)


def park_time(settings: Settings, now: float, countdown_s: float, *, slot: bool = False) -> float:
    """When to park the next read (0: a countdown message instead).

    A long wait is parked in Redis (dispatch.py publishes it when due) instead of a countdown
    message that a worker would hold in memory, unacked, for the whole wait. With batched status
    every wait is parked, on the round grid, for the next round to read (batch.py)."""
    if settings.status_source == "batch":
        return on_grid(now + countdown_s, settings.batch_round_s)
    if 0 < settings.poll_park_after_s < countdown_s and not slot:
        return now + countdown_s
    return 0.0


def next_tick_s(now: float, interval_s: float, round_s: float | None) -> float:
    """How long the dispatcher waits for its next tick: ``interval_s``, or with batched status
    (``round_s``) less when a grid time comes first, so each round starts right on its grid time
    (a hair after, so the claim covers it) instead of up to a tick later."""
    if round_s is None:
        return interval_s
    to_grid = (math.floor(now / round_s) + 1) * round_s - now + ROUND_START_S
    return min(interval_s, to_grid)


def _clamp(value: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, value))


# --- leases: how long the sweeper leaves a job alone before it counts its message as lost ----------

RUN_SLACK_S = 2.0  # on top of the HTTP timeouts: a begun poll's lease covers its GET and its advance


def waiting_lease(settings: Settings, countdown_s: float, now: float) -> float:
    """A message waiting for its countdown or in the queue: re-driven this long after it was due
    (plus the fleet's current lag, see sweep.py)."""
    return now + max(0.0, countdown_s) + settings.poll_lease_grace_s


def running_lease(settings: Settings, now: float) -> float:
    """A poll that has begun: its one GET may take the connect and read timeouts, then it advances."""
    return now + settings.http_connect_timeout_s + settings.http_read_timeout_s + RUN_SLACK_S


def handoff_lease(settings: Settings, now: float) -> float:
    """A downstream chain: long steps extend it as they go; a chain silent this long was lost."""
    return now + max(settings.handoff_lease_s, settings.download_timeout_s * 2)
