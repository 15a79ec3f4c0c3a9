"""The job store's scripts (seedance_worker/engine/lua/*.lua), each driven against a real Redis.

Every test uses fresh task ids and its own band of lease times (below every earlier test's band),
so the shared ``due``/``parked`` indexes never hand one test another's jobs; its keys are removed
afterwards.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from seedance_worker import keys
from seedance_worker.engine.store import LAG_WINDOW_S, JobRecord, JobStore, encode_fields
from seedance_worker.engine.store_rows import Overdue

NOW = 4_000_000_000.0  # tracked_at: above any real clock, so all() lists these jobs first
GRACE = 10.0  # the lease a parked job has past its due time, in these tests
_bands = itertools.count()


class Lab:
    """A store, a band of lease times of this test's own, and the ids it created."""

    def __init__(self, redis_url: str) -> None:
        self.store = JobStore(redis.Redis.from_url(redis_url, decode_responses=True))
        self.r = self.store.r
        self.t = 1_000_000.0 - 10_000.0 * next(_bands)  # this test's times: t .. t + 1000
        self.ids: list[str] = []

    def new_id(self) -> str:
        tid = f"cgt-20260101000000-{uuid.uuid4().hex[:8]}"
        self.ids.append(tid)
        return tid

    def job(self, *, owner: str = "owner-1", lease: float = 500.0, park: float = 0.0,
            fields: dict[str, Any] | None = None) -> str:  # fmt: skip
        """A newly registered polling job at gen 1 (lease and park relative to this test's band)."""
        tid = self.new_id()
        reg = self.store.register(tid, owner, now=NOW, lease_at=self.t + lease, fields=fields or {},
                                  park_at=self.t + park if park else 0.0)  # fmt: skip
        assert reg.created
        return tid

    def due(self, tid: str) -> float | None:
        return self.r.zscore(keys.DUE, tid)

    def parked(self, tid: str) -> float | None:
        return self.r.zscore(keys.PARKED, tid)

    def snapshot(self, tid: str) -> tuple[Any, ...]:
        """Everything the store keeps about one job."""
        return (self.r.hgetall(keys.job(tid)), self.due(tid), self.parked(tid),
                self.r.zscore(keys.JOBS, tid), self.r.ttl(keys.job(tid)))  # fmt: skip

    def cleanup(self) -> None:
        if not self.ids:
            return
        pipe = self.r.pipeline(transaction=False)
        for tid in self.ids:
            pipe.delete(keys.job(tid))
        for index in (keys.DUE, keys.PARKED, keys.JOBS):
            pipe.zrem(index, *self.ids)
        pipe.execute()


@pytest.fixture
def lab(redis_url: str) -> Iterator[Lab]:
    lab = Lab(redis_url)
    yield lab
    lab.cleanup()


def redis_now_us(r: redis.Redis) -> int:
    secs, micros = r.time()
    return int(secs) * 1_000_000 + int(micros)


# --- register ---------------------------------------------------------------------------------


def test_register_writes_the_record_and_its_one_entry_a_due_lease(lab: Lab) -> None:
    """A first registration creates a polling record at gen 1 owned by the caller and leases it in the due index, with no parked entry and none in the jobs index (that lists finished records)."""
    tid = lab.new_id()
    reg = lab.store.register(tid, "chain-a", now=NOW, lease_at=lab.t + 30, fields={"status": "queued"})
    assert (reg.created, reg.owner, reg.state) == (True, "chain-a", "polling")
    rec = lab.store.get(tid)
    assert rec is not None
    assert (rec.owner, rec.state, rec.gen, rec.polls, rec.crashes, rec.status) == (
        "chain-a",
        "polling",
        1,
        0,
        0,
        "queued",
    )
    assert rec.tracked_at == NOW
    assert lab.r.zscore(keys.JOBS, tid) is None
    assert lab.due(tid) == lab.t + 30
    assert lab.parked(tid) is None


def test_register_with_park_at_writes_the_parked_entry_instead_of_a_lease(lab: Lab) -> None:
    """With park_at > 0 the registration parks the job in the parked index at park_at, and that is
    its one entry: no lease in due (its lease is the parked time + the grace)."""
    tid = lab.job(lease=40, park=25)
    assert lab.parked(tid) == lab.t + 25
    assert lab.due(tid) is None


