"""The job store: the only code that reads or writes job state in Redis.

One hash per tracked remote task (``seedance:job:{task_id}``, keys.py lists every key), fenced by a
generation number ``gen``, plus three sorted sets: ``jobs`` (listing), ``due`` (leases the sweeper
watches) and ``parked`` (long waits the dispatcher publishes). Every state change is one Lua script
in ``lua/`` (each opens with its KEYS/ARGV map), so two copies of a poll message (a redelivery, a
restore after the visibility timeout, a duplicate ``track()``) can never both advance a job: the
copy whose ``gen`` no longer matches is stale and drops out without calling the API. Other modules
ask the store by intent (register, begin, advance, finish, touch, complete, claim_overdue,
claim_due, hint, bind_callback), never by key.

Every script takes the fields it writes as one JSON object in ARGV[1] and the task id in ARGV[2].
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from seedance_worker import connections, keys, scripts
from seedance_worker.settings import Settings, get_settings

LAG_WINDOW_S = 5.0  # the lag kept is the largest seen over about this long


JSON_FIELDS = ("outcome", "metadata", "on_succeeded", "on_failed", "canvas")
FLOAT_FIELDS = (
    "tracked_at",
    "next_due_at",
    "terminal_at",
    "not_before",
    "updated_at",
    "handoff_at",
    "created_at",
)
INT_FIELDS = (
    "gen",
    "polls",
    "crashes",
    "error_streak",
    "status_polls",
    "terminal_gen",
    "handoff_fires",
    "expires_after",
    "hint_gen",
)


@dataclass
class JobRecord:
    task_id: str
    owner: str = ""
    state: str = "polling"
    gen: int = 1
    polls: int = 0
    crashes: int = 0
    error_streak: int = 0
    status_polls: int = 0
    status: str | None = None
    tracked_at: float | None = None
    next_due_at: float | None = None
    not_before: float | None = None
    terminal_at: float | None = None
    terminal_gen: int | None = None
    updated_at: float | None = None
    handoff: str | None = None
    handoff_at: float | None = None
    handoff_fires: int = 0
    last_error: str | None = None
    end_reason: str | None = None
    created_at: float | None = None  # of the remote task, for the deadline
    expires_after: int | None = None  # its execution_expires_after
    outcome: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    on_succeeded: list[Any] | None = None  # None: SEEDANCE_ON_SUCCEEDED at hand-off time
    on_failed: list[Any] | None = None
    canvas: dict[str, Any] | None = None  # the caller's poll signature (chain, links) when not track()
    hint_seen: str | None = None  # the last callback taken for this job (intake.py), for de-duplication
    hint_gen: int | None = None  # the generation an early poll was last published for
    callback_nonce: str | None = None  # of the per-task callback URL submit() gave Ark (intake/urls.py)

    @classmethod
    def from_hash(cls, task_id: str, raw: dict[str, str]) -> JobRecord:
        known = set(cls.__dataclass_fields__)
        values: dict[str, Any] = {}
        for k, v in raw.items():
            if k not in known or k == "task_id":
                continue
            if k in JSON_FIELDS:
                values[k] = json.loads(v) if v else None
            elif k in FLOAT_FIELDS:
                values[k] = float(v) if v != "" else None
            elif k in INT_FIELDS:
                values[k] = int(float(v)) if v != "" else None
            elif k in ("owner", "state"):
                values[k] = v
            else:
                values[k] = v if v != "" else None  # written as '' for None (encode_fields)
        if values.get("metadata") is None:
            values["metadata"] = {}
        return cls(task_id=task_id, **values)

    def public(self) -> dict[str, Any]:
        """What ``seedance-worker jobs --json`` shows."""
        return {
            "task_id": self.task_id,
            "state": self.state,
            "status": self.status,
            "polls": self.polls,
            "gen": self.gen,
            "tracked_at": self.tracked_at,
            "next_due_at": self.next_due_at,
            "terminal_at": self.terminal_at,
            "handoff": self.handoff,
            "last_error": self.last_error,
            "end_reason": self.end_reason,
            "metadata": self.metadata,
            "outcome_status": (self.outcome or {}).get("status"),
        }


def encode_fields(fields: dict[str, Any]) -> str:
    """The fields a script writes, as the JSON object of strings it takes in ARGV[1]."""
    out: dict[str, str] = {}
    for k, v in fields.items():
        if v is None:
            out[k] = ""
        elif k in JSON_FIELDS:
            out[k] = json.dumps(v, separators=(",", ":"))
        elif isinstance(v, bool):
            out[k] = str(int(v))
        else:
            out[k] = str(v)
    return json.dumps(out, separators=(",", ":"))


@dataclass(frozen=True)
class Registration:
    created: bool
    owner: str
    state: str


@dataclass(frozen=True)
class Begun:
    """What ``begin`` found: the verdict, the crash count, the record and the 429 cool-down."""

    verdict: str  # ok | stale | missing | terminal | crashloop
    crashes: int
    record: JobRecord | None
    cooldown_s: float


@dataclass(frozen=True)
class Overdue:
    """A job the sweeper claimed: its lease ran out while polling or handing off."""

    task_id: str
    state: str
    gen: int
    owner: str
    handoff_fires: int
    canvas: dict[str, Any] | None


@dataclass(frozen=True)
class Hint:
    """What ``hint`` decided for a callback: the verdict and, when ``accepted``, the early poll."""

    verdict: str  # ignored | duplicate | unchanged | pending | scheduled | accepted
    gen: int = 0
    owner: str = ""
    countdown_s: float = 0.0
    canvas: dict[str, Any] | None = None


@dataclass(frozen=True)
class Due:
    """A parked poll the dispatcher claimed: publish it for ``due_at``."""

    task_id: str
    gen: int
    owner: str
    due_at: float
    canvas: dict[str, Any] | None


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
        lease_at: float,
        fields: dict[str, Any],
        park_at: float = 0.0,
    ) -> list[Registration]:
        """``register`` for many (task_id, owner) pairs, pipelined in batches of 500."""
        out: list[Registration] = []
        encoded = encode_fields(fields)
        for start in range(0, len(items), 500):
            pipe = self.r.pipeline(transaction=False)
            for task_id, owner in items[start : start + 500]:
                self._register(
                    keys=[keys.job(task_id), keys.JOBS, keys.DUE, keys.PARKED],
                    args=[encoded, task_id, owner, now, lease_at, park_at],
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
        script_keys = [keys.job(task_id), keys.DUE, keys.LAG] + ([cooldown_key] if cooldown_key else [])
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
        """Move a polling job from ``gen`` to ``gen + 1``; False when another copy got there first."""
        args: list[str | int | float] = [encode_fields(fields), task_id, gen, lease_at, park_at]
        return bool(self._advance(keys=[keys.job(task_id), keys.DUE, keys.PARKED], args=args))

    def finish(self, task_id: str, gen: int, *, lease_at: float, fields: dict[str, Any]) -> bool:
        """End polling at ``gen`` and enter the hand-off; False when another copy got there first."""
        args: list[str | int | float] = [encode_fields(fields), task_id, gen, lease_at]
        return bool(self._finish(keys=[keys.job(task_id), keys.DUE], args=args))

    def complete(self, task_id: str, *, ttl_s: int, fields: dict[str, Any]) -> int:
        """1 done, 2 done again (a re-fired chain), 0 no such job, -1 still polling."""
        args: list[str | int | float] = [encode_fields(fields), task_id, ttl_s]
        return int(self._complete(keys=[keys.job(task_id), keys.DUE], args=args))

    def touch(self, task_id: str, *, expected_state: str, lease_at: float, fields: dict[str, Any]) -> bool:
        """Extend the lease (and set fields) while the job is in ``expected_state``."""
        args: list[str | int | float] = [encode_fields(fields), task_id, expected_state, lease_at]
        return bool(self._touch(keys=[keys.job(task_id), keys.DUE], args=args))

    def claim_overdue(self, *, before: float, lease_at: float, limit: int = 1000) -> list[Overdue]:
        """Jobs whose lease ran out before ``before``, each given ``lease_at`` (claimed once)."""
        flat = self._claim_overdue(
            keys=[keys.DUE, keys.JOBS], args=["{}", before, lease_at, limit, keys.JOB_PREFIX]
        )
        return [
            Overdue(tid, state, int(gen), owner, int(fires), json.loads(canvas) if canvas else None)
            for tid, state, gen, owner, fires, canvas in _rows(flat, 6)
        ]

    def claim_due(self, *, horizon: float, limit: int) -> list[Due]:
        """Parked polls due before ``horizon``, taken out of the parked index (claimed once)."""
        flat = self._claim_due(keys=[keys.PARKED], args=["{}", horizon, limit, keys.JOB_PREFIX])
        return [
            Due(tid, int(gen), owner, float(due), json.loads(canvas) if canvas else None)
            for tid, gen, owner, due, canvas in _rows(flat, 5)
        ]

    def hint(
        self, task_id: str, *, status: str, seen: str, now: float, min_interval_s: float, nonce: str = ""
    ) -> Hint:
        """Take a callback for a job in one round trip: de-duplicated by ``seen``, and an early poll
        granted at most once per generation and never sooner than ``min_interval_s`` after the
        job's last poll. Nothing is written for a job that is not tracked or not polling, nor when
        ``nonce`` (of a per-task callback URL) is not the one bound to the job."""
        args: list[str | float] = ["{}", task_id, status, seen, now, min_interval_s, nonce]
        res = self._hint(keys=[keys.job(task_id)], args=args)
        verdict = _s(res[0])
        if verdict != "accepted":
            return Hint(verdict, int(_s(res[1])) if len(res) > 1 else 0)
        canvas = _s(res[4])
        return Hint(
            verdict, int(_s(res[1])), _s(res[2]), float(_s(res[3])), json.loads(canvas) if canvas else None
        )

    def bind_callback(self, task_id: str, nonce: str) -> bool:
        """Bind a per-task callback URL's nonce to the job (once); False when there is no job."""
        return bool(self._bind_callback(keys=[keys.job(task_id)], args=["{}", task_id, nonce]))

    def unhint(self, task_id: str, *, seen: str, gen: int) -> None:
        """Take back a granted hint whose early poll was never published (a retry may try again)."""
        self._unhint(keys=[keys.job(task_id)], args=["{}", task_id, seen, gen])

    def trim_jobs_index(self, *, count: int = 1000) -> int:
        """One step of a rolling scan of the jobs index: drop the ids whose record has expired.

        A finished record expires ``SEEDANCE_JOB_TTL_S`` after its hand-off completed; its id would
        otherwise stay in ``seedance:jobs`` for good (all() only drops the ids it lists). The sweeper
        calls this every sweep; a pass over N ids takes N / ``count`` sweeps. Returns how many left.
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

    def counts(self, now: float) -> tuple[int, int]:
        """(jobs in flight, of them with an expired lease): for the metrics."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(keys.DUE)
        pipe.zcount(keys.DUE, "-inf", now)
        inflight, expired = pipe.execute()
        return int(inflight), int(expired)

    def get(self, task_id: str) -> JobRecord | None:
        raw = self.r.hgetall(keys.job(task_id))
        if not raw:
            return None
        return JobRecord.from_hash(task_id, {_s(k): _s(v) for k, v in raw.items()})

    def known(self, task_ids: list[str]) -> set[str]:
        """The ids among ``task_ids`` that have a job record (in flight, or finished within its TTL)."""
        pipe = self.r.pipeline(transaction=False)
        for tid in task_ids:
            pipe.exists(keys.job(tid))
        return {tid for tid, n in zip(task_ids, pipe.execute(), strict=True) if n}

    def all(self, limit: int = 1000) -> list[JobRecord]:
        ids = [_s(x) for x in self.r.zrevrange(keys.JOBS, 0, limit - 1)]
        pipe = self.r.pipeline(transaction=False)
        for tid in ids:
            pipe.hgetall(keys.job(tid))
        out = []
        stale = []
        for tid, raw in zip(ids, pipe.execute(), strict=True):
            if raw:
                out.append(JobRecord.from_hash(tid, {_s(k): _s(v) for k, v in raw.items()}))
            else:
                stale.append(tid)
        if stale:  # records expired after their TTL: drop them from the index too
            self.r.zrem(keys.JOBS, *stale)
        return out


def _rows(flat: list[Any], width: int) -> list[list[str]]:
    items = [_s(x) for x in flat]
    return [items[i : i + width] for i in range(0, len(items), width)]


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


def scrape_counts(redis_url: str) -> Callable[[float], tuple[int, int]]:
    """``counts`` over a client of its own with short timeouts: a metrics scrape must not hang
    for the store's 30 s socket timeout while Redis is away."""
    client = redis.Redis.from_url(
        redis_url, socket_timeout=2, socket_connect_timeout=2, decode_responses=True
    )
    return JobStore(client).counts
