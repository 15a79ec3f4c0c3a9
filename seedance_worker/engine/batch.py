"""Batched status: the jobs due in a round are read with one list call per chunk (README: Batched
status), instead of one GET (and one Celery message) per job per poll.

With ``SEEDANCE_STATUS_SOURCE=batch`` every wait of a job is parked (``seedance:parked``, its due
time rounded up to the fleet's round grid of ``SEEDANCE_BATCH_ROUND_S``, so jobs share rounds and
chunks fill), and the dispatcher thread of each worker runs ``run_round`` on every tick: it claims
the parked jobs now due (one atomic script: each job goes to one worker), groups them by account
and service tier (flex tasks are invisible to a list call without ``filter.service_tier=flex``),
and reads each chunk of up to ``SEEDANCE_BATCH_SIZE`` ids with one list call, the jobs read longest
ago first (a chunk the list-call cap defers goes before the jobs read since). Then, per job, the
same ``decide()`` as after a GET:

- still queued or running: the job is advanced in Redis, fenced by its generation as a poll run is
  (``store.advance``, pipelined), and parked for its next round. No Celery message.
- ended (or past its deadline): the job's own poll message is published (its chain's task id and
  canvas) carrying the snapshot, and that poll ends the job exactly as after its own GET.
- missing from the answer (older than the list's 7 days, another tier or model, a gateway that
  drops ids): a plain poll message, whose own GET reads it (and a 404 stays per job).
- its poll id revoked (``revoke()``, known to this worker from the broadcast): not read, but its
  plain poll message published, which every worker discards as revoked and so cancels the job.

The list call goes through the account's limiter like any request and, when configured, a cap of
list calls per second. A round paces its chunks at the cap while its interval lasts (a cap of 5/s
and 2 s rounds: up to ~10 chunks a round) and defers only what is left (deferring every chunk
after the first held the round at one list call: ~1 call/s under a 5/s cap at 5,000 jobs in the
soak). A 429 cools the account down for everyone, and a job told to wait
(``not_before``) is not named in any call before then. An API that refuses list (404/405: a proxy
without it) switches its account to per-job polls for ``LIST_OFF_S``, with one log line.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from celery.worker import state as worker_state

from seedance_worker import connections, errors, keys, metrics
from seedance_worker.client import get_client
from seedance_worker.engine import progress, tracing
from seedance_worker.engine.decide import Finish, Reschedule, advance_fields, decide, wait_for_not_before
from seedance_worker.engine.jobs import publish_poll
from seedance_worker.engine.schedule import Schedule, next_round, park_time, waiting_lease
from seedance_worker.engine.store import JobRecord, JobStore, get_store
from seedance_worker.engine.store_rows import Advance, Due
from seedance_worker.models import TaskSnapshot, bounded_snapshot
from seedance_worker.ratelimit import Permit, RateLimiter, account_hash
from seedance_worker.settings import Settings

log = logging.getLogger(__name__)

ROUND_LIMIT = 2000  # jobs claimed per claim call; a round repeats the claim while it comes back full
LIST_OFF_S = 3600.0  # an API that refused list is asked again after this long


@dataclass
class RoundStats:
    claimed: int = 0
    list_calls: int = 0
    advanced: int = 0
    ended: int = 0
    by_get: int = 0  # published as a plain poll (missing from the answer, list refused, revoked)
    deferred: int = 0  # parked again unread (not_before, a cool-down, the list-call cap)

    def add(self, other: RoundStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class _Chunk:
    account: str | None
    service_tier: str | None
    jobs: list[Due] = field(default_factory=list)


def run_round(settings: Settings, *, now: float | None = None) -> RoundStats:
    """Read every job due now in list calls; return what happened."""
    stats = RoundStats()
    store = get_store(settings)
    # A round waits for a cap slot only until its interval ends, so the dispatcher's next tick is
    # not late.
    pace_until = time.monotonic() + settings.batch_round_s
    while True:
        horizon = time.time() if now is None else now
        due = store.claim_due(horizon=horizon, limit=ROUND_LIMIT, grace_s=settings.poll_lease_grace_s)
        if due:
            stats.add(_Round(settings, store, pace_until).run(due))
        if len(due) < ROUND_LIMIT // 2:
            return stats


class _Round:
    def __init__(self, settings: Settings, store: JobStore, pace_until: float) -> None:
        self.settings = settings
        self.store = store
        self.pace_until = pace_until
        self.schedule = Schedule.from_settings(settings)
        self.stats = RoundStats()
        self.advances: list[tuple[Due, Advance]] = []

    def run(self, due: list[Due]) -> RoundStats:
        self.stats.claimed += len(due)
        now = time.time()
        chunks: dict[tuple[str | None, str | None], _Chunk] = {}
        for d in due:
            record = d.record  # read by the claim, in the same script
            if record.owner and record.owner in worker_state.revoked:
                # revoke() of the poll's id: a job in a round has no message for a worker to
                # discard, so it gets one now; the worker that meets it cancels the job
                # (wiring/signals.py), as in per-job mode.
                self.by_get(d)
                continue
            wait = wait_for_not_before(record, now=now, schedule=self.schedule)
            if wait is not None:
                self.defer(d, now, wait.countdown_s)
                continue
            key = (record.account, record.service_tier)
            chunks.setdefault(key, _Chunk(*key)).jobs.append(d)
        for chunk in chunks.values():
            chunk.jobs.sort(key=last_read)  # the longest unread first: a capped round reaches all
            self.read_group(chunk)
        self.flush()
        return self.stats

    # --- one group: an account and tier --------------------------------------------------------

    def read_group(self, group: _Chunk) -> None:
        acct = self.settings.for_account(group.account) if group.account else self.settings
        redis_client = connections.get_redis(self.settings)
        if redis_client.exists(keys.list_off(account_hash(acct))):
            for job in group.jobs:
                self.by_get(job)
            return
        limiter = RateLimiter(redis_client, acct)
        cap = ListCap(redis_client, acct, self.settings.batch_list_rps)
        size = self.settings.batch_size
        for start in range(0, len(group.jobs), size):
            wait_s = gate(limiter, cap)
            while wait_s > 0 and time.monotonic() + wait_s <= self.pace_until:
                time.sleep(wait_s)  # the next slot comes inside this round's interval: wait for it
                wait_s = gate(limiter, cap)
            if wait_s > 0:
                # Held (a cool-down, the fleet's rate, the list-call cap): this chunk and the rest
                # of the group wait for a later round, where they go first (the longest unread),
                # and no further slot is reserved for them in this one.
                now = time.time()
                for job in group.jobs[start:]:
                    self.defer(job, now, wait_s)
                return
            self.read_chunk(acct, limiter, group.service_tier, group.jobs[start : start + size])

    def read_chunk(self, acct: Settings, limiter: RateLimiter, tier: str | None, jobs: list[Due]) -> None:
        ids = [job.record.task_id for job in jobs]
        self.stats.list_calls += 1
        try:
            with tracing.list_span(acct.account, [job.record.trace for job in jobs]) as span:
                found = get_client(acct).list_tasks(ids, service_tier=tier, page_size=max(len(ids), 1))
                span.set("seedance.found", len(found))
        except errors.ListUnsupported as exc:
            log.warning("list calls refused by %s (%s): polling its jobs one GET each for %.0f s",
                        acct.account, exc, LIST_OFF_S)  # fmt: skip
            off_key = keys.list_off(account_hash(acct))
            connections.get_redis(self.settings).set(off_key, "1", ex=int(LIST_OFF_S))
            for job in jobs:
                self.by_get(job)
            return
        except errors.SeedanceError as exc:
            self.failed_call(limiter, jobs, exc)
            return
        metrics.poll("list")
        for job in jobs:
            snap = found.get(job.record.task_id)
            if snap is None:
                self.by_get(job)
            else:
                self.act(job, snap, time.time())

    def failed_call(self, limiter: RateLimiter, jobs: list[Due], exc: errors.SeedanceError) -> None:
        """The list call failed: each job is rescheduled as if its own GET had (a 429 is not an
        error against any job; it cools the whole account down)."""
        if isinstance(exc, errors.RateLimited):
            limiter.cool_down(exc.retry_after_s or self.schedule.min_interval_s)
        level = logging.INFO if isinstance(exc, errors.RateLimited) else logging.WARNING
        log.log(level, "list call of %d jobs failed: %s", len(jobs), exc)
        now = time.time()
        for job in jobs:
            decision = decide(job.record, exc, now=now, schedule=self.schedule)
            if isinstance(decision, Finish):  # past its deadline
                self.end(job, None)
            else:
                self.advance(job, decision, now, None)

    # --- one job ---------------------------------------------------------------------------------

    def act(self, job: Due, snap: TaskSnapshot, now: float) -> None:
        decision = decide(job.record, snap, now=now, schedule=self.schedule)
        if isinstance(decision, Finish):
            self.end(job, snap)
        else:
            self.advance(job, decision, now, snap)

    def advance(self, job: Due, decision: Reschedule, now: float, snap: TaskSnapshot | None) -> None:
        fields = advance_fields(job.record, decision, now, snap)
        park_at = next_round(self.settings, now, decision.countdown_s, read_round=job.due_at)
        fields["next_due_at"] = park_at
        lease_at = waiting_lease(self.settings, park_at - now, now)
        self.advances.append((job, Advance(job.record.task_id, job.record.gen, lease_at, fields, park_at)))

    def defer(self, job: Due, now: float, wait_s: float) -> None:
        """Park again, unread, for the first round after ``wait_s`` (a Retry-After, a cool-down, the
        list-call cap): the job moves to its next generation without a call, and keeps the time of
        its last read (``updated_at``), so it goes before the jobs read since."""
        self.stats.deferred += 1
        park_at = park_time(self.settings, now, wait_s + 0.02)
        fields: dict[str, Any] = {}
        lease_at = waiting_lease(self.settings, park_at - now, now)
        self.advances.append((job, Advance(job.record.task_id, job.record.gen, lease_at, fields, park_at)))

    def end(self, job: Due, snap: TaskSnapshot | None) -> None:
        """The job's own poll ends it, from this snapshot (or after its own GET when there is none)."""
        self.stats.ended += 1
        self.publish(job.record, bounded_snapshot(snap) if snap is not None else None)

    def by_get(self, job: Due) -> None:
        self.stats.by_get += 1
        self.publish(job.record, None)

    def publish(self, rec: JobRecord, snapshot: dict[str, Any] | None) -> None:
        """The job's own poll message, under its chain's id and canvas: with a snapshot it ends the
        job from it, without one it reads the job with its own GET."""
        publish_poll(rec.task_id, gen=rec.gen, countdown_s=0, celery_id=rec.owner, settings=self.settings,
                     canvas=rec.canvas, snapshot=snapshot, trace=rec.trace)  # fmt: skip

    def flush(self) -> None:
        """Every advance of the round in one pipeline; then progress and status-change hooks."""
        if not self.advances:
            return
        results = self.store.advance_many([a for _, a in self.advances])
        now = time.time()
        for (job, adv), ok in zip(self.advances, results, strict=True):
            if not ok or "polls" not in adv.fields:
                continue  # another copy (a callback's early poll) advanced it first, or deferred
            self.stats.advanced += 1
            change = progress.transition(job.record, adv.fields)
            if change is not None:
                info = progress.progress_info(job.record.task_id, adv.fields, job.record)
                progress.report_state(job.record.owner, info)
                with tracing.attached(job.record.trace):  # the hook's publish, in the job's trace
                    progress.changed(self.settings, job.record, change, at=now,
                                     polls=int(adv.fields["polls"]))  # fmt: skip
        self.advances = []