def test_register_twice_creates_nothing_and_returns_the_first_owner_and_state(lab: Lab) -> None:
    """A second registration of the same id changes nothing and returns the first owner and the current state."""
    tid = lab.job(owner="first", lease=30, park=20, fields={"status": "queued"})
    assert lab.store.finish(tid, 1, lease_at=lab.t + 60, fields={})
    before = lab.snapshot(tid)
    reg = lab.store.register(tid, "second", now=NOW + 5, lease_at=lab.t + 99, fields={"status": "running"},
                             park_at=lab.t + 98)  # fmt: skip
    assert (reg.created, reg.owner, reg.state) == (False, "first", "handoff")
    assert lab.snapshot(tid) == before


def test_register_many_mixes_new_and_existing_ids(lab: Lab) -> None:
    """register_many creates the new ids with their own owners and reports the existing ones' first owner, in input order."""
    old = lab.job(owner="old-owner", lease=10)
    new1, new2 = lab.new_id(), lab.new_id()
    before = lab.snapshot(old)
    regs = lab.store.register_many([(new1, "o1"), (old, "o-other"), (new2, "o2")], now=NOW,
                                   lease_at=lab.t + 50, fields={"status": "queued"})  # fmt: skip
    assert [(g.created, g.owner, g.state) for g in regs] == [
        (True, "o1", "polling"), (False, "old-owner", "polling"), (True, "o2", "polling"),
    ]  # fmt: skip
    assert lab.snapshot(old) == before
    for tid, owner in ((new1, "o1"), (new2, "o2")):
        rec = lab.store.get(tid)
        assert rec is not None and rec.owner == owner and rec.status == "queued"
        assert lab.due(tid) == lab.t + 50


def test_register_many_takes_a_lease_and_a_park_time_per_item(lab: Lab) -> None:
    """Jittered first polls: each id is leased, or parked, at its own time; a list of the wrong length
    is refused before anything is written."""
    a, b, c, d = (lab.new_id() for _ in range(4))
    regs = lab.store.register_many([(a, "oa"), (b, "ob")], now=NOW, lease_at=[lab.t + 10, lab.t + 20],
                                   fields={})  # fmt: skip
    regs += lab.store.register_many([(c, "oc"), (d, "od")], now=NOW, lease_at=lab.t + 30, fields={},
                                    park_at=[lab.t + 1, lab.t + 2])  # fmt: skip
    assert all(g.created for g in regs)
    assert [(lab.due(x), lab.parked(x)) for x in (a, b, c, d)] == [
        (lab.t + 10, None), (lab.t + 20, None), (None, lab.t + 1), (None, lab.t + 2),
    ]  # fmt: skip
    e = lab.new_id()
    with pytest.raises(ValueError, match="1 times for 2 items"):
        lab.store.register_many([(e, "oe"), (lab.new_id(), "of")], now=NOW, lease_at=[lab.t], fields={})
    assert lab.store.get(e) is None


# --- begin ------------------------------------------------------------------------------------


def test_begin_with_the_current_gen_is_ok_counts_the_run_and_moves_the_lease(lab: Lab) -> None:
    """begin at the job's gen returns 'ok' with the record, increments its crash count and moves its due lease to lease_at."""
    tid = lab.job(lease=10, fields={"status": "queued"})
    b = lab.store.begin(tid, 1, lease_at=lab.t + 70, max_crashes=3)
    assert b.verdict == "ok"
    assert b.record is not None and b.record.gen == 1 and b.record.status == "queued"
    assert b.record.crashes == 1
    assert lab.r.hget(keys.job(tid), "crashes") == "1"
    assert lab.due(tid) == lab.t + 70
    assert b.cooldown_s == 0


@pytest.mark.parametrize("gen", [1, 3], ids=["older", "newer"])
def test_begin_with_a_stale_gen_returns_stale_and_changes_nothing(lab: Lab, gen: int) -> None:
    """A copy whose gen is older or newer than the job's returns 'stale' with no record and leaves the job untouched."""
    tid = lab.job(lease=10)
    assert lab.store.advance(tid, 1, lease_at=lab.t + 20, fields={})  # the job is now at gen 2
    before = lab.snapshot(tid)
    b = lab.store.begin(tid, gen, lease_at=lab.t + 90, max_crashes=3)
    assert (b.verdict, b.crashes, b.record) == ("stale", 0, None)
    assert lab.snapshot(tid) == before


