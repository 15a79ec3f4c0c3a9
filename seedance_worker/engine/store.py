"""The job store: the only code that reads or writes job state in Redis.

One hash per tracked remote task (``seedance:job:{task_id}``, keys.py lists every key; record.py
says what it holds), fenced by a generation number ``gen``, and **one** sorted-set entry per job,
in the index of where it stands:

- ``due``: a lease the sweeper watches (a countdown message waiting, a poll running, a hand-off);
- ``parked``: a wait the dispatcher publishes (or a batched round reads) at its score; its lease is
  that score plus ``SEEDANCE_POLL_LEASE_GRACE_S``, so the sweeper re-drives a parked job no one
  claimed, as it re-drives an expired lease;
- ``jobs``: a finished record (state done), by tracked_at, until its TTL runs out.

Every script moves the job's entry from one index to the other in the same step that changes its
state, so a job in flight costs its small hash and one entry. Listing
(``all``) reads the in-flight jobs from ``due`` and ``parked`` and the finished ones from ``jobs``.

Every state change is one Lua script in ``lua/`` (each opens with its KEYS/ARGV map), so two copies
of a poll message (a redelivery, a restore after the visibility timeout, a duplicate ``track()``)
can never both advance a job: the copy whose ``gen`` no longer matches is stale and drops out
without calling the API. Other modules ask the store by intent (register, begin, advance, finish,
touch, complete, claim_overdue, claim_due, hint, bind_callback), never by key. Every script takes
the fields it writes as one JSON object in ARGV[1] (``''`` deletes a field) and the task id in
ARGV[2].

Records and indexes written by the layout before this one (every job in ``jobs`` from its
registration, a parked job in ``due`` and ``parked`` at once, zero-valued fields and a ``task_id``
field in the hash) are read as they are and converge as they move: each script leaves one entry,
an advance drops the old fields, and the sweeper's rolling trim of ``jobs`` drops the ids of jobs
still in flight (tests/e2e/test_upgrade.py drives such state to the end). While old and new workers
run side by side, one gap is left: an old dispatcher's claim drops a parked entry without leaving
a lease, so if that worker dies between its claim and its publish, a job parked by a new worker is
not re-driven. Stop old workers with a warm shutdown (SIGTERM), not a kill, while upgrading.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from seedance_worker import connections, keys, scripts
from seedance_worker.engine.record import Begun, JobRecord, encode_fields, fmt_time
from seedance_worker.engine.store_rows import Advance, Due, Hint, Overdue, Registration
from seedance_worker.settings import Settings, get_settings

__all__ = [
    "ADVANCE_CHUNK", "LAG_WINDOW_S", "Begun", "JobRecord", "JobStore", "encode_fields", "get_store",
    "reset_stores", "scrape_counts",
]  # fmt: skip

LAG_WINDOW_S = 5.0  # the lag kept is the largest seen over about this long
ADVANCE_CHUNK = 200  # jobs per advance script call: Redis is not held by one for more than ~ms

_SCRIPTS = (
    "register", "begin", "advance", "finish", "complete", "touch", "claim_overdue", "claim_due",
    "hint", "unhint", "bind_callback",
    "trim_index",
)  # fmt: skip


class JobStore:
    def __init__(self, client: redis.Redis) -> None:
        self.r = client  # for tests and tools that inspect Redis; product code asks by intent
        loaded = {name: scripts.load(client, __package__ or "", name) for name in _SCRIPTS}
        self._register = loaded["register"]
        self._begin = loaded["begin"]
        self._advance = loaded["advance"]
        self._finish = loaded["finish"]
        self._complete = loaded["complete"]
        self._touch = loaded["touch"]
        self._claim_overdue = loaded["claim_overdue"]
        self._claim_due = loaded["claim_due"]
        self._hint = loaded["hint"]
        self._unhint = loaded["unhint"]
        self._bind_callback = loaded["bind_callback"]
        self._trim_index = loaded["trim_index"]
        # Where this process's scan of the jobs index stands (0: a new pass starts).
        self.index_cursor = 0

    def __repr__(self) -> str:
        return "JobStore()"

    def register(
        self,
        task_id: str,
        owner: str,
        *,
        now: float,
        lease_at: float,
        fields: dict[str, Any],
        park_at: float = 0.0,
    ) -> Registration:
        """Create the job with ``owner`` as its chain's Celery id, unless it exists already."""
        return self.register_many([(task_id, owner)], now=now, lease_at=lease_at, fields=fields,
                                  park_at=park_at)[0]  # fmt: skip

    def register_many(
        self,
        items: list[tuple[str, str]],
        *,
        now: float,
        lease_at: float | Sequence[float],
        fields: dict[str, Any],
        park_at: float | Sequence[float] = 0.0,
        traces: Sequence[str | None] | None = None,
    ) -> list[Registration]:
        """``register`` for many (task_id, owner) pairs, pipelined in batches of 500.
        ``lease_at`` and ``park_at`` are one time for all, or one per item (jittered first polls);
        a job parked (``park_at`` > 0) is indexed in parked only: ``lease_at`` is then unused.
        ``traces``, one per item, the traceparent of each job's root span (tracing.py)."""
        out: list[Registration] = []
        encoded = encode_fields(fields)
        leases, parks = _per_item(lease_at, len(items)), _per_item(park_at, len(items))
        for start in range(0, len(items), 500):
            pipe = self.r.pipeline(transaction=False)
            for i in range(start, min(start + 500, len(items))):
                task_id, owner = items[i]
                trace = traces[i] if traces is not None else None
                own = encode_fields({**fields, "trace": trace}) if trace else encoded
                self._register(
                    keys=[keys.job(task_id), keys.DUE, keys.PARKED],
                    args=[own, task_id, owner, fmt_time(now), leases[i], parks[i]],
                    client=pipe,
                )
            for created, who, state in pipe.execute():
                out.append(Registration(bool(int(created)), _s(who), _s(state)))
        return out

    def begin(
        self,
        task_id: str,
        gen: int,
        *,
        lease_at: float,
        max_crashes: int,
        cooldown_key: str | None = None,
        lag_s: float | None = None,
    ) -> Begun:
        """Fence a poll run in one round trip. ``lag_s`` (how late this run started) feeds the
        fleet's lag that the sweeper allows for; ``cooldown_key`` is the account's 429 cool-down."""
        script_keys = [keys.job(task_id), keys.DUE, keys.PARKED, keys.LAG]
        script_keys += [cooldown_key] if cooldown_key else []
        lag = "" if lag_s is None else f"{max(0.0, lag_s):.3f}"
        res = self._begin(
            keys=script_keys, args=["{}", task_id, gen, lease_at, max_crashes, lag, LAG_WINDOW_S]
        )
        flat = [_s(x) for x in res[3:]]
        record = JobRecord.from_hash(task_id, dict(zip(flat[::2], flat[1::2], strict=True))) if flat else None
        return Begun(_s(res[0]), int(_s(res[1])), record, int(_s(res[2])) / 1_000_000)

    def advance(
        self, task_id: str, gen: int, *, lease_at: float, fields: dict[str, Any], park_at: float = 0.0
    ) -> bool:
        """Move a polling job from ``gen`` to ``gen + 1``; False when another copy got there first.
        Parked (``park_at`` > 0): its lease is ``park_at`` + the grace, and ``lease_at`` is unused."""
        return self.advance_many([Advance(task_id, gen, lease_at, fields, park_at)])[0]

    def advance_many(self, items: list[Advance]) -> list[bool]:
        """``advance`` for every job of a batched round: one script call per 200 jobs, pipelined."""
        pipe = self.r.pipeline(transaction=False)
        for start in range(0, len(items), ADVANCE_CHUNK):
            chunk = items[start : start + ADVANCE_CHUNK]
            args: list[str | int | float] = []
            for a in chunk:
                args += [encode_fields(a.fields), a.task_id, a.gen, a.lease_at, a.park_at]
            self._advance(keys=[keys.DUE, keys.PARKED, *(keys.job(a.task_id) for a in chunk)], args=args,
                          client=pipe)  # fmt: skip
        return [bool(x) for reply in pipe.execute() for x in reply]

    def finish(self, task_id: str, gen: int, *, lease_at: float, fields: dict[str, Any]) -> bool:
        """End polling at ``gen`` and enter the hand-off; False when another copy got there first."""
        args: list[str | int | float] = [encode_fields(fields), task_id, gen, lease_at]
        return bool(self._finish(keys=[keys.job(task_id), keys.DUE, keys.PARKED], args=args))

    def complete(self, task_id: str, *, ttl_s: int, fields: dict[str, Any]) -> int:
        """1 done, 2 done again (a re-fired chain), 0 no such job, -1 still polling."""
        args: list[str | int | float] = [encode_fields(fields), task_id, ttl_s, fmt_time(time.time())]
        return int(self._complete(keys=[keys.job(task_id), keys.DUE, keys.PARKED, keys.JOBS], args=args))

    def touch(self, task_id: str, *, expected_state: str, lease_at: float, fields: dict[str, Any]) -> bool:
        """Extend the lease (and set fields) while the job is in ``expected_state``."""
        args: list[str | int | float] = [encode_fields(fields), task_id, expected_state, lease_at]
        return bool(self._touch(keys=[keys.job(task_id), keys.DUE], args=args))

    def claim_overdue(
        self, *, before: float, lease_at: float, grace_s: float, limit: int = 1000
    ) -> list[Overdue]:
        """Jobs whose lease ran out before ``before`` (a parked job's lease: its due time +
        ``grace_s``), each given ``lease_at`` in due (claimed once)."""
        flat = self._claim_overdue(
            keys=[keys.DUE, keys.PARKED], args=["{}", before, lease_at, limit, keys.JOB_PREFIX, grace_s]
        )
        return [
            Overdue(tid, state, int(gen), owner, int(fires), _json(canvas), trace or None)
            for tid, state, gen, owner, fires, canvas, trace in _rows(flat, 7)
        ]

    def claim_due(self, *, horizon: float, limit: int, grace_s: float) -> list[Due]:
        """Parked polls due before ``horizon``, moved out of the parked index (claimed once) to a
        lease in due of their due time + ``grace_s``, so a claimer that dies is re-driven. Each
        comes with its record (a batched round reads it without another round trip)."""
        flat = self._claim_due(
            keys=[keys.PARKED, keys.DUE], args=["{}", horizon, limit, keys.JOB_PREFIX, grace_s]
        )
        return [
            Due(JobRecord.from_hash(tid, json.loads(rec)), float(due)) for tid, due, rec in _rows(flat, 3)
        ]

    def hint(
        self, task_id: str, *, status: str, seen: str, now: float, min_interval_s: float, nonce: str = ""
    ) -> Hint:
        """Take a callback for a job in one round trip: de-duplicated by ``seen``, and an early poll
        granted at most once per generation and never sooner than ``min_interval_s`` after the
        job's last poll. Nothing is written for a job that is not tracked or not polling, nor when
        ``nonce`` (of a per-task callback URL) is not the one bound to the job."""
        args: list[str | float] = ["{}", task_id, status, seen, now, min_interval_s, nonce]
        res = self._hint(keys=[keys.job(task_id), keys.PARKED], args=args)
        verdict = _s(res[0])
        if verdict != "accepted":
            return Hint(verdict, int(_s(res[1])) if len(res) > 1 else 0)
        canvas = _s(res[4])
        trace = _s(res[5]) if len(res) > 5 else ""
        return Hint(verdict, int(_s(res[1])), _s(res[2]), float(_s(res[3])), _json(canvas), trace or None)

    def bind_callback(self, task_id: str, nonce: str) -> bool:
        """Bind a per-task callback URL's nonce to the job (once); False when there is no job."""
        return bool(self._bind_callback(keys=[keys.job(task_id)], args=["{}", task_id, nonce]))

    def unhint(self, task_id: str, *, seen: str, gen: int) -> None:
        """Take back a granted hint whose early poll was never published (a retry may try again)."""
        self._unhint(keys=[keys.job(task_id)], args=["{}", task_id, seen, gen])

    def trim_jobs_index(self, *, count: int = 1000) -> int:
        """One step of a rolling scan of the jobs index: drop the ids whose record has expired.

        A finished record expires ``SEEDANCE_JOB_TTL_S`` after its hand-off completed; its id would
        otherwise stay in ``seedance:jobs`` for good (all() only drops the ids it lists). Ids of jobs
        in flight (the layout before this one indexed them here too) go as well. The sweeper calls
        this every sweep; a pass over N ids takes N / ``count`` sweeps. Returns how many left.
        """
        cursor, items = self.r.zscan(keys.JOBS, self.index_cursor, count=count)
        self.index_cursor = int(cursor)
        ids = [_s(member) for member, _score in items]
        if not ids:
            return 0
        return int(self._trim_index(keys=[keys.JOBS], args=["{}", keys.JOB_PREFIX, *ids]))

    def fleet_lag_s(self, *, max_age_s: float = 2 * LAG_WINDOW_S) -> float:
        """How late polls have been starting lately (a queue backlog); 0 when none began recently."""
        pipe = self.r.pipeline(transaction=False)
        pipe.time()
        pipe.hmget(keys.LAG, "lag_s", "at")
        (secs, micros), (lag, at) = pipe.execute()
        if lag is None or at is None or secs + micros / 1e6 - float(at) > max_age_s:
            return 0.0
        return float(lag)

    def counts(self, now: float, *, grace_s: float) -> tuple[int, int]:
        """(jobs in flight, of them with an expired lease): for the metrics."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(keys.DUE)
        pipe.zcard(keys.PARKED)
        pipe.zcount(keys.DUE, "-inf", now)
        pipe.zcount(keys.PARKED, "-inf", now - grace_s)
        leased, parked, leased_out, parked_out = pipe.execute()
        return int(leased) + int(parked), int(leased_out) + int(parked_out)

    def get(self, task_id: str) -> JobRecord | None:
        records = self.get_many([task_id])
        return records[0] if records else None

    def known(self, task_ids: list[str]) -> set[str]:
        """The ids among ``task_ids`` that have a job record (in flight, or finished within its TTL)."""
        pipe = self.r.pipeline(transaction=False)
        for tid in task_ids:
            pipe.exists(keys.job(tid))
        return {tid for tid, n in zip(task_ids, pipe.execute(), strict=True) if n}

    def get_many(self, task_ids: list[str]) -> list[JobRecord]:
        """The records of these ids that exist, in one round trip; a parked job's ``next_due_at``
        is its parked score."""
        pipe = self.r.pipeline(transaction=False)
        for tid in task_ids:
            pipe.hgetall(keys.job(tid))
            pipe.zscore(keys.PARKED, tid)
        answers = pipe.execute()
        out = []
        for tid, raw, parked_at in zip(task_ids, answers[::2], answers[1::2], strict=True):
            if raw:
                rec = JobRecord.from_hash(tid, {_s(k): _s(v) for k, v in raw.items()})
                if rec.next_due_at is None and parked_at is not None and rec.state == "polling":
                    rec.next_due_at = float(parked_at)
                out.append(rec)
        return out

    def all(self, limit: int = 1000) -> list[JobRecord]:
        """Up to ``limit`` records, newest tracked first: the jobs in flight (those next due first
        when there are more) and the newest finished ones."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zrange(keys.DUE, 0, limit - 1)
        pipe.zrange(keys.PARKED, 0, limit - 1)
        pipe.zrevrange(keys.JOBS, 0, limit - 1)
        leased, parked, finished = ([_s(x) for x in ids] for ids in pipe.execute())
        ids = list(dict.fromkeys([*leased, *parked, *finished]))
        records = self.get_many(ids)
        found = {rec.task_id for rec in records}
        stale = [tid for tid in finished if tid not in found]
        if stale:  # records expired after their TTL: drop them from the index too
            self.r.zrem(keys.JOBS, *stale)
        records.sort(key=lambda rec: rec.tracked_at or 0.0, reverse=True)
        return records[:limit]


