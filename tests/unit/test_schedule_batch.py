"""The schedule of batched status: the round grid, parking, the early 404, what a read writes."""

from __future__ import annotations

import dataclasses

import pytest

from seedance_worker import errors
from seedance_worker.engine.decide import Finish, Reschedule, advance_fields, decide
from seedance_worker.engine.schedule import Schedule, next_round, next_tick_s, on_grid, park_time
from seedance_worker.engine.store import JobRecord
from seedance_worker.models import TaskSnapshot
from seedance_worker.settings import load_settings

S = Schedule(first_delay_s=1, min_interval_s=2, max_interval_s=30, queued_interval_s=10,
             running_interval_s=4, backoff_factor=1.5, deadline_grace_s=900, countdown_cap_s=300,
             not_found_grace_s=180)  # fmt: skip
NOT_FOUND = errors.TaskNotFound("gone", None, 404, "ResourceNotFound", "r1")


def snap(status: str, **kw: object) -> TaskSnapshot:
    return TaskSnapshot.model_validate({"id": "cgt-1", "status": status, "created_at": 1000,
                                        "execution_expires_after": 3600, **kw})  # fmt: skip


@pytest.mark.parametrize(("t", "expected"), [(10.0, 10.0), (10.1, 12.0), (11.99, 12.0), (0.0, 0.0)])
def test_times_round_up_to_the_round_grid(t: float, expected: float) -> None:
    assert on_grid(t, 2.0) == expected


def test_batch_mode_parks_every_wait_on_the_grid() -> None:
    """Short waits too: a countdown message would be a per-job poll, which batch mode avoids."""
    s = load_settings({"SEEDANCE_STATUS_SOURCE": "batch", "SEEDANCE_BATCH_ROUND_S": "2"})
    assert park_time(s, 100.3, 1.0) == 102.0
    assert park_time(s, 100.3, 0.0) == 102.0  # never in the round being read
    assert park_time(s, 100.0, 30.0) == 130.0


def test_a_wait_read_in_a_round_counts_from_that_round() -> None:
    """A running job (wait = one round) read by a tick 0.3 s after its round is read in the next
    round, not two rounds on; a round that runs very late never parks a job into itself."""
    s = load_settings({"SEEDANCE_STATUS_SOURCE": "batch", "SEEDANCE_BATCH_ROUND_S": "2"})
    assert next_round(s, 100.3, 2.0, read_round=100.0) == 102.0
    assert park_time(s, 100.3, 2.0) == 104.0  # the wall-clock count (first polls, deferrals)
    assert next_round(s, 101.9, 7.1, read_round=100.0) == 108.0
    assert next_round(s, 100.0, 0.0, read_round=100.0) == 102.0
    assert next_round(s, 105.1, 2.0, read_round=100.0) == 106.0  # 5 s late: the next round


@pytest.mark.parametrize(("now", "expected"), [(100.0, 0.5), (101.7, 0.305), (101.995, 0.01)])
def test_the_dispatcher_ticks_on_the_round_grid_in_batch_mode(now: float, expected: float) -> None:
    """Every tick interval, or sooner when a grid time (2 s) comes first: a round starts 5 ms after
    its grid time, not up to a tick later; per-job mode ticks at its interval."""
    assert next_tick_s(now, 0.5, 2.0) == pytest.approx(expected)
    assert next_tick_s(now, 0.5, None) == 0.5


def test_get_mode_parks_only_long_waits() -> None:
    s = load_settings({"SEEDANCE_STATUS_SOURCE": "get", "SEEDANCE_POLL_PARK_AFTER_S": "20"})
    assert park_time(s, 100.0, 5.0) == 0.0
    assert park_time(s, 100.0, 25.0) == 125.0
    assert park_time(s, 100.0, 25.0, slot=True) == 0.0


def test_batch_schedule_reads_running_jobs_every_round_and_queued_ones_less_often() -> None:
    s = load_settings({"SEEDANCE_STATUS_SOURCE": "batch", "SEEDANCE_BATCH_ROUND_S": "2",
                       "SEEDANCE_BATCH_QUEUED_INTERVAL_S": "10"})  # fmt: skip
    sched = Schedule.from_settings(s)
    assert sched.running_interval_s == 2.0 and sched.running_backoff_factor == 1.0
    assert sched.backoff_factor == 1.0  # queued reads flat too (bench/budget.py: detection)
    assert sched.queued_interval_s == 10.0 and sched.min_interval_s <= 2.0
    per_job = Schedule.from_settings(load_settings({"SEEDANCE_STATUS_SOURCE": "get"}))
    assert per_job.running_interval_s == 5.0


def test_an_early_404_is_retried_not_the_end() -> None:
    """new-api's rule: a gateway may 404 a task it has not seen yet, for a few minutes."""
    young = JobRecord(task_id="cgt-1", tracked_at=1000.0, created_at=1000.0, status="queued")
    d = decide(young, NOT_FOUND, now=1000 + 60, schedule=S)
    assert isinstance(d, Reschedule) and d.fields["error_streak"] == 1
    d = decide(young, NOT_FOUND, now=1000 + 181, schedule=S)
    assert isinstance(d, Finish) and d.status == "not_found"


def test_an_early_404_counts_from_tracking_when_the_creation_time_is_unknown() -> None:
    rec = JobRecord(task_id="cgt-1", tracked_at=5000.0)
    assert isinstance(decide(rec, NOT_FOUND, now=5100, schedule=S), Reschedule)
    assert isinstance(decide(rec, NOT_FOUND, now=5200, schedule=S), Finish)


def test_no_grace_ends_at_the_first_404() -> None:
    rec = JobRecord(task_id="cgt-1", tracked_at=1000.0, created_at=1000.0)
    d = decide(rec, NOT_FOUND, now=1001, schedule=dataclasses.replace(S, not_found_grace_s=0))
    assert isinstance(d, Finish) and d.status == "not_found"


def test_a_read_writes_counters_times_and_learns_the_deadline_once() -> None:
    rec = JobRecord(task_id="cgt-1", tracked_at=1000.0, status="queued", polls=3)
    s = snap("running")
    d = decide(rec, s, now=1100, schedule=S)
    assert isinstance(d, Reschedule)
    fields = advance_fields(rec, d, 1100.0, s)
    assert fields["polls"] == 4 and fields["updated_at"] == 1100.0
    assert fields["next_due_at"] == 1100.0 + d.countdown_s
    assert fields["created_at"] == 1000 and fields["expires_after"] == 3600
    known = dataclasses.replace(rec, created_at=1000.0, expires_after=3600)
    assert "created_at" not in advance_fields(known, d, 1100.0, s)


def test_a_read_learns_that_a_job_is_flex() -> None:
    """A flex task is invisible to a list call that does not ask for flex: the record must know."""
    rec = JobRecord(task_id="cgt-1", tracked_at=1000.0, status="queued")
    s = snap("queued", service_tier="flex")
    d = decide(rec, s, now=1100, schedule=S)
    assert isinstance(d, Reschedule)
    assert advance_fields(rec, d, 1100.0, s)["service_tier"] == "flex"
    assert "service_tier" not in advance_fields(rec, d, 1100.0, snap("queued"))


def test_a_deferred_read_does_not_count_as_a_poll() -> None:
    rec = JobRecord(task_id="cgt-1", tracked_at=1000.0, polls=3)
    fields = advance_fields(rec, Reschedule(5.0, {}, called_api=False), 1100.0, None)
    assert fields["polls"] == 3