def test_begin_of_a_missing_job_returns_missing(lab: Lab) -> None:
    """begin for an id with no record returns 'missing' with no record and creates nothing."""
    tid = lab.new_id()
    b = lab.store.begin(tid, 1, lease_at=lab.t + 10, max_crashes=3)
    assert (b.verdict, b.crashes, b.record) == ("missing", 0, None)
    assert not lab.r.exists(keys.job(tid)) and lab.due(tid) is None


def test_begin_of_the_terminal_copy_returns_terminal_with_the_record(lab: Lab) -> None:
    """After finish, the copy carrying the terminal gen returns 'terminal' with the record (its outcome) and changes nothing."""
    tid = lab.job(lease=10)
    outcome = {"status": "succeeded", "video_url": "https://example.invalid/v.mp4"}
    assert lab.store.finish(tid, 1, lease_at=lab.t + 40, fields={"outcome": outcome, "status": "succeeded"})
    before = lab.snapshot(tid)
    b = lab.store.begin(tid, 1, lease_at=lab.t + 90, max_crashes=3)
    assert b.verdict == "terminal"
    assert b.record is not None and b.record.outcome == outcome and b.record.state == "handoff"
    assert lab.snapshot(tid) == before


@pytest.mark.parametrize("gen", [0, 2, 3])
def test_begin_of_any_other_copy_of_a_finished_job_is_stale(lab: Lab, gen: int) -> None:
    """Once the job has finished at gen 1, a copy with any gen but the terminal one returns 'stale' with no record."""
    tid = lab.job(lease=10)
    assert lab.store.finish(tid, 1, lease_at=lab.t + 40, fields={})
    before = lab.snapshot(tid)
    b = lab.store.begin(tid, gen, lease_at=lab.t + 90, max_crashes=3)
    assert (b.verdict, b.record) == ("stale", None)
    assert lab.snapshot(tid) == before


def test_begin_more_than_max_crashes_times_at_one_gen_is_a_crashloop(lab: Lab) -> None:
    """After max_crashes runs began at one gen without an advance, the next begin returns 'crashloop' with max_crashes as the crash count and the record."""
    tid = lab.job(lease=10)
    for _ in range(2):
        assert lab.store.begin(tid, 1, lease_at=lab.t + 20, max_crashes=2).verdict == "ok"
    b = lab.store.begin(tid, 1, lease_at=lab.t + 30, max_crashes=2)
    assert (b.verdict, b.crashes) == ("crashloop", 2)
    assert b.record is not None and b.record.gen == 1 and b.record.state == "polling"


def test_advance_resets_the_crash_count(lab: Lab) -> None:
    """Runs that began at an earlier gen do not count towards a crash loop at the next gen."""
    tid = lab.job(lease=10)
    for _ in range(2):
        assert lab.store.begin(tid, 1, lease_at=lab.t + 20, max_crashes=2).verdict == "ok"
    assert lab.store.advance(tid, 1, lease_at=lab.t + 30, fields={})
    for _ in range(2):
        assert lab.store.begin(tid, 2, lease_at=lab.t + 40, max_crashes=2).verdict == "ok"
    assert lab.store.begin(tid, 2, lease_at=lab.t + 40, max_crashes=2).verdict == "crashloop"


