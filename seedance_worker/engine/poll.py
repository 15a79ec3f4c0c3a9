"""``seedance.poll``: one GET per run; not terminal -> the same message again with a countdown.

The task is thin: ``decide()`` is a pure function over (job record, what the GET gave, now) and the
task only carries out its verdict. Rescheduling re-publishes the *same* task id with the caller's
chain, links and errbacks (``signature_from_request``), so ``chain(poll.s(id), next.s())`` and
chords keep working and no worker slot is held while waiting. Each message carries the job's
generation ``gen``; a copy whose ``gen`` is no longer current is stale and raises ``Ignore`` without
calling the API (see store.py).
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

from celery import Task, shared_task
from celery.exceptions import Ignore
from pydantic import BaseModel, ConfigDict

from seedance_worker import connections, errors, metrics
from seedance_worker.client import get_client, validate_task_id
from seedance_worker.engine.handoff import fire_handoff
from seedance_worker.engine.jobs import POLL_TASK, registration_fields
from seedance_worker.engine.schedule import Schedule, Uniform, handoff_lease, running_lease, waiting_lease
from seedance_worker.engine.store import Begun, JobRecord, JobStore, get_store
from seedance_worker.models import Outcome, TaskSnapshot, bounded_snapshot
from seedance_worker.outage import survive_redis_outage
from seedance_worker.ratelimit import Permit, RateLimiter, limiter_keys
from seedance_worker.settings import Settings, get_settings

log = logging.getLogger(__name__)

INLINE_WAIT_S = 0.05  # a limiter wait this short is slept inline instead of a reschedule
LAST_ERROR_MAX_CHARS = 500  # last_error lives in the job record and in `seedance-worker jobs`


class PollOptions(BaseModel):
    """The ``options`` argument of ``seedance.poll`` (small, JSON)."""

    model_config = ConfigDict(extra="forbid")

    gen: int | None = None
    due: float | None = None  # when this message was scheduled to run (for lateness)
    slot: bool = False  # this run holds a rate-limiter reservation: go straight to the GET
    follow: bool = False
    metadata: dict[str, Any] | None = None
    on_succeeded: list[Any] | None = None
    on_failed: list[Any] | None = None


# --- the pure decision ----------------------------------------------------------------------------


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
    if isinstance(result, errors.TaskNotFound):
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
            {"status": snap.status_text, "status_polls": status_polls, "error_streak": 0, "last_error": None},
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


# --- the task -------------------------------------------------------------------------------------

_STATUS_ERRORS: dict[str, type[errors.GenerationFailed]] = {
    "failed": errors.GenerationFailed,
    "expired": errors.GenerationExpired,
    "cancelled": errors.GenerationCancelled,
    "not_found": errors.TaskNotFound,
}


def deliver(outcome: dict[str, Any]) -> dict[str, Any]:
    """Return a succeeded Outcome; raise the typed failure (carrying the Outcome) for the others."""
    status = outcome.get("status")
    if status == "succeeded":
        return outcome
    cls = _STATUS_ERRORS.get(str(status), errors.GenerationFailed)
    err = outcome.get("error") or {}
    detail = f": {err.get('code')}: {err.get('message')}" if err else ""
    raise cls(f"remote task {outcome.get('task_id')} ended {status}{detail}", outcome)


def _canvas_of(task: Task) -> dict[str, Any] | None:
    """The poll's own signature when the caller attached a chain, links, errbacks or a group."""
    req = task.request
    if not (req.chain or req.callbacks or req.errbacks or req.chord or req.group):
        return None
    sig = task.signature_from_request(req, (), {}, expires=None)
    data: dict[str, Any] = json.loads(json.dumps(dict(sig), default=str))
    data["args"], data["kwargs"] = [], {}
    for key in ("task_id", "countdown", "eta", "expires", "retries"):
        data.get("options", {}).pop(key, None)
    return data


class _Drop(Exception):
    """This copy of the message is done (rescheduled, parked, or stale): end it with Ignore."""


def _again(task: Task, task_id: str, options: dict[str, Any], countdown_s: float) -> NoReturn:
    """Re-publish this same message (same id, chain, links, errbacks) later, then drop this copy."""
    sig = task.signature_from_request(
        task.request,
        (task_id,),
        {"options": options},
        countdown=max(0.0, countdown_s),
        # An `expires` set by the caller is absolute and would revoke a later poll of the same id.
        expires=None,
    )
    sig.apply_async()
    raise _Drop()


