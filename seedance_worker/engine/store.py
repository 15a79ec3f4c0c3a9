"""Job records in Redis: one hash per tracked remote task, fenced by a generation number.

Keys (all under ``seedance:``):

- ``seedance:job:{task_id}``  hash, the job record (fields below)
- ``seedance:jobs``           zset task_id -> tracked_at, for listing
- ``seedance:due``            zset task_id -> lease deadline; the sweeper re-drives what is overdue
- ``seedance:parked``         zset task_id -> due time of a long wait parked here instead of a
                              countdown message (dispatch.py publishes it when it comes due)
- ``seedance:lag``            hash ``lag_s``/``at``: how late polls have been starting lately (queue
                              backlog); the sweeper waits this much longer before re-driving
- ``seedance:idem:{key}``     hash, submit idempotency records

Every state change is one Lua script, so two copies of a poll message (a redelivery, a restore after
the visibility timeout, a duplicate ``track()``) can never both advance a job: the copy whose ``gen``
no longer matches is stale and drops out without calling the API (celery-polling.md section 3).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import redis

from seedance_worker.settings import Settings, get_settings

PREFIX = "seedance:"
JOBS = PREFIX + "jobs"
DUE = PREFIX + "due"
PARKED = PREFIX + "parked"
LAG = PREFIX + "lag"
LAG_WINDOW_S = 5.0  # the lag kept is the largest seen over about this long


def job_key(task_id: str) -> str:
    return f"{PREFIX}job:{task_id}"


def idem_key(key: str) -> str:
    return f"{PREFIX}idem:{key}"


# KEYS[1]=job KEYS[2]=jobs KEYS[3]=due KEYS[4]=parked; ARGV: owner, now, lease_at, park_at (0: no),
# then field/value pairs, the first pair being task_id
_REGISTER = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then
  return {0, owner, redis.call('HGET', KEYS[1], 'state') or ''}
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'gen', 1, 'state', 'polling', 'polls', 0,
           'crashes', 0, 'error_streak', 0, 'status_polls', 0, 'tracked_at', ARGV[2])
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[6])
if tonumber(ARGV[4]) > 0 then redis.call('ZADD', KEYS[4], ARGV[4], ARGV[6]) end
return {1, ARGV[1], 'polling'}
"""

# KEYS[1]=job KEYS[2]=due KEYS[3]=lag [KEYS[4]=429 cool-down]; ARGV: gen, lease_at, max_crashes,
# task_id, lag_s ('' when unknown)
# -> {verdict, ...}: ok | stale | missing | terminal (message is the terminal gen) | crashloop
_BEGIN = """
local rec = redis.call('HMGET', KEYS[1], 'gen', 'state', 'terminal_gen', 'crashes')
if not rec[1] then return {'missing', '0', '0'} end
local gen = tonumber(rec[1])
local msg = tonumber(ARGV[1])
if rec[2] ~= 'polling' then
  if rec[3] and tonumber(rec[3]) == msg then
    return {'terminal', '0', '0', unpack(redis.call('HGETALL', KEYS[1]))}
  end
  return {'stale', '0', '0'}
end
if gen ~= msg then return {'stale', '0', '0'} end
local crashes = redis.call('HINCRBY', KEYS[1], 'crashes', 1)
if crashes > tonumber(ARGV[3]) then
  return {'crashloop', tostring(crashes - 1), '0', unpack(redis.call('HGETALL', KEYS[1]))}
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
local t = redis.call('TIME')
-- How late this current-generation copy started (a stale copy's lateness says nothing): the largest
-- over the last window, so the sweeper can tell a backlogged queue from a lost message.
local lag = tonumber(ARGV[5])
if lag then
  local now_s = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local cur = redis.call('HMGET', KEYS[3], 'lag_s', 'at')
  if not cur[2] or now_s - tonumber(cur[2]) > LAG_WINDOW_S or lag >= tonumber(cur[1]) then
    redis.call('HSET', KEYS[3], 'lag_s', ARGV[5], 'at', string.format('%.3f', now_s))
  end
end
-- The shared 429 cool-down, read in the same round trip (microseconds still to wait).
local cool = 0
if KEYS[4] then
  local until_us = tonumber(redis.call('GET', KEYS[4]) or '0')
  cool = until_us - (tonumber(t[1]) * 1000000 + tonumber(t[2]))
  if cool < 0 then cool = 0 end
end
return {'ok', '0', string.format('%.0f', cool), unpack(redis.call('HGETALL', KEYS[1]))}
"""