def _rows(flat: list[Any], width: int) -> list[list[str]]:
    items = [_s(x) for x in flat]
    return [items[i : i + width] for i in range(0, len(items), width)]


def _per_item(value: float | Sequence[float], n: int) -> list[float]:
    if isinstance(value, int | float):
        return [float(value)] * n
    if len(value) != n:
        raise ValueError(f"{len(value)} times for {n} items")
    return [float(v) for v in value]


def _json(text: str) -> Any:
    return json.loads(text) if text else None


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_stores: dict[int, JobStore] = {}
_lock = threading.Lock()


def get_store(settings: Settings | None = None) -> JobStore:
    """The store over this process's Redis client (connections.py); scripts registered once."""
    client = connections.get_redis(settings or get_settings())
    with _lock:
        store = _stores.get(id(client))
        if store is None or store.r is not client:
            store = _stores[id(client)] = JobStore(client)
        return store


def reset_stores() -> None:
    """Forget every store and client (a forked child, a test that changed the settings)."""
    with _lock:
        _stores.clear()
    connections.reset()


def scrape_counts(settings: Settings) -> Callable[[float], tuple[int, int]]:
    """``counts`` over a client of its own with short timeouts: a metrics scrape must not hang
    for the store's 30 s socket timeout while Redis is away."""
    client = connections.redis_client(
        settings, socket_timeout=2, socket_connect_timeout=2, decode_responses=True
    )
    store = JobStore(client)
    grace_s = settings.poll_lease_grace_s
    return lambda now: store.counts(now, grace_s=grace_s)
