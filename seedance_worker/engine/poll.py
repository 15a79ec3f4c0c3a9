"""``seedance.poll``: one GET per run; not terminal -> the same message again with a countdown.

The task is thin: ``decide()`` (decide.py) is a pure function over (job record, what the GET gave,
now) and the task only carries out its verdict. Rescheduling re-publishes the *same* task id with
the caller's chain, links and errbacks (``signature_from_request``), so ``chain(poll.s(id),
next.s())`` and chords keep working and no worker slot is held while waiting. Each message carries
the job's generation ``gen``; a copy whose ``gen`` is no longer current is stale and raises
``Ignore`` without calling the API (see store.py). Each run is a ``seedance.poll`` span in its
job's trace (tracing.py).
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Any, Literal, NoReturn

from celery import Task, shared_task
from celery.exceptions import Ignore
from pydantic import BaseModel, ConfigDict

from seedance_worker import connections, errors, metrics
from seedance_worker.client import get_client, validate_task_id
from seedance_worker.engine import admission, progress, tracing
from seedance_worker.engine.decide import (
    Finish,
    Reschedule,
    advance_fields,
    decide,
    terminal_fields,
    wait_for_not_before,
)
from seedance_worker.engine.handoff import deliver, fire_beside, hand_off, salvage_outcome
from seedance_worker.engine.jobs import POLL_TASK, refuse_eager, registration_fields
from seedance_worker.engine.schedule import Schedule, handoff_lease, park_time, running_lease, waiting_lease
from seedance_worker.engine.store import Begun, JobRecord, JobStore, get_store
from seedance_worker.models import TaskSnapshot, bounded_snapshot
from seedance_worker.outage import survive_redis_outage
from seedance_worker.ratelimit import Permit, RateLimiter, has_unwritten_cooldown, limiter_keys
from seedance_worker.settings import Settings, get_settings

log = logging.getLogger(__name__)

INLINE_WAIT_S = 0.05  # a limiter wait this short is slept inline instead of a reschedule


class PollOptions(BaseModel):
    """The ``options`` argument of ``seedance.poll`` (small, JSON)."""

    model_config = ConfigDict(extra="forbid")

    gen: int | None = None
    due: float | None = None  # when this message was scheduled to run (for lateness)
    slot: bool = False  # this run holds a rate-limiter reservation: go straight to the GET
    follow: bool = False
    handoff: Literal["fire", "salvage"] | None = None  # a hand-off poll (handoff.refire)
    raw: bool = False  # return the terminal Outcome; the downstream chain runs beside the caller's
    snapshot: dict[str, Any] | None = None  # read by a batched round: stands in for this run's GET
    metadata: dict[str, Any] | None = None
    on_succeeded: list[Any] | None = None
    on_failed: list[Any] | None = None
    account: str | None = None  # entered from a user's canvas: the account the task was made with


# --- the task -------------------------------------------------------------------------------------


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


# How a poll run ends without an error of its own: rescheduled or dropped (_Drop), replaced by its
# downstream chain (Ignore), a job that failed (the typed failure its handle raises).
_QUIET = (_Drop, Ignore, errors.GenerationFailed)


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
    # The app's task_always_eager, not request.is_eager: a direct .apply() (the sweeper's tests, a
    # terminal snapshot) sends its reschedule to the broker and is fine; always-eager recurses.
    refuse_eager("seedance.poll", bool(self.app.conf.task_always_eager))
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
        self.spans: tracing.Spans = tracing.NOOP  # this run's spans, once it is past begin

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
        traced = begun.record or JobRecord(self.task_id)
        with tracing.poll_span(traced.trace, self.task_id, traced.account, expected=_QUIET) as self.spans:
            return self.polled(begun, gen, now)

    def polled(self, begun: Begun, gen: int, now: float) -> dict[str, Any]:
        """The run past the fence: its read, then what decide() says (finish, or the next poll)."""
        record = self.fenced(begun, gen, now)
        if isinstance(record, dict):
            return record
        if self.opts.snapshot is not None:
            result: TaskSnapshot | errors.SeedanceError = TaskSnapshot.model_validate(self.opts.snapshot)
        else:
            self.gate(record, gen, self.use_account(record, begun.cooldown_s), now)
            result = self.fetch(record)
        now = time.time()
        read = result.status_text if isinstance(result, TaskSnapshot) else type(result).__name__
        metrics.poll(read)
        self.spans.set("seedance.read", read)
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
            raw=self.opts.raw,
            account=self.opts.account,
        )
        canvas = _canvas_of(self.task)
        if canvas is not None:
            # Kept so a parked or re-driven poll is published with the caller's chain and links.
            fields["canvas"] = canvas
        with tracing.start_job("seedance.track", self.task_id, fields.get("account")) as root:
            if root.traceparent:
                fields[tracing.TRACE_FIELD] = root.traceparent
            reg = self.store.register(
                self.task_id, self.celery_id, now=now, lease_at=waiting_lease(self.settings, 0, now),
                fields=fields,
            )  # fmt: skip
        return 1 if reg.owner == self.celery_id else None

    def fenced(self, begun: Begun, gen: int, now: float) -> JobRecord | dict[str, Any]:
        """The record this run may poll, or the Outcome when the fence already ended the job."""
        record = begun.record
        if begun.verdict in ("stale", "missing") or record is None:
            self.spans.set("seedance.dropped", begun.verdict)
            log.info("poll %s gen=%s %s copy dropped", self.task_id, gen, begun.verdict)
            raise _Drop()
        if begun.verdict == "terminal":
            return self.terminal_copy(record)
        if begun.verdict == "crashloop":
            message = f"poll crashed its worker {begun.crashes} times"
            return self.finish(record, gen, Finish("failed", {"code": "PollCrashed", "message": message}),
                               None, now)  # fmt: skip
        return record

    def terminal_copy(self, record: JobRecord) -> dict[str, Any]:
        """A copy of the terminal generation: a hand-off poll, or a redelivered terminal poll."""
        self.spans.status(record.status)
        outcome = record.outcome or {}
        if record.raw:
            # The hand-off already happened beside: give the caller's chain the same Outcome again.
            log.info("poll %s terminal copy: returning the recorded outcome", self.task_id)
            return deliver(outcome)
        fire = self.opts.handoff is not None or record.handoff == "pending"
        if record.state == "handoff" and fire:
            salvage = self.opts.handoff == "salvage"
            log.info("poll %s hand-off poll: replacing itself with the %s chain", self.task_id,
                     "salvage" if salvage else "downstream")  # fmt: skip
            if salvage:
                outcome = salvage_outcome(outcome, record.handoff_fires, self.settings)
            hand_off(self.task, record, outcome, self.settings, salvage=salvage)
        # The chain was fired already (it ends the caller's canvas); the sweeper fires it again if
        # it is lost.
        log.info("poll %s terminal copy dropped (hand-off %s)", self.task_id, record.handoff)
        raise _Drop()

    def use_account(self, record: JobRecord, cooldown_s: float) -> float:
        """Call the API with the job's own account (key, base URL, limiter); its 429 cool-down.

        ``begin`` read the default account's cool-down; a job of another account reads its own
        (one more round trip), so one account's 429s never hold another's polls. A name no longer
        configured keeps the default here and fails the GET in ``fetch`` (backed off, last_error).
        """
        if record.account is None:
            if has_unwritten_cooldown(self.settings):
                # A 429 this process got while Redis was down (this run is its re-run): begin
                # could not see it; written now and read back.
                return self.limiter().cooldown_left()
            return cooldown_s
        try:
            self.settings = self.settings.for_account(record.account)
        except errors.InvalidRequest:
            return 0.0
        return self.limiter().cooldown_left()

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
            return get_client(self.settings, record.account).get_task(self.task_id)
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
        fields = advance_fields(record, decision, now, snap)
        polls = int(fields["polls"])
        park_at = park_time(self.settings, now, decision.countdown_s, slot=slot)
        park = park_at > 0
        if park:
            fields["next_due_at"] = park_at
        if not self.store.advance(
            self.task_id,
            gen,
            lease_at=waiting_lease(self.settings, decision.countdown_s, now),
            fields=fields,
            park_at=park_at,
        ):
            log.info("poll %s gen=%d lost the race to another copy; dropped", self.task_id, gen)
            raise _Drop()
        self.progress(record, fields, now)
        self.spans.status(fields.get("status", record.status))
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

    def progress(self, record: JobRecord, fields: dict[str, Any], now: float) -> None:
        """The POLLING state of this chain's handle, and the status-change hook (progress.py)."""
        if self.celery_id and self.celery_id == record.owner:
            progress.report(self.task, self.celery_id, progress.progress_info(self.task_id, fields, record))
        change = progress.transition(record, fields)
        if change is not None:
            progress.changed(self.settings, record, change, at=now, polls=fields["polls"])

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
        fields = terminal_fields(record, decision.status, decision.error, now, polls=polls, snapshot=snapshot)
        outcome: dict[str, Any] = fields["outcome"]
        if not self.store.finish(
            self.task_id, gen, lease_at=handoff_lease(self.settings, now), fields=fields
        ):
            log.info("poll %s gen=%d lost the terminal race to another copy; dropped", self.task_id, gen)
            raise _Drop()
        log.info("poll %s try=%d status=%s terminal: hand-off", self.task_id, polls, decision.status)
        self.spans.status(decision.status)
        metrics.outcome(decision.status)
        admission.job_ended(self.settings, record)
        if record.raw:
            fire_beside(record, outcome, self.settings)
            return deliver(outcome)
        hand_off(self.task, record, outcome, self.settings)

    def follow(self, now: float) -> dict[str, Any]:
        """A second chain for a job that already has one: wait on the record, never call the API."""
        record = self.store.get(self.task_id)
        if record is None:
            # The job record is gone (expired or removed): this chain becomes the owner.
            self.opts = PollOptions(metadata=self.opts.metadata)
            return self.run()
        ended = record.state == "done" or (record.raw and record.state != "polling")
        if ended and record.outcome:
            return deliver(record.outcome)  # the Outcome the downstream steps filled
        due = record.next_due_at or now
        countdown = min(
            max(due - now + 0.25, self.schedule.min_interval_s),
            self.schedule.countdown_cap_s,
        )
        with tracing.attached(record.trace):  # a follower's waits hang off the job's root, not a chain
            _again(self.task, self.task_id, {"follow": True}, countdown)