# KEYS[1]=job KEYS[2]=due KEYS[3]=parked; ARGV: gen, lease_at, task_id, park_at (0: not parked),
# then field/value pairs
_ADVANCE = """
local rec = redis.call('HMGET', KEYS[1], 'gen', 'state')
if not rec[1] or rec[2] ~= 'polling' or tonumber(rec[1]) ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'gen', tonumber(ARGV[1]) + 1, 'crashes', 0)
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
if tonumber(ARGV[4]) > 0 then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3]) end
return 1
"""

# KEYS[1]=job KEYS[2]=due; ARGV: gen, lease_at, task_id, then field/value pairs
_FINISH = """
local rec = redis.call('HMGET', KEYS[1], 'gen', 'state')
if not rec[1] or rec[2] ~= 'polling' or tonumber(rec[1]) ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'gen', tonumber(ARGV[1]) + 1, 'terminal_gen', ARGV[1], 'state', 'handoff',
           'handoff', 'pending', 'crashes', 0)
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
"""

# KEYS[1]=job KEYS[2]=due; ARGV: ttl_s, task_id, then field/value pairs
_COMPLETE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'polling' then return -1 end
redis.call('HSET', KEYS[1], 'state', 'done')
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
if state == 'done' then return 2 end
return 1
"""

# KEYS[1]=job KEYS[2]=due; ARGV: expected_state, lease_at, task_id, then field/value pairs
_TOUCH = """
if redis.call('HGET', KEYS[1], 'state') ~= ARGV[1] then return 0 end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
"""

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
            else:
                values[k] = v
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


def _flatten(fields: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for k, v in fields.items():
        if v is None:
            v = ""
        elif k in JSON_FIELDS:
            v = json.dumps(v, separators=(",", ":"))
        elif isinstance(v, bool):
            v = int(v)
        out.extend((k, v))
    return out


@dataclass(frozen=True)
class Registration:
    created: bool
    owner: str
    state: str


class JobStore:
    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._register = client.register_script(_REGISTER)
        self._begin = client.register_script(_BEGIN.replace("LAG_WINDOW_S", repr(LAG_WINDOW_S)))
        self._advance = client.register_script(_ADVANCE)
        self._finish = client.register_script(_FINISH)
        self._complete = client.register_script(_COMPLETE)
        self._touch = client.register_script(_TOUCH)

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
        args = [owner, now, lease_at, park_at, *_flatten({"task_id": task_id, **fields})]
        created, who, state = self._register(keys=[job_key(task_id), JOBS, DUE, PARKED], args=args)
        return Registration(bool(int(created)), _s(who), _s(state))

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
        flat_fields = _flatten(fields)
        for start in range(0, len(items), 500):
            pipe = self.r.pipeline(transaction=False)
            for task_id, owner in items[start : start + 500]:
                args = [owner, now, lease_at, park_at, "task_id", task_id, *flat_fields]
                self._register(keys=[job_key(task_id), JOBS, DUE, PARKED], args=args, client=pipe)
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
    ) -> tuple[str, int, JobRecord | None, float]:
        """Fence a poll run in one round trip: verdict, crash count, the record (when it may
        proceed) and how long the shared 429 cool-down still runs (seconds). ``lag_s`` (how late
        this run started) feeds the fleet's lag that the sweeper allows for."""
        keys = [job_key(task_id), DUE, LAG] + ([cooldown_key] if cooldown_key else [])
        lag = "" if lag_s is None else f"{max(0.0, lag_s):.3f}"
        res = self._begin(keys=keys, args=[gen, lease_at, max_crashes, task_id, lag])
        verdict = _s(res[0])
        crashes = int(_s(res[1]))
        cooldown_s = int(_s(res[2])) / 1_000_000
        flat = [_s(x) for x in res[3:]]
        record = JobRecord.from_hash(task_id, dict(zip(flat[::2], flat[1::2], strict=True))) if flat else None
        return verdict, crashes, record, cooldown_s

    def advance(
        self, task_id: str, gen: int, *, lease_at: float, fields: dict[str, Any], park_at: float = 0.0
    ) -> bool:
        args = [gen, lease_at, task_id, park_at, *_flatten(fields)]
        return bool(self._advance(keys=[job_key(task_id), DUE, PARKED], args=args))

    def finish(self, task_id: str, gen: int, *, lease_at: float, fields: dict[str, Any]) -> bool:
        args = [gen, lease_at, task_id, *_flatten(fields)]
        return bool(self._finish(keys=[job_key(task_id), DUE], args=args))

    def complete(self, task_id: str, *, ttl_s: int, fields: dict[str, Any]) -> int:
        args = [ttl_s, task_id, *_flatten(fields)]
        return int(self._complete(keys=[job_key(task_id), DUE], args=args))

    def touch(self, task_id: str, *, expected_state: str, lease_at: float, fields: dict[str, Any]) -> bool:
        args = [expected_state, lease_at, task_id, *_flatten(fields)]
        return bool(self._touch(keys=[job_key(task_id), DUE], args=args))

    def fleet_lag_s(self, *, max_age_s: float = 2 * LAG_WINDOW_S) -> float:
        """How late polls have been starting lately (a queue backlog); 0 when none began recently."""
        pipe = self.r.pipeline(transaction=False)
        pipe.time()
        pipe.hmget(LAG, "lag_s", "at")
        (secs, micros), (lag, at) = pipe.execute()
        if lag is None or at is None or secs + micros / 1e6 - float(at) > max_age_s:
            return 0.0
        return float(lag)

    def get(self, task_id: str) -> JobRecord | None:
        raw = self.r.hgetall(job_key(task_id))
        if not raw:
            return None
        return JobRecord.from_hash(task_id, {_s(k): _s(v) for k, v in raw.items()})

    def all(self, limit: int = 1000) -> list[JobRecord]:
        ids = [_s(x) for x in self.r.zrevrange(JOBS, 0, limit - 1)]
        pipe = self.r.pipeline(transaction=False)
        for tid in ids:
            pipe.hgetall(job_key(tid))
        out = []
        stale = []
        for tid, raw in zip(ids, pipe.execute(), strict=True):
            if raw:
                out.append(JobRecord.from_hash(tid, {_s(k): _s(v) for k, v in raw.items()}))
            else:
                stale.append(tid)
        if stale:  # records expired after their TTL: drop them from the index too
            self.r.zrem(JOBS, *stale)
        return out



def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_stores: dict[tuple[int, str], JobStore] = {}
_lock = threading.Lock()


def get_store(settings: Settings | None = None) -> JobStore:
    """One Redis connection pool per process (prefork children build their own after fork)."""
    settings = settings or get_settings()
    key = (os.getpid(), settings.redis_url)
    with _lock:
        store = _stores.get(key)
        if store is None:
            client = redis.Redis.from_url(
                settings.redis_url,
                decode_responses=True,
                socket_timeout=30,
                socket_connect_timeout=5,
                health_check_interval=25,
                retry_on_timeout=True,
            )
            store = JobStore(client)
            _stores[key] = store
        return store


def reset_stores() -> None:
    with _lock:
        _stores.clear()