def test_begin_records_the_largest_lag_within_the_window_for_fleet_lag_s(lab: Lab) -> None:
    """lag_s of current-gen runs is kept in seedance:lag as the largest seen within the window and read back by fleet_lag_s."""
    lab.r.delete(keys.LAG)
    a, b = lab.job(lease=10), lab.job(lease=10)
    assert lab.store.fleet_lag_s() == 0.0
    lab.store.begin(a, 1, lease_at=lab.t + 20, max_crashes=3, lag_s=2.5)
    lab.store.begin(b, 1, lease_at=lab.t + 20, max_crashes=3, lag_s=0.75)  # smaller: kept 2.5
    assert lab.r.hget(keys.LAG, "lag_s") == "2.500"
    assert lab.store.fleet_lag_s() == 2.5
    lab.store.begin(a, 1, lease_at=lab.t + 20, max_crashes=3, lag_s=4.0)  # larger: replaces it
    assert lab.store.fleet_lag_s() == 4.0
    lab.store.begin(b, 7, lease_at=lab.t + 20, max_crashes=3, lag_s=60.0)  # a stale copy's lag says nothing
    assert lab.store.fleet_lag_s() == 4.0


def test_a_lag_older_than_the_window_is_replaced_even_by_a_smaller_one(lab: Lab) -> None:
    """A lag recorded more than the window ago gives way to the next run's lag, and fleet_lag_s ignores a lag older than max_age_s."""
    tid = lab.job(lease=10)
    old_at = redis_now_us(lab.r) / 1e6 - 3 * LAG_WINDOW_S
    lab.r.hset(keys.LAG, mapping={"lag_s": "99.000", "at": f"{old_at:.3f}"})
    assert lab.store.fleet_lag_s() == 0.0  # older than 2 windows
    lab.store.begin(tid, 1, lease_at=lab.t + 20, max_crashes=3, lag_s=1.25)
    assert lab.store.fleet_lag_s() == 1.25


def test_begin_reads_the_cooldown_left_from_the_fourth_key(lab: Lab) -> None:
    """A cool-down key holding a deadline in the future makes begin return cooldown_s > 0 (about the time left); a past one gives 0."""
    tid = lab.job(lease=10)
    cool_key = f"{keys.RATE_LIMIT_PREFIX}test-{uuid.uuid4().hex[:8]}:cooldown"
    try:
        lab.r.set(cool_key, redis_now_us(lab.r) + 2_000_000)
        b = lab.store.begin(tid, 1, lease_at=lab.t + 20, max_crashes=3, cooldown_key=cool_key)
        assert b.verdict == "ok" and 1.5 < b.cooldown_s <= 2.0
        lab.r.set(cool_key, redis_now_us(lab.r) - 2_000_000)
        b = lab.store.begin(tid, 1, lease_at=lab.t + 20, max_crashes=3, cooldown_key=cool_key)
        assert b.verdict == "ok" and b.cooldown_s == 0
    finally:
        lab.r.delete(cool_key)


# --- advance ----------------------------------------------------------------------------------


def test_advance_lost_race_only_the_first_copy_advances(lab: Lab) -> None:
    """Of two copies at the same gen, only the first advance succeeds; the second returns False and changes nothing."""
    tid = lab.job(lease=10)
    assert lab.store.begin(tid, 1, lease_at=lab.t + 20, max_crashes=3).verdict == "ok"
    assert lab.store.begin(tid, 1, lease_at=lab.t + 20, max_crashes=3).verdict == "ok"
    assert lab.store.advance(
        tid, 1, lease_at=lab.t + 30, fields={"polls": 1, "status": "running"}, park_at=lab.t + 25
    )
    after_first = lab.snapshot(tid)
    assert not lab.store.advance(tid, 1, lease_at=lab.t + 80, fields={"polls": 9, "status": "queued"},
                                 park_at=lab.t + 81)  # fmt: skip
    assert lab.snapshot(tid) == after_first


def test_advance_moves_gen_resets_crashes_writes_fields_and_moves_the_lease(lab: Lab) -> None:
    """advance sets gen + 1 and crashes 0 (not stored), writes the fields (None deleted, JSON fields as JSON) and moves the due lease, without parking when park_at is 0."""
    tid = lab.job(lease=10, fields={"last_error": "Timeout: boom"})
    lab.store.begin(tid, 1, lease_at=lab.t + 20, max_crashes=3)
    meta = {"prompt": "a cat", "tags": ["x", 1]}
    assert lab.store.advance(tid, 1, lease_at=lab.t + 30, fields={
        "polls": 1, "status": "running", "last_error": None, "metadata": meta, "next_due_at": lab.t + 15.5,
    })  # fmt: skip
    raw = lab.r.hgetall(keys.job(tid))
    assert (raw["gen"], raw["polls"], raw["status"]) == ("2", "1", "running")
    assert "crashes" not in raw and "last_error" not in raw  # 0 and None: not stored
    assert raw["metadata"] == '{"prompt":"a cat","tags":["x",1]}'
    rec = lab.store.get(tid)
    assert rec is not None and rec.metadata == meta and rec.next_due_at == lab.t + 15.5
    assert lab.due(tid) == lab.t + 30
    assert lab.parked(tid) is None


