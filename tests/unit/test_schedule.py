"""The poll schedule, one rule per test (seedance_worker/engine/schedule.py docstring)."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import random

import pytest

from seedance_worker import errors
from seedance_worker.engine.decide import Finish, Reschedule, decide, wait_for_not_before
from seedance_worker.engine.schedule import Schedule
from seedance_worker.engine.store import JobRecord
from seedance_worker.models import TaskSnapshot
from seedance_worker.settings import load_settings
from seedance_worker.track import first_countdowns

S = Schedule(first_delay_s=1, min_interval_s=2, max_interval_s=30, queued_interval_s=10,
             running_interval_s=4, backoff_factor=1.5, deadline_grace_s=900, countdown_cap_s=300)  # fmt: skip


class Top:
    """An rng that always picks the top of the range (the un-jittered interval)."""

    def uniform(self, a: float, b: float) -> float:
        return max(a, b)


class Bottom:
    def uniform(self, a: float, b: float) -> float:
        return min(a, b)


def test_first_poll_comes_soon_even_below_the_minimum() -> None:
    """Rule 1: the first countdown is first_delay_s, the only one below the minimum."""
    assert S.first_countdown() == 1 < S.min_interval_s


def test_first_poll_is_jittered_around_the_first_delay() -> None:
    """Rule 1: with first_jitter_ratio r the first countdown lies in first_delay_s x [1 - r, 1 + r]."""
    j = dataclasses.replace(S, first_delay_s=4, first_jitter_ratio=0.5)
    assert (j.first_countdown(Bottom()), j.first_countdown(Top())) == (2, 6)
    rng = random.Random(7)
    values = [j.first_countdown(rng) for _ in range(2000)]
    assert min(values) >= 2 and max(values) <= 6 and len({round(v, 3) for v in values}) > 1500
    assert 3.8 < sum(values) / len(values) < 4.2  # centred: the mean first poll does not move
    assert dataclasses.replace(j, first_jitter_ratio=0).first_countdown(Top()) == 4
    assert dataclasses.replace(j, first_delay_s=0).first_countdown(Top()) == 0
    assert dataclasses.replace(j, first_delay_s=400).first_countdown(Top()) == S.countdown_cap_s


def test_ids_tracked_together_get_first_polls_spread_over_seconds() -> None:
    """130 ids in one track_many(): with the default settings (5 s +- 50 %) no second of the
    five holds more than a third of the first polls, and they land on ~130 different milliseconds."""
    schedule = Schedule.from_settings(load_settings({}))
    countdowns = first_countdowns(schedule, 130, random.Random(3))
    assert min(countdowns) >= 2.5 and max(countdowns) <= 7.5
    per_second = collections.Counter(int(c) for c in countdowns)
    assert max(per_second.values()) < 130 / 3
    assert len({round(c, 3) for c in countdowns}) > 120


def test_queued_is_polled_slower_than_running() -> None:
    """Rule 2: queued starts at 10 s, running at 4 s."""
    assert S.next_countdown(status="queued", rng=Top()) == 10
    assert S.next_countdown(status="running", rng=Top()) == 4


def test_intervals_grow_toward_the_ceiling() -> None:
    """Rule 3: x1.5 per poll in the same status, never above max_interval_s."""
    seq = [S.next_countdown(status="running", polls_in_status=n, rng=Top()) for n in range(1, 12)]
    assert seq[:3] == [4, 6, 9]
    assert all(b >= a for a, b in itertools.pairwise(seq))
    assert max(seq) == 30 and seq[-1] == 30


def test_full_jitter_spreads_jobs_between_min_and_interval() -> None:
    """Rule 4: countdowns spread over [min, interval], not all the same."""
    rng = random.Random(1)
    values = [S.next_countdown(status="running", polls_in_status=8, rng=rng) for _ in range(2000)]
    assert min(values) >= 2 and max(values) <= 30
    assert max(values) - min(values) > 20  # a wide spread, not lockstep
    assert len({round(v, 3) for v in values}) > 1500


def test_retry_after_is_a_floor() -> None:
    """Rule 5: never earlier than Retry-After, even when the interval is shorter."""
    for rng in (Top(), Bottom(), random.Random(3)):
        c = S.next_countdown(status="running", retry_after_s=7, rng=rng)
        assert c >= 7
    assert S.next_countdown(status="running", polls_in_status=20, retry_after_s=3, rng=Top()) == 30


def test_errors_back_off_exponentially_within_the_bounds() -> None:
    """Rule 6: 2, 4, 8, 16, 30, 30 ... seconds after consecutive errors."""
    seq = [S.next_countdown(status="running", error_streak=n, rng=Top()) for n in range(1, 8)]
    assert seq == [2, 4, 8, 16, 30, 30, 30]


def test_every_countdown_is_capped() -> None:
    """Rule 7: a long Retry-After is capped at countdown_cap_s (served in hops)."""
    assert S.next_countdown(status="queued", retry_after_s=5000, rng=Top()) == 300


def test_deadline_from_created_at_and_expiry() -> None:
    """Rule 8: created_at + execution_expires_after + grace; tracked_at when created_at is unknown."""
    assert S.deadline(1000, 3600, 50) == 1000 + 3600 + 900
    assert S.deadline(None, None, 50) == 50 + 172800 + 900


REC = JobRecord(task_id="cgt-1", tracked_at=1_000.0, status="running", status_polls=2)


def snap(status: str, **kw: object) -> TaskSnapshot:
    return TaskSnapshot.model_validate({"id": "cgt-1", "status": status, "created_at": 1000,
                                        "execution_expires_after": 3600, **kw})  # fmt: skip


def test_decide_terminal_statuses_finish() -> None:
    """Each terminal status ends the job with that status; failed keeps the error."""
    for status in ("succeeded", "failed", "expired", "cancelled"):
        d = decide(REC, snap(status), now=1100, schedule=S)
        assert isinstance(d, Finish) and d.status == status
    d = decide(REC, snap("failed", error={"code": "X", "message": "m"}), now=1100, schedule=S)
    assert isinstance(d, Finish) and d.error == {"code": "X", "message": "m"}


def test_decide_not_found_ends_the_job() -> None:
    """A 404 ends the job as not_found."""
    d = decide(REC, errors.TaskNotFound("gone", None, 404, "ResourceNotFound", "r1"), now=1100, schedule=S)
    assert isinstance(d, Finish) and d.status == "not_found"


def test_decide_counts_polls_in_the_same_status() -> None:
    """A repeated status grows the interval; a new status starts again."""
    same = decide(REC, snap("running"), now=1100, schedule=S, rng=Top())
    assert isinstance(same, Reschedule) and same.fields["status_polls"] == 3 and same.countdown_s == 9
    new = decide(REC, snap("queued"), now=1100, schedule=S, rng=Top())
    assert isinstance(new, Reschedule) and new.fields["status_polls"] == 1 and new.countdown_s == 10


def test_decide_undocumented_status_keeps_polling() -> None:
    """An undocumented status is not terminal: poll on."""
    d = decide(REC, snap("warming_up"), now=1100, schedule=S)
    assert isinstance(d, Reschedule)


def test_decide_expires_after_the_deadline_even_without_the_server() -> None:
    """Past created_at + expiry + grace, a still-running job ends as expired."""
    d = decide(REC, snap("running"), now=1000 + 3600 + 901, schedule=S)
    assert isinstance(d, Finish) and d.status == "expired" and d.error is not None


def test_decide_errors_never_give_up_before_the_deadline() -> None:
    """A long streak of 5xx keeps polling at the max interval until the deadline."""
    rec = JobRecord(task_id="cgt-1", tracked_at=1000.0, status="running", error_streak=500)
    d = decide(rec, errors.ServerError("boom", 500), now=1200, schedule=S, rng=Top())
    assert isinstance(d, Reschedule) and d.countdown_s == 30 and d.fields["error_streak"] == 501


def test_decide_429_does_not_count_as_an_error_and_sets_not_before() -> None:
    """A 429 sets not_before = now + Retry-After and leaves the error streak alone."""
    rec = JobRecord(task_id="cgt-1", tracked_at=1000.0, status="running", error_streak=2)
    d = decide(rec, errors.RateLimited("slow", 429, retry_after_s=7), now=1200, schedule=S, rng=Bottom())
    assert isinstance(d, Reschedule) and d.countdown_s >= 7
    assert d.fields["not_before"] == 1207 and "error_streak" not in d.fields


def test_not_before_holds_the_next_get() -> None:
    """A job told to wait is rescheduled without a GET until not_before."""
    rec = JobRecord(task_id="cgt-1", not_before=1207.0)
    w = wait_for_not_before(rec, now=1200, schedule=S)
    assert w is not None and not w.called_api and w.countdown_s >= 7
    assert wait_for_not_before(rec, now=1207.5, schedule=S) is None


@pytest.mark.parametrize("streak", [0, 1, 5])
def test_decide_bounds_stay_within_min_and_max(streak: int) -> None:
    """Without Retry-After, every countdown lies within [min, max]."""
    rng = random.Random(streak)
    rec = JobRecord(task_id="cgt-1", tracked_at=1000.0, status="queued", error_streak=streak)
    for _ in range(200):
        result: TaskSnapshot | errors.SeedanceError = (
            snap("queued") if streak == 0 else errors.ServerError("x")
        )
        d = decide(rec, result, now=1100, schedule=S, rng=rng)
        assert isinstance(d, Reschedule) and 2 <= d.countdown_s <= 30


def test_running_jobs_can_stay_flat_while_queued_ones_grow() -> None:
    """With running_backoff_factor=1, running polls stay at their interval; queued ones still grow."""
    s = Schedule(min_interval_s=3, max_interval_s=60, queued_interval_s=15, running_interval_s=5,
                 backoff_factor=1.5, running_backoff_factor=1.0)  # fmt: skip
    assert [s.base_interval("running", n) for n in (1, 5, 20)] == [5, 5, 5]
    assert [s.base_interval("queued", n) for n in (1, 2, 3, 10)] == [15, 22.5, 33.75, 60]


# --- issue 14: a created_at or expiry no task can have never ends a running job ---------------------


T = 1_785_911_412.0  # a tracked_at of 2026


@pytest.mark.parametrize("created_at", [0, -1, -(2**62), 1, T - 8 * 86_400, T + 2 * 86_400, 2**62])
def test_an_implausible_created_at_counts_from_tracked_at(created_at: float) -> None:
    """<= 0, before the API's 7-day retention or a day after tracking: the deadline counts from
    tracked_at, as if created_at were unknown."""
    assert S.deadline(created_at, 3600, T) == T + 3600 + 900
    assert S.deadline(T - 6 * 86_400, 3600, T) == T - 6 * 86_400 + 3600 + 900  # a 6-day-old task is real


@pytest.mark.parametrize("expires", [0, -5, -(2**62)])
def test_a_non_positive_expiry_is_the_api_default(expires: int) -> None:
    assert S.deadline(1000, expires, 1000) == 1000 + 172_800 + 900


def test_an_expiry_longer_than_retention_is_capped() -> None:
    """No deadline lies beyond the 7 days the API keeps a task (a 404 ends the job after that)."""
    assert S.deadline(1000, 2**62, 1000) == 1000 + 7 * 86_400 + 900


@pytest.mark.parametrize("created_at", [0, -1])
def test_decide_keeps_polling_a_running_job_whose_created_at_is_not_positive(created_at: int) -> None:
    """The server says running with created_at <= 0: the job polls on, it does not end expired."""
    rec = JobRecord(task_id="cgt-1", tracked_at=T, status="running", status_polls=2)
    d = decide(rec, snap("running", created_at=created_at), now=T + 100, schedule=S)
    assert isinstance(d, Reschedule)
    stored = JobRecord(task_id="cgt-1", tracked_at=T, status="running", created_at=float(created_at))
    assert isinstance(decide(stored, errors.ServerError("x", 500), now=T + 100, schedule=S), Reschedule)


def test_decide_keeps_the_error_of_a_failed_task_bounded() -> None:
    """The error dict a Finish carries into the Outcome is bounded like the snapshot."""
    d = decide(REC, snap("failed", error={"code": "X", "message": "m" * 50_000, "blob": "b" * 9000}),
               now=1100, schedule=S)  # fmt: skip
    assert isinstance(d, Finish) and d.error is not None
    assert "blob" not in d.error and len(d.error["message"]) < 4200
