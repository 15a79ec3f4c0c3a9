"""The pure decision of a poll: what to do after one read of a job's status.

``decide()`` is a pure function over (job record, what the GET or a batched list call gave, now):
finish the job, or read it again after a countdown, with the fields to write. The poll task
(poll.py) and a batched round (batch.py) both carry out its verdict.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from seedance_worker import errors
from seedance_worker.engine.schedule import DEFAULT_EXPIRES_AFTER_S, Schedule, Uniform
from seedance_worker.engine.store import JobRecord
from seedance_worker.models import Outcome, TaskSnapshot, bounded_snapshot

LAST_ERROR_MAX_CHARS = 500  # last_error lives in the job record and in `seedance-worker jobs`
# A read got through: no error streak, no error and no Retry-After wait left to keep (not stored).
READ_CLEARS: dict[str, Any] = {"error_streak": 0, "last_error": None, "not_before": None}


@dataclass(frozen=True)
class Reschedule:
    countdown_s: float
    fields: dict[str, Any] = field(default_factory=dict)
    called_api: bool = True


@dataclass(frozen=True)
class Finish:
    status: str  # succeeded | failed | expired | cancelled | not_found
    error: dict[str, Any] | None = None


def decide(
    record: JobRecord,
    result: TaskSnapshot | errors.SeedanceError,
    *,
    now: float,
    schedule: Schedule,
    rng: Uniform | None = None,
) -> Reschedule | Finish:
    """What to do after one GET (``result`` is the snapshot or the error it raised)."""
    rng = rng or random
    snap = result if isinstance(result, TaskSnapshot) else None
    created_at = snap.created_at if snap is not None and snap.created_at is not None else record.created_at
    expires = snap.execution_expires_after if snap is not None else None
    deadline = schedule.deadline(created_at, expires or record.expires_after, record.tracked_at or now)
    if snap is not None and snap.is_terminal:
        error = bounded_snapshot(snap).get("error") if snap.error else None
        return Finish(snap.status_text, error)
    if isinstance(result, errors.TaskNotFound) and not _early(record, now, schedule):
        return Finish("not_found", {"code": result.code or "NotFound", "message": result.message})
    if now > deadline:
        return Finish(
            "expired",
            {"code": "DeadlineExceeded", "message": "no terminal status by created_at + expiry + grace"},
        )
    if snap is not None:
        same = record.status == snap.status_text
        status_polls = record.status_polls + 1 if same else 1
        countdown = schedule.next_countdown(status=snap.status_text, polls_in_status=status_polls, rng=rng)
        return Reschedule(
            countdown,
            {"status": snap.status_text, "status_polls": status_polls, **READ_CLEARS},
        )
    assert isinstance(result, errors.SeedanceError)
    if isinstance(result, errors.RateLimited):
        # A 429 says nothing about the job: it does not count as an error against it.
        retry_after = result.retry_after_s if result.retry_after_s is not None else schedule.min_interval_s
        countdown = schedule.next_countdown(
            status=record.status, polls_in_status=record.status_polls, retry_after_s=retry_after, rng=rng
        )
        return Reschedule(countdown, {"not_before": now + retry_after, "last_error": _describe(result)})
    streak = record.error_streak + 1
    countdown = schedule.next_countdown(status=record.status, error_streak=streak, rng=rng)
    return Reschedule(countdown, {"error_streak": streak, "last_error": _describe(result)})


def advance_fields(
    record: JobRecord, decision: Reschedule, now: float, snap: TaskSnapshot | None
) -> dict[str, Any]:
    """What a non-terminal read writes to the job record (a poll run, or a batched round)."""
    fields = dict(decision.fields)
    fields.update(
        polls=record.polls + (1 if decision.called_api else 0),
        next_due_at=now + decision.countdown_s,
        updated_at=now,
    )
    if snap is not None and snap.created_at is not None and record.created_at is None:
        # Only what the deadline needs: the full body is kept once, in the Outcome, at the end
        # (a small record keeps Redis at a few hundred bytes per in-flight job).
        fields["created_at"] = snap.created_at
        if snap.execution_expires_after != DEFAULT_EXPIRES_AFTER_S:  # None (not stored) means it
            fields["expires_after"] = snap.execution_expires_after
    if snap is not None and snap.service_tier == "flex" and record.service_tier != "flex":
        fields["service_tier"] = "flex"  # a batched list call must ask for flex to see it
    return fields


def terminal_fields(
    record: JobRecord,
    status: str,
    error: dict[str, Any] | None,
    now: float,
    *,
    polls: int,
    snapshot: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What ending a job writes to its record, its Outcome included (a poll's terminal read, a
    cancel)."""
    outcome = Outcome(
        task_id=record.task_id,
        status=status,  # type: ignore[arg-type]
        snapshot=snapshot,
        metadata=record.metadata,
        polls=polls,
        tracked_at=record.tracked_at,
        terminal_at=now,
        error=error,
        account=record.account,
        submitted=record.submitted,
    ).wire()
    return {
        "status": status,
        "outcome": outcome,
        "polls": polls,
        "terminal_at": now,
        "updated_at": now,
        "next_due_at": None,
        "end_reason": (error or {}).get("code"),
    }


def _early(record: JobRecord, now: float, schedule: Schedule) -> bool:
    """Is it still too soon after the task's creation for a 404 to mean it is gone?"""
    born = record.created_at if record.created_at is not None else record.tracked_at
    return born is not None and now - born < schedule.not_found_grace_s


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if len(text) <= LAST_ERROR_MAX_CHARS:
        return text
    half = LAST_ERROR_MAX_CHARS // 2
    return f"{text[:half]} ... {text[-half:]}"  # the class up front, the status and code at the end


def wait_for_not_before(record: JobRecord, *, now: float, schedule: Schedule) -> Reschedule | None:
    """A job told to wait (429 Retry-After) is not polled before then; no GET is spent on it."""
    if record.not_before is None or now >= record.not_before:
        return None
    return Reschedule(min(record.not_before - now + 0.05, schedule.countdown_cap_s), {}, called_api=False)