@shared_task(
    bind=True,
    name=POLL_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
    throws=(errors.GenerationFailed,),
)
@survive_redis_outage
def poll(self: Task, task_id: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Poll one remote task once; return its Outcome when it has ended."""
    validate_task_id(task_id)
    opts = PollOptions.model_validate(options or {})
    settings = get_settings()
    try:
        return _Poller(self, task_id, opts, settings).run()
    except _Drop:
        pass
    # Raised here, at the top of the task, not deep in _Poller: Celery formats a traceback for
    # every Ignore, and its cost grows with the depth (measured: ~40 % of a poll's CPU).
    raise Ignore()


class _Poller:
    def __init__(self, task: Task, task_id: str, opts: PollOptions, settings: Settings) -> None:
        self.task = task
        self.task_id = task_id
        self.opts = opts
        self.settings = settings
        self.schedule = Schedule.from_settings(settings)
        self.store: JobStore = get_store(settings)
        self.celery_id: str = task.request.id or ""

    def run(self) -> dict[str, Any]:
        """adopt -> begin (the fence) -> gate (429s, the rate limit) -> fetch -> act on decide()."""
        now = time.time()
        if self.opts.due is not None:
            metrics.poll_lateness(now - self.opts.due)
        if self.opts.follow:
            return self.follow(now)
        gen = self.opts.gen if self.opts.gen is not None else self.adopt(now)
        if gen is None:
            return self.follow(now)
        begun = self.store.begin(
            self.task_id,
            gen,
            lease_at=running_lease(self.settings, now),
            max_crashes=self.settings.poll_max_crashes,
            cooldown_key=limiter_keys(self.settings)[1],
            lag_s=None if self.opts.due is None else now - self.opts.due,
        )
        record = self.fenced(begun, gen, now)
        if isinstance(record, dict):
            return record
        self.gate(record, gen, begun.cooldown_s, now)
        result = self.fetch(record)
        now = time.time()
        metrics.poll(result.status_text if isinstance(result, TaskSnapshot) else type(result).__name__)
        decision = decide(record, result, now=now, schedule=self.schedule)
        snap = result if isinstance(result, TaskSnapshot) else None
        if isinstance(decision, Finish):
            return self.finish(record, gen, decision, snap, now)
        return self.reschedule(record, gen, decision, now, snap)

    def adopt(self, now: float) -> int | None:
        """Entered from a user's canvas (poll.s(id)): register the job with this chain as owner.
        None when another chain owns it already (this one then follows it)."""
        fields = registration_fields(
            self.settings,
            metadata=self.opts.metadata,
            on_succeeded=self.opts.on_succeeded,
            on_failed=self.opts.on_failed,
        )
        canvas = _canvas_of(self.task)
        if canvas is not None:
            # Kept so a parked or re-driven poll is published with the caller's chain and links.
            fields["canvas"] = canvas
        reg = self.store.register(
            self.task_id,
            self.celery_id,
            now=now,
            lease_at=waiting_lease(self.settings, 0, now),
            fields=fields,
        )
        return 1 if reg.owner == self.celery_id else None

    def fenced(self, begun: Begun, gen: int, now: float) -> JobRecord | dict[str, Any]:
        """The record this run may poll, or the Outcome when the fence already ended the job."""
        record = begun.record
        if begun.verdict in ("stale", "missing") or record is None:
            log.info("poll %s gen=%s %s copy dropped", self.task_id, gen, begun.verdict)
            raise _Drop()
        if begun.verdict == "terminal":
            # A redelivered terminal poll: the hand-off already happened; give the caller's chain
            # the same Outcome again without calling the API or firing anything.
            log.info("poll %s gen=%s terminal copy: returning the recorded outcome", self.task_id, gen)
            return deliver(record.outcome or {})
        if begun.verdict == "crashloop":
            message = f"poll crashed its worker {begun.crashes} times"
            return self.finish(record, gen, Finish("failed", {"code": "PollCrashed", "message": message}),
                               None, now)  # fmt: skip
        return record

    def gate(self, record: JobRecord, gen: int, cooldown_s: float, now: float) -> None:
        """Return when this run may call the API; otherwise reschedule it (raises _Drop)."""
        wait = wait_for_not_before(record, now=now, schedule=self.schedule)
        if wait is not None:
            self.reschedule(record, gen, wait, now)
        if self.opts.slot and cooldown_s <= 0:
            return  # holds a limiter reservation made before: straight to the GET
        # A 429 cool-down (read by begin) holds every poll, even one holding a limiter slot
        # reserved before the 429. Without a fleet-wide rate, it is the only thing to check.
        if self.settings.rate_limit_rps > 0 and cooldown_s <= 0:
            permit = self.limiter().acquire()
        else:
            permit = Permit(cooldown_s, "cooldown" if cooldown_s > 0 else "go")
        if permit.wait_s > INLINE_WAIT_S:
            # Scheduled for its slot: the next run holds the reservation and does not ask again.
            wait_s = permit.wait_s
            if permit.kind == "cooldown":
                # Spread the polls held by a 429 so they do not all hit the API at the same
                # instant; 20 ms on top because a countdown may fire a millisecond early.
                wait_s += 0.02 + random.uniform(0.0, 0.1 * wait_s + 0.05)
            hop = Reschedule(min(wait_s, self.schedule.countdown_cap_s), {}, called_api=False)
            metrics.ratelimit_wait(permit.wait_s, permit.kind)
            held = permit.kind == "slot" and permit.wait_s <= self.schedule.countdown_cap_s
            self.reschedule(record, gen, hop, now, slot=held)
        if permit.wait_s > 0:
            time.sleep(permit.wait_s + (0.005 if permit.kind == "cooldown" else 0.0))

    def fetch(self, record: JobRecord) -> TaskSnapshot | errors.SeedanceError:
        """The one GET of this run: the snapshot, or the error it raised."""
        try:
            return get_client(self.settings).get_task(self.task_id)
        except errors.SeedanceError as exc:
            if isinstance(exc, errors.RateLimited):
                # Everyone on this API key waits, not only this job.
                self.limiter().cool_down(exc.retry_after_s or self.schedule.min_interval_s)
            level = logging.INFO if isinstance(exc, errors.RateLimited) else logging.WARNING
            log.log(level, "poll %s try=%d error: %s", self.task_id, record.polls + 1, exc)
            return exc

    def limiter(self) -> RateLimiter:
        return RateLimiter(connections.get_redis(self.settings), self.settings)

    def reschedule(
        self,
        record: JobRecord,
        gen: int,
        decision: Reschedule,
        now: float,
        snap: TaskSnapshot | None = None,
        *,
        slot: bool = False,
    ) -> NoReturn:
        fields = dict(decision.fields)
        polls = record.polls + (1 if decision.called_api else 0)
        fields.update(
            polls=polls,
            next_due_at=now + decision.countdown_s,
            updated_at=now,
        )
        if snap is not None and snap.created_at is not None and record.created_at is None:
            # Only what the deadline needs: the full body is kept once, in the Outcome, at the end
            # (a small record keeps Redis at a few hundred bytes per in-flight job).
            fields["created_at"] = snap.created_at
            fields["expires_after"] = snap.execution_expires_after
        # A long wait is parked in Redis (dispatch.py publishes it when due) instead of a countdown
        # message that a worker would hold in memory, unacked, for the whole wait.
        park = 0 < self.settings.poll_park_after_s < decision.countdown_s and not slot
        park_at = now + decision.countdown_s if park else 0.0
        if not self.store.advance(
            self.task_id,
            gen,
            lease_at=waiting_lease(self.settings, decision.countdown_s, now),
            fields=fields,
            park_at=park_at,
        ):
            log.info("poll %s gen=%d lost the race to another copy; dropped", self.task_id, gen)
            raise _Drop()
        log.info(
            "poll %s try=%d status=%s next_in=%.1fs gen=%d",
            self.task_id,
            polls,
            fields.get("status", record.status),
            decision.countdown_s,
            gen + 1,
        )
        if park:
            raise _Drop()
        options: dict[str, Any] = {"gen": gen + 1, "due": now + decision.countdown_s}
        if slot:
            options["slot"] = True
        _again(self.task, self.task_id, options, decision.countdown_s)

    def finish(
        self,
        record: JobRecord,
        gen: int,
        decision: Finish,
        snap: TaskSnapshot | None,
        now: float,
    ) -> dict[str, Any]:
        snapshot = bounded_snapshot(snap) if snap is not None else None
        polls = record.polls + (1 if snap is not None or decision.status == "not_found" else 0)
        outcome = Outcome(
            task_id=self.task_id,
            status=decision.status,  # type: ignore[arg-type]
            snapshot=snapshot,
            metadata=record.metadata,
            polls=polls,
            tracked_at=record.tracked_at,
            terminal_at=now,
            error=decision.error,
        ).wire()
        fields = {
            "status": decision.status,
            "outcome": outcome,
            "polls": polls,
            "terminal_at": now,
            "updated_at": now,
            "next_due_at": None,
            "end_reason": (decision.error or {}).get("code"),
        }
        if not self.store.finish(
            self.task_id, gen, lease_at=handoff_lease(self.settings, now), fields=fields
        ):
            log.info("poll %s gen=%d lost the terminal race to another copy; dropped", self.task_id, gen)
            raise _Drop()
        log.info("poll %s try=%d status=%s terminal: hand-off", self.task_id, polls, decision.status)
        metrics.outcome(decision.status)
        fire_handoff(record, outcome, self.settings)
        return deliver(outcome)

    def follow(self, now: float) -> dict[str, Any]:
        """A second chain for a job that already has one: wait on the record, never call the API."""
        record = self.store.get(self.task_id)
        if record is None:
            # The job record is gone (expired or removed): this chain becomes the owner.
            self.opts = PollOptions(metadata=self.opts.metadata)
            return self.run()
        if record.state != "polling" and record.outcome:
            return deliver(record.outcome)
        due = record.next_due_at or now
        countdown = min(
            max(due - now + 0.25, self.schedule.min_interval_s),
            self.schedule.countdown_cap_s,
        )
        _again(self.task, self.task_id, {"follow": True}, countdown)