def test_advance_with_park_at_parks_the_job(lab: Lab) -> None:
    """advance with park_at > 0 moves the job's one entry from due to the parked index at park_at,
    and next_due_at is that score (read back by get), not a field of the record."""
    tid = lab.job(lease=10)
    assert lab.store.advance(tid, 1, lease_at=lab.t + 300, fields={"next_due_at": lab.t + 200},
                             park_at=lab.t + 200)  # fmt: skip
    assert lab.parked(tid) == lab.t + 200
    assert lab.due(tid) is None
    assert "next_due_at" not in lab.r.hgetall(keys.job(tid))
    rec = lab.store.get(tid)
    assert rec is not None and rec.next_due_at == lab.t + 200


def test_advance_without_park_drops_a_parked_entry_left_from_before(lab: Lab) -> None:
    """A parked job re-driven (by the sweeper) and advanced to a countdown leaves the parked index, so
    the dispatcher cannot publish a second copy of its current generation later."""
    tid = lab.job(lease=10, park=200)
    assert lab.store.advance(tid, 1, lease_at=lab.t + 30, fields={}, park_at=0.0)
    assert lab.parked(tid) is None and lab.due(tid) == lab.t + 30
    claimed = lab.store.claim_due(horizon=lab.t + 1000, limit=1000, grace_s=GRACE)
    assert all(d.task_id != tid for d in claimed)


def test_advance_of_a_finished_job_returns_false(lab: Lab) -> None:
    """A job that is no longer polling cannot be advanced, even at its current gen."""
    tid = lab.job(lease=10)
    assert lab.store.finish(tid, 1, lease_at=lab.t + 20, fields={})
    before = lab.snapshot(tid)
    assert not lab.store.advance(tid, 2, lease_at=lab.t + 30, fields={"status": "running"})
    assert lab.snapshot(tid) == before


# --- finish -----------------------------------------------------------------------------------


def test_finish_enters_the_handoff_and_sets_terminal_gen(lab: Lab) -> None:
    """finish moves the job to state 'handoff' (handoff 'pending'), sets terminal_gen to the message's gen, increments gen, resets crashes, writes the fields and moves the lease."""
    tid = lab.job(lease=10)
    lab.store.begin(tid, 1, lease_at=lab.t + 20, max_crashes=3)
    assert lab.store.finish(
        tid, 1, lease_at=lab.t + 60, fields={"status": "failed", "end_reason": "OutputImageSensitive"}
    )
    rec = lab.store.get(tid)
    assert rec is not None
    assert (rec.state, rec.handoff, rec.gen, rec.terminal_gen, rec.crashes) == ("handoff", "pending", 2, 1, 0)
    assert (rec.status, rec.end_reason) == ("failed", "OutputImageSensitive")
    assert lab.due(tid) == lab.t + 60


def test_finish_twice_at_the_same_gen_loses_the_race(lab: Lab) -> None:
    """A second finish at the same gen returns False and changes nothing."""
    tid = lab.job(lease=10)
    assert lab.store.finish(tid, 1, lease_at=lab.t + 60, fields={"status": "succeeded"})
    before = lab.snapshot(tid)
    assert not lab.store.finish(tid, 1, lease_at=lab.t + 90, fields={"status": "failed"})
    assert lab.snapshot(tid) == before


# --- touch ------------------------------------------------------------------------------------


def test_touch_in_the_expected_state_moves_the_lease_and_writes_fields(lab: Lab) -> None:
    """touch of a job in the expected state extends its due lease and writes the fields."""
    tid = lab.job(lease=10)
    assert lab.store.finish(tid, 1, lease_at=lab.t + 20, fields={})
    assert lab.store.touch(
        tid, expected_state="handoff", lease_at=lab.t + 80, fields={"handoff": "downloading"}
    )
    assert lab.due(tid) == lab.t + 80
    assert lab.r.hget(keys.job(tid), "handoff") == "downloading"


