"""Admission control: at most N queued tasks per account; the submissions beyond wait in Redis.

Ark lets an account hold about 120 queued tasks; the next create is refused with 429
QuotaExceeded. With ``SEEDANCE_ADMISSION_MAX_QUEUED`` (or an account's ``admission_max_queued``)
above 0, each create first takes a *slot* in the account's ``slots`` zset (keys.py): the remote ids
created through admission and not yet seen leaving ``queued``, plus a placeholder per create in
flight. ``submit()`` takes one (``enter``, one script: only when nobody waits and no admitter is
draining the queue, so a newcomer never jumps it) or appends the submission to the account's FIFO
with a pre-assigned Celery id for its poll chain, and returns that handle at once.

A job leaves its slot when a read sees it ``running`` or ended (``left_queue`` / ``job_ended``,
called by the poll, the batched round and cancel); that sends one ``seedance.admit`` message (by
name, like a poll) unless one is on its way already. The admitter (``seedance_worker/admit.py``)
holds the account's lock, so creates go out one at a time in submit order; the dispatcher thread
re-checks every tick (a lost message, a dead admitter) and reconciles the slots every sweep
interval against the job records (a lost release, an orphaned placeholder).

The slots count only what this deployment created: a slot frees when a poll *sees* the change,
never before Ark's own count drops, so the cap is never overrun from here. Other clients of the
same account can still fill Ark's queue: their creates' 429 holds the queue (``hold``) and the head
waits for a later slot, never an error.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from celery import current_app

from seedance_worker import connections, keys, scripts
from seedance_worker.engine.store import JobRecord, get_store
from seedance_worker.settings import DEFAULT_ACCOUNT, Settings

log = logging.getLogger(__name__)

ADMIT_TASK = "seedance.admit"
WAITING = "WAITING"  # the Celery state of a waiting submission's handle (like POLLING)
PLACEHOLDER = "key:"  # slot member of a create in flight: this + the idempotency key
KICK_MS = 30_000  # an admit message on its way holds back others this long (lost: the tick re-sends)
HOLD_S = 5.0  # a 429 on create without Retry-After (or an unreachable API) holds the queue this long
MISSING_GRACE_S = 60.0  # a slot whose job record does not exist yet (created, not yet tracked)
QUEUED = (None, "queued")  # the statuses that keep a job in its slot (None: not read yet)


def cap(settings: Settings, account: str | None) -> int:
    """The account's cap of queued tasks (0: admission control off for it)."""
    return settings.for_account(account).admission_max_queued


def admitting_accounts(settings: Settings) -> list[str | None]:
    """The accounts with admission control on (None: the default one)."""
    return [a for a in (None, *sorted(settings.accounts)) if cap(settings, a) > 0]


def create_window_s(settings: Settings) -> float:
    """How long one create may take: the lock's lease, and the age of an orphaned placeholder."""
    return settings.http_connect_timeout_s + settings.http_read_timeout_s + 30.0


@dataclass(frozen=True)
class Entry:
    """A waiting submission: what ``submit()`` would have created and tracked."""

    key: str  # the idempotency key (the account's own)
    celery_id: str  # the poll chain's task id: the handle submit() returned
    request: dict[str, Any]  # the create request body (CreateRequest.to_body())
    fields: dict[str, Any] = field(default_factory=dict)  # metadata, on_succeeded, on_failed, raw
    nonce: str = ""  # of the per-task callback URL in the request, bound once the task exists
    queued_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Entry:
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @classmethod
    def new(cls, key: str, request: dict[str, Any], fields: dict[str, Any], nonce: str = "") -> Entry:
        return cls(key, str(uuid.uuid4()), request, fields, nonce, time.time())


@dataclass(frozen=True)
class Entered:
    verdict: str  # create | queued | waiting | known | busy (admit_enter.lua)
    celery_id: str = ""
    position: int = 0


@dataclass(frozen=True)
class Step:
    verdict: str  # go | full | empty | hold | lost (admit_next.lua)
    entry: Entry | None = None


def still_queued(record: JobRecord) -> bool:
    return record.state == "polling" and record.status in QUEUED


def stale_slots(
    members: Sequence[tuple[str, float]],
    records: Mapping[str, JobRecord],
    waiting_keys: Iterable[str],
    *,
    now: float,
    create_window_s: float,
) -> list[str]:
    """The slot members to free: a job no longer queued (its release was lost) or gone; a
    placeholder no waiting entry owns (a direct create's submitter died) older than a create."""
    waiting = set(waiting_keys)
    out: list[str] = []
    for member, since in members:
        if member.startswith(PLACEHOLDER):
            if member[len(PLACEHOLDER) :] not in waiting and since < now - create_window_s:
                out.append(member)
            continue
        record = records.get(member)
        if record is None:
            if since < now - MISSING_GRACE_S:
                out.append(member)
        elif not still_queued(record):
            out.append(member)
    return out


