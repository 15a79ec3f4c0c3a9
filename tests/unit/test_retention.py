"""Every Redis key that grows with jobs expires or is trimmed, and nothing in flight is touched.

Against a real Redis: a database of this module's own on the session's server (only its ledger and
job keys are removed, before and after), so the ledger's order and the sweeper's claims are exact.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from seedance_worker import keys
from seedance_worker.cli import main
from seedance_worker.engine.store import JobStore, get_store, reset_stores
from seedance_worker.engine.sweep import run_sweep
from seedance_worker.errors import ConfigError
from seedance_worker.models import Outcome
from seedance_worker.settings import get_settings, load_settings, reset_settings_cache
from seedance_worker.steps.charge import (
    LEDGER,
    LEDGER_BY_TASK,
    build_entry,
    charge_usage,
    record_charge,
)
from seedance_worker.steps.notify import delivery_key, notify, webhook_id
from seedance_worker.testing.webhooks import Delivery, WebhookReceiver
from tests.support.ids import new_id

DB = 12
DAY_S = 86400
FAR_S = 10 * DAY_S  # leases this far ahead: the sweeper never finds these jobs overdue


def _own_keys(r: redis.Redis) -> list[str]:
    return [LEDGER, LEDGER_BY_TASK, keys.JOBS, keys.DUE, keys.PARKED, *r.scan_iter(keys.JOB_PREFIX + "*")]


@pytest.fixture
def r(env: pytest.MonkeyPatch, redis_url: str) -> Iterator[redis.Redis]:
    """SEEDANCE_REDIS_URL on database 12, its ledger and job keys empty."""
    env.setenv("SEEDANCE_REDIS_URL", urlunsplit(urlsplit(redis_url)._replace(path=f"/{DB}")))
    reset_settings_cache()
    reset_stores()
    client = get_store(get_settings()).r
    client.delete(*_own_keys(client))
    yield client
    client.delete(*_own_keys(client))


def wait_gone(r: redis.Redis, key: str) -> None:
    deadline = time.monotonic() + 5
    while r.exists(key) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not r.exists(key)


def register(store: JobStore, tid: str) -> None:
    now = time.time()
    assert store.register(tid, "owner-" + tid, now=now, lease_at=now + FAR_S, fields={}).created


def expired_record(store: JobStore, tid: str) -> None:
    """A job that polled, handed off, completed, and whose record then ran out its TTL."""
    register(store, tid)
    assert store.finish(tid, 1, lease_at=time.time() + FAR_S, fields={})
    assert store.complete(tid, ttl_s=1, fields={}) == 1
    store.r.pexpire(keys.job(tid), 1)
    wait_gone(store.r, keys.job(tid))


# --- the jobs index -------------------------------------------------------------------------------


def test_the_sweeper_drops_ids_of_expired_records_and_keeps_every_job_in_flight(r: redis.Redis) -> None:
    """After a completed record's TTL ran out (or a record vanished), one sweep removes its id from
    seedance:jobs; a polling job, a job handing off and a finished record within its TTL are left
    exactly as they were (record, index entry, lease)."""
    store = get_store(get_settings())
    polling, handing_off, finished, expired, vanished = (new_id() for _ in range(5))
    register(store, polling)
    register(store, handing_off)
    assert store.finish(handing_off, 1, lease_at=time.time() + FAR_S, fields={})
    register(store, finished)
    assert store.finish(finished, 1, lease_at=time.time() + FAR_S, fields={})
    assert store.complete(finished, ttl_s=3600, fields={}) == 1
    expired_record(store, expired)
    register(store, vanished)
    assert store.finish(vanished, 1, lease_at=time.time() + FAR_S, fields={})
    assert store.complete(vanished, ttl_s=3600, fields={}) == 1
    r.delete(keys.job(vanished))  # a finished record lost before its TTL ran out
    assert r.zscore(keys.JOBS, expired) is not None and r.zscore(keys.JOBS, vanished) is not None
    kept = (polling, handing_off, finished)
    before = {
        tid: (r.hgetall(keys.job(tid)), r.zscore(keys.JOBS, tid), r.zscore(keys.DUE, tid)) for tid in kept
    }

    assert run_sweep(get_settings()) == 0  # nothing overdue: nothing re-driven

    assert r.zscore(keys.JOBS, expired) is None and r.zscore(keys.JOBS, vanished) is None
    after = {
        tid: (r.hgetall(keys.job(tid)), r.zscore(keys.JOBS, tid), r.zscore(keys.DUE, tid)) for tid in kept
    }
    assert after == before
    assert r.ttl(keys.job(polling)) == -1 and r.ttl(keys.job(handing_off)) == -1  # in flight: no TTL


def test_small_scan_steps_cover_the_whole_index_in_one_pass(r: redis.Redis) -> None:
    """With 10 ids per step over 210 ids (past 128 the zset is a hashtable, so the scan really is
    paged), one pass (until the cursor is back at 0) drops every expired id and no live one."""
    store = JobStore(r)
    live = [new_id() for _ in range(150)]
    gone = [new_id() for _ in range(60)]
    now = time.time()
    regs = store.register_many(
        [(tid, "owner") for tid in live + gone], now=now, lease_at=now + FAR_S, fields={}
    )
    assert all(reg.created for reg in regs)
    for tid in live + gone:  # finished records: the jobs index lists them until their TTL runs out
        assert store.finish(tid, 1, lease_at=now + FAR_S, fields={})
        assert store.complete(tid, ttl_s=3600, fields={}) == 1
    r.delete(*[keys.job(tid) for tid in gone])  # as if their TTL had run out
    removed, steps = store.trim_jobs_index(count=10), 1
    while store.index_cursor != 0:
        removed += store.trim_jobs_index(count=10)
        steps += 1
    assert steps > 1
    assert removed == len(gone)
    assert set(r.zrange(keys.JOBS, 0, -1)) == set(live)


# --- the ledger -----------------------------------------------------------------------------------


def outcome(tid: str) -> dict[str, Any]:
    snap = {"id": tid, "model": "seedance-1-5-pro-251215", "status": "succeeded",
            "usage": {"completion_tokens": 1000, "total_tokens": 1000}}  # fmt: skip
    return Outcome.model_validate({"task_id": tid, "status": "succeeded", "snapshot": snap}).wire()


def charged(tid: str, days_ago: float) -> None:
    """An entry written by an earlier charge, ``days_ago`` days ago."""
    out = Outcome.model_validate(outcome(tid))
    settings = get_settings()
    assert record_charge(tid, build_entry(out, settings, now=time.time() - days_ago * DAY_S), settings)[0]


def ledger_ids(r: redis.Redis) -> list[str]:
    return list(r.lrange(LEDGER, 0, -1))


def test_a_new_charge_trims_entries_past_the_retention_but_never_one_whose_job_still_exists(
    r: redis.Redis,
) -> None:
    """Entries charged 50 days ago (retention 40) go at the next charge, oldest first; one whose job
    is still handing off stays, and so does everything behind it, until its record is gone."""
    store = get_store(get_settings())
    old1, in_flight, old2, recent = new_id(), new_id(), new_id(), new_id()
    charged(old1, 50)
    charged(in_flight, 49)
    register(store, in_flight)
    assert store.finish(in_flight, 1, lease_at=time.time() + FAR_S, fields={})
    charged(old2, 48)
    charged(recent, 1)

    first = new_id()
    charge_usage(outcome(first))
    assert ledger_ids(r) == [in_flight, old2, recent, first]
    assert r.hget(LEDGER_BY_TASK, old1) is None
    assert json.loads(r.hget(LEDGER_BY_TASK, in_flight))["task_id"] == in_flight

    # A re-fired chain of the job in flight finds its entry and charges nothing new.
    again = charge_usage(outcome(in_flight))
    assert again["charge"]["entry_id"] == json.loads(r.hget(LEDGER_BY_TASK, in_flight))["entry_id"]
    assert ledger_ids(r) == [in_flight, old2, recent, first]

    assert store.complete(in_flight, ttl_s=1, fields={}) == 1
    r.pexpire(keys.job(in_flight), 1)
    wait_gone(r, keys.job(in_flight))
    second = new_id()
    charge_usage(outcome(second))
    assert ledger_ids(r) == [recent, first, second]
    assert r.hlen(LEDGER_BY_TASK) == 3


def test_after_the_retention_every_entry_is_gone(r: redis.Redis) -> None:
    """41 days on (retention 40), a trim leaves neither the ledger list nor its entries."""
    from seedance_worker.steps.charge import trim_ledger  # new with the retention

    ids = [new_id() for _ in range(5)]
    for tid in ids:
        charge_usage(outcome(tid))
    assert trim_ledger(get_settings(), now=time.time() + 39 * DAY_S) == 0
    assert trim_ledger(get_settings(), now=time.time() + 41 * DAY_S) == 5
    assert not r.exists(LEDGER) and not r.exists(LEDGER_BY_TASK)


def test_the_retention_setting_is_read_and_a_short_one_is_refused(env: pytest.MonkeyPatch) -> None:
    """SEEDANCE_LEDGER_RETENTION_DAYS defaults to 40; below 8 days (the API keeps a task 7) it fails
    at start, naming the setting and why."""
    assert load_settings({}).ledger_retention_days == 40
    assert load_settings({"SEEDANCE_LEDGER_RETENTION_DAYS": "8"}).ledger_retention_days == 8
    with pytest.raises(ConfigError) as err:
        load_settings({"SEEDANCE_LEDGER_RETENTION_DAYS": "3"})
    assert "SEEDANCE_LEDGER_RETENTION_DAYS: must be at least 8 days" in str(err.value)
    assert "charged twice" in str(err.value)


def test_ledger_export_writes_every_entry_as_one_json_line(
    r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """`seedance-worker ledger --export jsonl` prints each entry in charge order as one JSON object
    per line (nothing else on stdout); --since keeps the entries charged at or after that time."""
    old, new = new_id(), new_id()
    charged(old, 10)
    charge_usage(outcome(new))
    assert main(["ledger", "--export", "jsonl"]) == 0
    out = capsys.readouterr()
    lines = [json.loads(line) for line in out.out.splitlines()]
    assert [e["task_id"] for e in lines] == [old, new]
    assert lines[1] == json.loads(r.hget(LEDGER_BY_TASK, new))
    assert "exported 2 ledger entries" in out.err
    assert main(["ledger", "--export", "jsonl", "--since", str(time.time() - DAY_S)]) == 0
    assert [json.loads(line)["task_id"] for line in capsys.readouterr().out.splitlines()] == [new]
    # --since narrows the totals too.
    assert main(["ledger", "--format", "json", "--since", str(time.time() - DAY_S)]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["count"] == 1


# --- delivery records -----------------------------------------------------------------------------


def test_a_delivery_record_outlives_a_short_job_ttl_and_a_recreated_one_still_expires(
    r: redis.Redis, env: pytest.MonkeyPatch
) -> None:
    """With SEEDANCE_JOB_TTL_S=60 the delivery record still lives 8 days (a task tracked again after
    its job record expired must find it delivered); and a record lost during the POST (a Redis
    restarted without its data) comes back with that TTL, not as a key that never expires."""
    env.setenv("SEEDANCE_JOB_TTL_S", "60")
    env.setenv("SEEDANCE_NOTIFY_RETRY_FOR_S", "10")
    env.delenv("SEEDANCE_NOTIFY_SECRET", raising=False)
    tid = new_id()
    key = delivery_key(webhook_id(tid, "succeeded"))

    def lose_the_record(d: Delivery) -> int:
        r.delete(key)
        return 200

    with WebhookReceiver(answer=lose_the_record) as receiver:
        env.setenv("SEEDANCE_NOTIFY_URL", receiver.url)
        reset_settings_cache()
        result = notify(outcome(tid))
    assert result["notification"]["delivered"] is True
    assert r.hget(key, "delivered") == "1"
    assert 7 * DAY_S < r.ttl(key) <= 8 * DAY_S