def test_touch_in_another_state_returns_false_and_leaves_the_lease(lab: Lab) -> None:
    """touch of a job not in the expected state (or of a missing job) returns False and leaves lease and fields untouched."""
    tid = lab.job(lease=10)
    before = lab.snapshot(tid)
    assert not lab.store.touch(tid, expected_state="handoff", lease_at=lab.t + 80, fields={"handoff": "x"})
    assert lab.snapshot(tid) == before
    gone = lab.new_id()
    assert not lab.store.touch(gone, expected_state="handoff", lease_at=lab.t + 80, fields={"handoff": "x"})
    assert lab.due(gone) is None and not lab.r.exists(keys.job(gone))


# --- complete ---------------------------------------------------------------------------------


def test_complete_twice_returns_1_then_2(lab: Lab) -> None:
    """The first complete of a handed-off job returns 1 (state 'done', out of the due index into the jobs index, TTL on the record); a second returns 2."""
    tid = lab.job(lease=10)
    assert lab.store.finish(tid, 1, lease_at=lab.t + 20, fields={})
    assert lab.store.complete(tid, ttl_s=3600, fields={"handoff": "done"}) == 1
    assert lab.due(tid) is None and lab.parked(tid) is None
    assert lab.r.zscore(keys.JOBS, tid) == NOW  # listed as finished, by tracked_at
    assert 3590 < lab.r.ttl(keys.job(tid)) <= 3600
    rec = lab.store.get(tid)
    assert rec is not None and rec.state == "done" and rec.handoff == "done"
    assert lab.store.complete(tid, ttl_s=3600, fields={"handoff": "done"}) == 2
    assert lab.store.get(tid) is not None


def test_complete_of_a_polling_job_returns_minus_1_and_changes_nothing(lab: Lab) -> None:
    """complete of a job still polling returns -1 and writes nothing, removes no lease and sets no TTL."""
    tid = lab.job(lease=10)
    before = lab.snapshot(tid)
    assert lab.store.complete(tid, ttl_s=60, fields={"handoff": "done"}) == -1
    assert lab.snapshot(tid) == before
    assert lab.r.ttl(keys.job(tid)) == -1


def test_complete_of_a_missing_job_returns_0(lab: Lab) -> None:
    """complete of an id with no record returns 0 and creates nothing."""
    tid = lab.new_id()
    assert lab.store.complete(tid, ttl_s=60, fields={"handoff": "done"}) == 0
    assert not lab.r.exists(keys.job(tid))


# --- claim_overdue ----------------------------------------------------------------------------


def test_claim_overdue_claims_only_leases_before_the_cutoff_once(lab: Lab) -> None:
    """Only jobs whose lease is before `before` are claimed, each is given the new lease, so a second claim right after claims nothing."""
    a, b, c = lab.job(lease=10), lab.job(lease=20), lab.job(lease=30)
    claimed = lab.store.claim_overdue(before=lab.t + 25, lease_at=lab.t + 100, grace_s=GRACE)
    assert sorted(o.task_id for o in claimed) == sorted([a, b])
    assert (lab.due(a), lab.due(b), lab.due(c)) == (lab.t + 100, lab.t + 100, lab.t + 30)
    assert lab.store.claim_overdue(before=lab.t + 25, lease_at=lab.t + 200, grace_s=GRACE) == []


def test_claim_overdue_returns_typed_rows(lab: Lab) -> None:
    """Claimed rows carry the state, int gen, owner, int handoff_fires and the parsed canvas."""
    canvas = {"task": "seedance.poll", "options": {"link": [{"task": "x"}]}}
    polling = lab.job(owner="chain-p", lease=10, fields={"canvas": canvas})
    handing = lab.job(owner="chain-h", lease=10)
    assert lab.store.finish(handing, 1, lease_at=lab.t + 12, fields={"handoff_fires": 2})
    rows = {
        o.task_id: o for o in lab.store.claim_overdue(before=lab.t + 50, lease_at=lab.t + 100, grace_s=GRACE)
    }
    assert rows[polling] == Overdue(polling, "polling", 1, "chain-p", 0, canvas)
    assert rows[handing] == Overdue(handing, "handoff", 2, "chain-h", 2, None)