def gate(limiter: RateLimiter, cap: ListCap) -> float:
    """0 when a list call may go now (a slot of the list-call cap and one of the account's limiter
    both taken), else how long the cap or the limiter holds it. The cap is asked first: a slot it
    grants and the limiter then refuses is only a list-call slot, while an account slot granted
    and then refused by the cap would be one less for the account's GETs and downloads."""
    held = cap.acquire()
    if held.wait_s > 0:
        if held.kind == "cooldown":
            metrics.ratelimit_wait(held.wait_s, held.kind)
        return held.wait_s
    permit = limiter.try_acquire()
    if permit.wait_s > 0:
        metrics.ratelimit_wait(permit.wait_s, permit.kind)
    return permit.wait_s


def last_read(job: Due) -> float:
    """When the job was last read (never: when it was tracked)."""
    return job.record.updated_at or job.record.tracked_at or 0.0


class ListCap:
    """At most ``rps`` list calls per second per account, fleet-wide: a GCRA like the limiter's,
    on a key of its own, honouring the account's 429 cool-down too."""

    def __init__(self, client: Any, acct: Settings, rps: float) -> None:
        tat_key = keys.list_cap(account_hash(acct))
        self.limiter = RateLimiter(client, acct, tat_key=tat_key, rps=rps, burst=1) if rps > 0 else None

    def acquire(self) -> Permit:
        """A slot now (``wait_s`` 0), or how long the cap or the 429 cool-down holds; reserves
        nothing when it answers wait."""
        return self.limiter.try_acquire() if self.limiter is not None else Permit(0.0, "go")