class Admission:
    """One account's admission state (``keys.admission``); every change one script or MULTI."""

    def __init__(self, settings: Settings, account: str | None) -> None:
        self.settings = settings
        self.account = account
        self.cap = cap(settings, account)
        self.r = connections.get_redis(settings)
        slots, fifo, entries, lock, hold, kick = keys.admission(account)
        self.slots, self.fifo, self.entries = slots, fifo, entries
        self.lock_key, self.hold_key, self.kick_key = lock, hold, kick
        self.lock_ms = int(create_window_s(settings) * 1000)

    def __repr__(self) -> str:
        return f"Admission(account={self.account or 'default'!r}, cap={self.cap})"

    def _script(self, name: str) -> Any:
        return scripts.load(self.r, __package__ or "", name)

    # --- submit() ------------------------------------------------------------------------------

    def enter(self, entry: Entry, idem_key: str) -> Entered:
        args = [entry.key, entry.to_json(), self.cap, time.time(), PLACEHOLDER + entry.key]
        state, celery_id, position = self._script("admit_enter")(
            keys=[self.slots, self.fifo, self.entries, self.lock_key, self.hold_key, idem_key], args=args
        )
        return Entered(str(state), str(celery_id or ""), int(position))

    def settled(self, key: str, remote_id: str) -> None:
        """The create of ``key`` made ``remote_id``: it takes the placeholder's slot."""
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(self.slots, PLACEHOLDER + key)
        pipe.zadd(self.slots, {remote_id: time.time()}, nx=True)
        pipe.execute()

    def unclaim(self, key: str) -> None:
        """The create of ``key`` made nothing: its slot is free again."""
        self.r.zrem(self.slots, PLACEHOLDER + key)

    def requeue_first(self, entry: Entry, hold_s: float) -> str:
        """A direct create was refused with a 429: the submission waits first in line. The Celery id
        of the handle now waiting for its key (another's, if a caller of the same key came first)."""
        hold_ms = max(1, int(hold_s * 1000))
        celery_id = self._script("admit_requeue")(
            keys=[self.slots, self.fifo, self.entries, self.hold_key],
            args=[entry.key, entry.to_json(), PLACEHOLDER + entry.key, hold_ms],
        )
        return str(celery_id)

    # --- the admitter --------------------------------------------------------------------------

    def lock(self) -> str | None:
        token = uuid.uuid4().hex
        return token if self.r.set(self.lock_key, token, nx=True, px=self.lock_ms) else None

    def unlock(self, token: str) -> None:
        self._script("admit_unlock")(keys=[self.lock_key], args=[token])

    def clear_kick(self) -> None:
        self.r.delete(self.kick_key)

    def next(self, token: str) -> Step:
        verdict, _key, entry = self._script("admit_next")(
            keys=[self.slots, self.fifo, self.entries, self.lock_key, self.hold_key],
            args=[token, self.cap, time.time(), self.lock_ms, PLACEHOLDER],
        )
        return Step(str(verdict), Entry.from_json(entry) if verdict == "go" else None)

    def done(self, key: str) -> None:
        """The head's task is created and tracked (or failed for good): it stops waiting."""
        pipe = self.r.pipeline(transaction=True)
        pipe.lrem(self.fifo, 1, key)
        pipe.hdel(self.entries, key)
        pipe.execute()

    def fail(self, key: str) -> None:
        """The head's create failed for good: it leaves the queue and its slot."""
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(self.slots, PLACEHOLDER + key)
        pipe.lrem(self.fifo, 1, key)
        pipe.hdel(self.entries, key)
        pipe.execute()

    def hold(self, key: str, hold_s: float) -> None:
        """The head's create was refused for now (429, unreachable API): it stays first, its slot
        is given back, and the queue holds ``hold_s`` (the tick sends the admitter after it)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(self.slots, PLACEHOLDER + key)
        pipe.set(self.hold_key, "1", px=max(1, int(hold_s * 1000)))
        pipe.execute()

    def pending(self) -> bool:
        """Would the admitter find work now (submissions waiting, a slot free, no hold)?"""
        pipe = self.r.pipeline(transaction=False)
        pipe.llen(self.fifo)
        pipe.zcard(self.slots)
        pipe.exists(self.hold_key)
        waiting, used, held = pipe.execute()
        return bool(waiting) and int(used) < self.cap and not held

    # --- freeing -------------------------------------------------------------------------------

    def release(self, task_id: str) -> bool:
        """Free ``task_id``'s slot; True when an admit message should be sent (and is now due)."""
        return self._kick(task_id)

    def check(self) -> bool:
        """The dispatcher's periodic check: True when an admit message should be sent."""
        return self._kick("")

    def _kick(self, task_id: str) -> bool:
        res = self._script("admit_kick")(
            keys=[self.slots, self.fifo, self.lock_key, self.hold_key, self.kick_key],
            args=[task_id, self.cap, KICK_MS],
        )
        return bool(int(res))

    def reconcile(self) -> int:
        """Free the slots whose release was lost (stale_slots); how many. Only while some wait."""
        if not self.r.llen(self.fifo):
            return 0
        scored: list[tuple[str, float]] = self.r.zrange(self.slots, 0, -1, withscores=True)  # type: ignore[assignment]
        members = [(str(m), float(s)) for m, s in scored]
        ids = [m for m, _ in members if not m.startswith(PLACEHOLDER)]
        records = {r.task_id: r for r in get_store(self.settings).get_many(ids)} if ids else {}
        held = [m[len(PLACEHOLDER) :] for m, _ in members if m.startswith(PLACEHOLDER)]
        found = self.r.hmget(self.entries, held) if held else []
        waiting = [k for k, e in zip(held, found, strict=True) if e]
        drop = stale_slots(members, records, waiting, now=time.time(),
                           create_window_s=create_window_s(self.settings))  # fmt: skip
        if drop:
            self.r.zrem(self.slots, *drop)
            account = self.account or DEFAULT_ACCOUNT
            log.info("admission %s: freed %d slots whose release was lost", account, len(drop))
        return len(drop)

    def waiting(self, limit: int) -> list[dict[str, Any]]:
        """The waiting submissions, first in line first (``seedance-worker jobs``)."""
        queue = [str(k) for k in self.r.lrange(self.fifo, 0, max(0, limit - 1))]
        found = self.r.hmget(self.entries, queue) if queue else []
        out: list[dict[str, Any]] = []
        for position, (key, text) in enumerate(zip(queue, found, strict=True), start=1):
            if not text:
                continue
            entry = Entry.from_json(str(text))
            meta = entry.fields.get("metadata") or {}
            out.append({"task_id": None, "state": "waiting", "position": position, "idempotency_key": key,
                        "account": self.account, "handle": entry.celery_id, "queued_at": entry.queued_at,
                        "metadata": meta})  # fmt: skip
        return out

    def used(self) -> int:
        return int(self.r.zcard(self.slots))


