"""Admission control's decisions: the pure ones (stale slots, entries, settings) and each script
(seedance_worker/engine/lua/admit_*.lua) driven against a real Redis, on an account of its own."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest

from seedance_worker import errors, keys
from seedance_worker.engine.admission import (
    PLACEHOLDER,
    Admission,
    Entry,
    admitting_accounts,
    cap,
    stale_slots,
)
from seedance_worker.engine.store import JobRecord
from seedance_worker.settings import load_settings

NOW = 1_000_000.0


def _record(status: str | None, state: str = "polling") -> JobRecord:
    return JobRecord(task_id="x", state=state, status=status)


def test_stale_slots_frees_jobs_seen_out_of_the_queue_and_orphans_only() -> None:
    members = [
        ("cgt-queued", NOW - 900), ("cgt-unread", NOW - 900), ("cgt-running", NOW - 1),
        ("cgt-done", NOW - 1), ("cgt-young-no-record", NOW - 5), ("cgt-old-no-record", NOW - 900),
        (PLACEHOLDER + "waiting-key", NOW - 900), (PLACEHOLDER + "young-direct", NOW - 5),
        (PLACEHOLDER + "old-direct", NOW - 900),
    ]  # fmt: skip
    records = {
        "cgt-queued": _record("queued"),
        "cgt-unread": _record(None),
        "cgt-running": _record("running"),
        "cgt-done": _record("succeeded", state="done"),
    }
    drop = stale_slots(members, records, ["waiting-key"], now=NOW, create_window_s=65.0)
    assert drop == ["cgt-running", "cgt-done", "cgt-old-no-record", PLACEHOLDER + "old-direct"]


def test_entry_round_trips_through_json_and_ignores_unknown_fields() -> None:
    e = Entry.new("k1", {"model": "m", "content": [{"type": "text", "text": "t"}]}, {"raw": True}, "n1")
    assert Entry.from_json(e.to_json()) == e
    assert Entry.from_json(json.dumps({**json.loads(e.to_json()), "later_field": 1})) == e


def test_the_cap_is_per_account_with_the_default_s_as_fallback() -> None:
    s = load_settings({"SEEDANCE_ADMISSION_MAX_QUEUED": "110", "SEEDANCE_ACCOUNTS": json.dumps(
        {"volc": {"api_key": "k"}, "off": {"api_key": "k", "admission_max_queued": 0},
         "big": {"api_key": "k", "admission_max_queued": 500}})})  # fmt: skip
    assert [cap(s, a) for a in (None, "volc", "off", "big")] == [110, 110, 0, 500]
    assert admitting_accounts(s) == [None, "big", "volc"]
    assert admitting_accounts(load_settings({})) == []  # off by default
    with pytest.raises(errors.ConfigError, match="SEEDANCE_ADMISSION_MAX_QUEUED"):
        load_settings({"SEEDANCE_ADMISSION_MAX_QUEUED": "-1"})


# --- the scripts, against a real Redis -------------------------------------------------------------


@pytest.fixture
def gate(redis_url: str) -> Iterator[Admission]:
    """Admission at 2 on an account named for this test only; its keys removed afterwards."""
    name = f"u{uuid.uuid4().hex[:10]}"
    settings = load_settings({"SEEDANCE_REDIS_URL": redis_url, "SEEDANCE_ADMISSION_MAX_QUEUED": "2",
                              "SEEDANCE_ACCOUNTS": json.dumps({name: {"api_key": "k"}})})  # fmt: skip
    adm = Admission(settings, name)
    try:
        yield adm
    finally:
        adm.r.delete(*keys.admission(name))
        adm.r.delete(*[_idem(adm, k) for k in ("a", "b", "c", "d", "e")])


def _idem(gate: Admission, key: str) -> str:
    return keys.idempotency(key, gate.account)


def _entry(key: str) -> Entry:
    return Entry.new(key, {"model": "m", "content": []}, {})


def _enter(gate: Admission, key: str) -> tuple[str, int]:
    got = gate.enter(_entry(key), _idem(gate, key))
    return got.verdict, got.position


def test_enter_creates_under_the_cap_then_queues_in_order(gate: Admission) -> None:
    assert [_enter(gate, k) for k in "abcd"] == [("create", 0), ("create", 0), ("queued", 1), ("queued", 2)]
    assert gate.used() == 2
    assert [w["idempotency_key"] for w in gate.waiting(10)] == ["c", "d"]
    assert [w["position"] for w in gate.waiting(10)] == [1, 2]


def test_a_waiting_key_entered_again_gets_its_handle_not_a_second_place(gate: Admission) -> None:
    _enter(gate, "a"), _enter(gate, "b")
    first = gate.enter(_entry("c"), _idem(gate, "c"))
    again = gate.enter(_entry("c"), _idem(gate, "c"))
    assert (first.verdict, again.verdict) == ("queued", "waiting")
    assert again.celery_id == first.celery_id
    assert gate.r.llen(gate.fifo) == 1


def test_a_key_with_its_task_takes_no_slot(gate: Admission) -> None:
    gate.r.hset(_idem(gate, "a"), mapping={"state": "created", "remote_id": "cgt-1"})
    gate.r.hset(_idem(gate, "b"), mapping={"state": "posting"})
    gate.r.hset(_idem(gate, "c"), mapping={"state": "released"})  # a refused create: posts again
    assert [_enter(gate, k)[0] for k in "abc"] == ["known", "busy", "create"]
    assert gate.used() == 1


def test_a_newcomer_never_jumps_the_queue(gate: Admission) -> None:
    """A free slot with submissions waiting, or an admitter running, is the queue's, not the newcomer's."""
    assert [_enter(gate, k)[0] for k in "abc"] == ["create", "create", "queued"]
    gate.settled("a", "cgt-a")
    gate.release("cgt-a")
    assert gate.used() == 1
    assert _enter(gate, "d") == ("queued", 2)
    gate.r.delete(gate.fifo)
    token = gate.lock()
    assert token is not None and _enter(gate, "e")[0] == "queued"
    gate.unlock(token)
    assert gate.r.get(gate.lock_key) is None


def test_next_takes_the_head_in_order_and_redrives_a_head_left_mid_create(gate: Admission) -> None:
    assert [_enter(gate, k)[0] for k in "abcde"] == ["create", "create", "queued", "queued", "queued"]
    token = gate.lock()
    assert token is not None
    assert gate.next("not-the-token").verdict == "lost"
    assert gate.next(token).verdict == "full"
    gate.unclaim("b")
    step = gate.next(token)
    assert step.verdict == "go" and step.entry is not None and step.entry.key == "c"
    again = gate.next(token)  # no done(): an admitter died mid-create; c goes again, no second slot
    assert again.entry is not None and again.entry.key == "c" and gate.used() == 2
    gate.settled("c", "cgt-c")
    gate.done("c")
    assert gate.next(token).verdict == "full"
    gate.release("cgt-c")
    gate.r.hdel(gate.entries, "d")  # d was admitted or failed meanwhile: a stray key is skipped
    step = gate.next(token)
    assert step.entry is not None and step.entry.key == "e"
    gate.fail("e")
    assert gate.next(token).verdict == "empty" and gate.used() == 1
    assert int(gate.r.pttl(gate.lock_key)) > 0


def test_a_held_queue_gives_the_head_s_slot_back_and_waits(gate: Admission) -> None:
    _enter(gate, "a"), _enter(gate, "b"), _enter(gate, "c")
    gate.unclaim("a"), gate.unclaim("b")
    token = gate.lock()
    assert token is not None
    step = gate.next(token)
    assert step.entry is not None
    gate.hold(step.entry.key, 5.0)
    assert gate.used() == 0 and gate.next(token).verdict == "hold" and not gate.pending()
    assert 0 < int(gate.r.pttl(gate.hold_key)) <= 5000
    assert [w["idempotency_key"] for w in gate.waiting(10)] == ["c"]


def test_a_refused_direct_create_waits_first_in_line(gate: Admission) -> None:
    _enter(gate, "a"), _enter(gate, "b"), _enter(gate, "c")
    b = _entry("b")
    assert gate.requeue_first(b, 1.0) == b.celery_id
    assert [w["idempotency_key"] for w in gate.waiting(10)] == ["b", "c"]
    assert gate.used() == 1 and gate.r.exists(gate.hold_key)
    # A second caller of the same key refused at the same moment gets the first one's handle.
    assert gate.requeue_first(_entry("b"), 1.0) == b.celery_id
    assert [w["idempotency_key"] for w in gate.waiting(10)] == ["b", "c"]


def test_release_sends_one_admitter_only_when_it_has_work(gate: Admission) -> None:
    for k, rid in (("a", "cgt-a"), ("b", "cgt-b")):
        _enter(gate, k)
        gate.settled(k, rid)
    assert not gate.release("cgt-a")  # nobody waits
    assert not gate.release("cgt-unknown")
    _enter(gate, "c")  # the slot freed above went to c
    _enter(gate, "d")
    gate.settled("c", "cgt-c")
    assert gate.release("cgt-b")
    assert not gate.check()  # one admit message is on its way already
    gate.clear_kick()  # it started
    token = gate.lock()
    assert token is not None and not gate.check()  # an admitter runs: it looks again before it stops
    gate.unlock(token)
    assert gate.check()


def test_reconcile_frees_what_the_job_records_say_left_the_queue(gate: Admission) -> None:
    gate.r.zadd(
        gate.slots, {"cgt-never-tracked": time.time() - 3600, PLACEHOLDER + "gone": time.time() - 3600}
    )
    assert gate.reconcile() == 0  # nobody waits: nothing to do
    _enter(gate, "a")
    assert gate.reconcile() == 2 and gate.used() == 0