def test_claim_overdue_drops_done_and_vanished_records(lab: Lab) -> None:
    """A done record's lease left behind leaves the due index (the record stays listed in jobs), a vanished record's leaves too, and neither is returned."""
    done, gone = lab.job(lease=10), lab.job(lease=10)
    assert lab.store.finish(done, 1, lease_at=lab.t + 10, fields={})
    assert lab.store.complete(done, ttl_s=600, fields={}) == 1
    lab.r.zadd(keys.DUE, {done: lab.t + 10})  # a lease left behind
    lab.r.delete(keys.job(gone))  # its TTL ran out
    assert lab.store.claim_overdue(before=lab.t + 50, lease_at=lab.t + 100, grace_s=GRACE) == []
    assert lab.due(done) is None and lab.due(gone) is None
    assert lab.r.zscore(keys.JOBS, done) == NOW
    assert lab.r.zscore(keys.JOBS, gone) is None


# --- claim_due --------------------------------------------------------------------------------


def test_claim_due_returns_parked_polls_before_the_horizon_once(lab: Lab) -> None:
    """Parked polls due before the horizon are returned once with due_at = their parked score and move from the parked index to a lease in due; later ones stay."""
    canvas = {"task": "seedance.poll", "args": [1]}
    a = lab.job(owner="oa", lease=100, park=5, fields={"canvas": canvas})
    b = lab.job(owner="ob", lease=100, park=8.5)
    later = lab.job(lease=100, park=50)
    due = {d.task_id: d for d in lab.store.claim_due(horizon=lab.t + 10, limit=100, grace_s=GRACE)}
    assert set(due) == {a, b}
    assert (due[a].gen, due[a].owner, due[a].due_at, due[a].canvas) == (1, "oa", lab.t + 5, canvas)
    assert (due[b].gen, due[b].owner, due[b].due_at, due[b].canvas) == (1, "ob", lab.t + 8.5, None)
    assert lab.parked(a) is None and lab.parked(b) is None and lab.parked(later) == lab.t + 50
    # Claimed, each holds a lease of its due time + the grace: a claimer that dies is re-driven.
    assert (lab.due(a), lab.due(b), lab.due(later)) == (lab.t + 5 + GRACE, lab.t + 8.5 + GRACE, None)
    assert lab.store.claim_due(horizon=lab.t + 10, limit=100, grace_s=GRACE) == []


def test_claim_due_drops_a_parked_job_that_is_no_longer_polling(lab: Lab) -> None:
    """A parked id whose job has finished (or vanished) is taken out of the parked index and not returned."""
    finished, gone = lab.job(lease=100, park=5), lab.job(lease=100, park=6)
    assert lab.store.finish(finished, 1, lease_at=lab.t + 20, fields={})
    lab.r.delete(keys.job(gone))
    assert lab.store.claim_due(horizon=lab.t + 10, limit=100, grace_s=GRACE) == []
    assert lab.parked(finished) is None and lab.parked(gone) is None
    assert lab.due(gone) is None  # no lease for a record that is gone


def test_claim_due_honours_the_limit(lab: Lab) -> None:
    """claim_due returns at most `limit` parked polls, earliest first, leaving the rest for the next claim."""
    ids = [lab.job(lease=100, park=p) for p in (3, 1, 2)]
    first = lab.store.claim_due(horizon=lab.t + 10, limit=2, grace_s=GRACE)
    assert [d.task_id for d in first] == [ids[1], ids[2]]
    assert lab.parked(ids[0]) == lab.t + 3
    assert [d.task_id for d in lab.store.claim_due(horizon=lab.t + 10, limit=2, grace_s=GRACE)] == [ids[0]]


# --- all() and the record ---------------------------------------------------------------------