# --- a waiting submission's handle ----------------------------------------------------------------


def mark_waiting(backend: Any, entry: Entry, account: str | None) -> None:
    """The handle's state while its submission waits (PENDING would look like a lost message)."""
    info = {"idempotency_key": entry.key, "account": account, "queued_at": entry.queued_at}
    try:
        backend.store_result(entry.celery_id, info, WAITING)
    except Exception as exc:
        log.warning("submit key=%s: could not record the waiting state: %s", entry.key, type(exc).__name__)


def mark_failed(backend: Any, entry: Entry, exc: BaseException) -> None:
    """A waiting submission whose create failed for good: its handle raises what submit() would
    have raised (InvalidRequest, SubmitAmbiguous, ...)."""
    backend.mark_as_failure(entry.celery_id, exc)


# --- what the engine calls -------------------------------------------------------------------------


def kick(settings: Settings, account: str | None) -> None:
    """Send the account's admitter (by task name: the engine never imports it)."""
    current_app.signature(ADMIT_TASK, args=(account,)).apply_async(queue=settings.poll_queue)


def left_queue(settings: Settings, record: JobRecord, status: str | None) -> None:
    """A read saw the job in ``status``: out of ``queued``, it frees its slot."""
    if status not in QUEUED:
        job_ended(settings, record)


def job_ended(settings: Settings, record: JobRecord) -> None:
    """The job left the queue (running, or ended): free its slot, send the admitter if due."""
    if cap(settings, record.account) <= 0:
        return
    try:
        if Admission(settings, record.account).release(record.task_id):
            kick(settings, record.account)
    except Exception as exc:  # the job goes on; the dispatcher's reconcile frees the slot instead
        log.warning("admission: could not free the slot of %s: %s", record.task_id, type(exc).__name__)


def tick(settings: Settings, *, reconcile: bool = False) -> int:
    """The dispatcher's step: per admitting account, reconcile (every sweep) and send the admitter
    when submissions wait with a slot free and none is on its way. How many were sent."""
    sent = 0
    for account in admitting_accounts(settings):
        adm = Admission(settings, account)
        if reconcile:
            adm.reconcile()
        if adm.check():
            kick(settings, account)
            sent += 1
    return sent


def waiting(settings: Settings, limit: int = 1000) -> list[dict[str, Any]]:
    """Every account's waiting submissions (``seedance-worker jobs``), whether or not this
    process has admission control on."""
    out: list[dict[str, Any]] = []
    for account in (None, *sorted(settings.accounts)):
        out.extend(Admission(settings, account).waiting(limit))
    return out
