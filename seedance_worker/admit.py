"""``seedance.admit``: create an account's waiting submissions, in submit order, as slots free.

Sent (by name) when a job of the account leaves the queue, and by the workers' dispatcher tick as a
backstop (engine/admission.py). One admitter per account at a time, under a lock in Redis, so the
creates go out one by one in submit order. Each step takes the head of the queue and a slot for
it, creates it through ``create_or_find`` (once per idempotency key, also when a dead admitter's
head is created again), tracks it under the Celery id its handle was given at submit, and only
then lets it leave the queue. A 429 (Ark's queue is full after all: another client of the account)
or an unreachable API gives the slot back and holds the queue; the head waits, never an error. A
create that fails for good (refused, ambiguous) fails the handle with that error and moves on.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task, shared_task

from seedance_worker import errors
from seedance_worker.engine import admission
from seedance_worker.engine.admission import Admission, Entry
from seedance_worker.settings import DEFAULT_ACCOUNT, Settings, get_settings
from seedance_worker.submit import build_request, create_or_find, track_created

log = logging.getLogger(__name__)


@shared_task(bind=True, name=admission.ADMIT_TASK, acks_late=True, ignore_result=True)
def admit_task(self: Task, account: str | None = None) -> int:
    """Create what waits for ``account`` while its slots are free; how many were created."""
    return admit(get_settings(), account, self.app.backend)


def admit(settings: Settings, account: str | None, backend: Any) -> int:
    gate = Admission(settings, account)
    if gate.cap <= 0:
        log.warning("admit: admission control is off for account %s here; nothing admitted",
                    account or DEFAULT_ACCOUNT)  # fmt: skip
        return 0
    gate.clear_kick()  # from now on a freed slot sends another message: this one has started
    created = 0
    while True:
        token = gate.lock()
        if token is None:
            return created  # another admitter runs; it looks again before it stops
        try:
            created += drain(gate, token, settings, backend)
        finally:
            gate.unlock(token)
        # A slot freed between the last step and the unlock sent nobody (the lock was held).
        if not gate.pending():
            return created


def drain(gate: Admission, token: str, settings: Settings, backend: Any) -> int:
    """Admit heads while a slot is free and nothing holds the queue; how many were created."""
    created = 0
    while True:
        step = gate.next(token)
        if step.entry is None:
            return created  # empty, full, held, or the lock was lost
        outcome = admit_one(gate, step.entry, settings, backend)
        if outcome == "held":
            return created
        if outcome == "created":
            created += 1


def admit_one(gate: Admission, entry: Entry, settings: Settings, backend: Any) -> str:
    """Create and track one head: ``created``, ``failed`` (its handle holds the error) or ``held``."""
    account = gate.account
    body = dict(entry.request)
    try:
        req = build_request(body.pop("model", ""), body.pop("content", None), **body)
        remote_id, posted = create_or_find(req, entry.key, settings.for_account(account))
    except (errors.RateLimited, errors.ConnectionFailed) as exc:
        # Nothing was made: the head stays first and waits (a 429 for its Retry-After).
        retry = exc.retry_after_s if isinstance(exc, errors.RateLimited) else None
        hold_s = retry or admission.HOLD_S
        log.info("admit key=%s refused for now (%s): the queue holds %.1f s", entry.key, exc, hold_s)
        gate.hold(entry.key, hold_s)
        return "held"
    except errors.SeedanceError as exc:
        log.warning("admit key=%s: the create failed for good: %s", entry.key, exc)
        admission.mark_failed(backend, entry, exc)
        gate.fail(entry.key)
        return "failed"
    gate.settled(entry.key, remote_id)
    track_created(remote_id, posted, settings, account, entry.nonce, entry.fields, entry.celery_id)
    gate.done(entry.key)
    log.info(
        "admit key=%s created %s after %.1f s waiting", entry.key, remote_id, time.time() - entry.queued_at
    )
    return "created"