def test_all_lists_jobs_in_flight_and_finished_and_drops_vanished_ids_from_the_jobs_index(lab: Lab) -> None:
    """all() lists the jobs in flight (leased or parked) and the finished records that exist, each
    once, parked ones with their parked time as next_due_at; the id of a finished record that
    vanished leaves the jobs index."""
    leased, parked, done, gone = lab.job(), lab.job(park=50), lab.job(lease=10), lab.job(lease=10)
    for tid in (done, gone):
        assert lab.store.finish(tid, 1, lease_at=lab.t + 20, fields={})
        assert lab.store.complete(tid, ttl_s=600, fields={}) == 1
    lab.r.delete(keys.job(gone))
    listed = {rec.task_id: rec for rec in lab.store.all()}
    assert {leased, parked, done} <= set(listed) and gone not in listed
    assert listed[parked].next_due_at == lab.t + 50
    assert lab.r.zscore(keys.JOBS, gone) is None and lab.r.zscore(keys.JOBS, done) == NOW


def test_an_expired_done_record_leaves_the_jobs_index(lab: Lab) -> None:
    """A completed record whose TTL runs out is no longer listed by all() and its id leaves the jobs index."""
    tid = lab.job(lease=10)
    assert lab.store.finish(tid, 1, lease_at=lab.t + 20, fields={})
    assert lab.store.complete(tid, ttl_s=1, fields={}) == 1
    lab.r.pexpire(keys.job(tid), 1)
    deadline = time.monotonic() + 2
    while lab.r.exists(keys.job(tid)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tid not in {rec.task_id for rec in lab.store.all()}
    assert lab.r.zscore(keys.JOBS, tid) is None


ROUND_TRIP: dict[str, Any] = {
    "created_at": 1767225600.123,
    "not_before": 1767225612.5,
    "terminal_at": None,
    "expires_after": 172800,
    "error_streak": 3,
    "terminal_gen": None,
    "status": "running",
    "outcome": None,
    "metadata": {
        "prompt": "un chat \u00e9l\u00e9gant \u2014 \U0001f431",
        "n": 1.5,
        "nested": {"a": [1, None]},
    },
    "on_succeeded": [{"task": "a.b", "args": [1, "two"]}],
    "on_failed": [],
    "canvas": {"task": "seedance.poll", "kwargs": {"x": 'y"z\\'}},
}


def test_record_fields_round_trip_through_the_scripts(lab: Lab) -> None:
    """Times (to the millisecond), ints, None and JSON fields written by register and advance (encode_fields -> script) read back unchanged by get()."""
    tid = lab.job(lease=10, fields=ROUND_TRIP)
    later = {"updated_at": 1767225699.0, "polls": 7, "outcome": {"status": "succeeded", "seed": 42}}
    assert lab.store.advance(tid, 1, lease_at=lab.t + 20, fields=later)
    rec = lab.store.get(tid)
    assert rec is not None
    for name, value in {**ROUND_TRIP, **later}.items():
        assert getattr(rec, name) == value, name
    assert isinstance(rec.expires_after, int) and isinstance(rec.created_at, float)
    assert lab.r.hget(keys.job(tid), "terminal_at") is None  # None: not stored


def test_a_none_text_field_reads_back_as_none(lab: Lab) -> None:
    """A text field written as None (poll.py clears last_error that way) reads back from get() as None, as JobRecord declares, not as ''."""
    tid = lab.job(lease=10, fields={"last_error": "Timeout: boom"})
    assert lab.store.advance(tid, 1, lease_at=lab.t + 20, fields={"last_error": None, "end_reason": None})
    rec = lab.store.get(tid)
    assert rec is not None
    assert (rec.last_error, rec.end_reason) == (None, None)


def test_encode_fields_gives_scripts_a_json_object_of_strings() -> None:
    """encode_fields turns None into '', bools into '0'/'1', numbers into their text and JSON fields into compact JSON."""
    assert encode_fields({"a": None, "b": True, "c": 1.5, "d": 2, "metadata": {"k": [1]}}) == (
        '{"a":"","b":"1","c":"1.5","d":"2","metadata":"{\\"k\\":[1]}"}'
    )
    rec = JobRecord.from_hash("t", {"gen": "2", "metadata": "", "canvas": "", "tracked_at": ""})
    assert (rec.gen, rec.metadata, rec.canvas, rec.tracked_at) == (2, {}, None, None)
