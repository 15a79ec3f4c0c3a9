"""The job store's layout: one index entry per job, a record that keeps only what differs from its
defaults, and records and indexes of the layout before it read and converted as they move.

Against a real Redis, with the bands of lease times of tests/unit/test_store.py (its ``Lab``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from seedance_worker import keys
from seedance_worker.engine.store import ADVANCE_CHUNK
from seedance_worker.engine.store_rows import Advance
from tests.unit.test_store import GRACE, NOW, Lab


@pytest.fixture
def lab(redis_url: str) -> Iterator[Lab]:
    lab = Lab(redis_url)
    yield lab
    lab.cleanup()


def entries(lab: Lab, tid: str) -> dict[str, float]:
    """The index entries of one job: {index name: score}."""
    found = {name: lab.r.zscore(key, tid) for name, key in
             (("due", keys.DUE), ("parked", keys.PARKED), ("jobs", keys.JOBS))}  # fmt: skip
    return {name: score for name, score in found.items() if score is not None}


def test_a_job_has_one_index_entry_at_every_step_of_its_life(lab: Lab) -> None:
    """Registered parked, claimed by a round, parked again by its advance, begun by an early poll,
    advanced to a countdown, finished and completed: after each step the job sits in exactly one
    of due, parked and jobs, with the score that step gives it."""
    tid = lab.job(lease=40, park=5)
    assert entries(lab, tid) == {"parked": lab.t + 5}
    (claimed,) = [
        d for d in lab.store.claim_due(horizon=lab.t + 6, limit=10, grace_s=GRACE) if d.task_id == tid
    ]
    assert entries(lab, tid) == {"due": lab.t + 5 + GRACE}
    assert lab.store.advance_many([Advance(tid, claimed.gen, lab.t + 99, {"polls": 1}, park_at=lab.t + 7)])
    assert entries(lab, tid) == {"parked": lab.t + 7}
    assert lab.store.begin(tid, 2, lease_at=lab.t + 30, max_crashes=3).verdict == "ok"
    assert entries(lab, tid) == {"due": lab.t + 30}
    assert lab.store.advance(tid, 2, lease_at=lab.t + 45, fields={"polls": 2})
    assert entries(lab, tid) == {"due": lab.t + 45}
    assert lab.store.advance(tid, 3, lease_at=lab.t + 99, fields={"polls": 3}, park_at=lab.t + 50)
    assert lab.store.finish(tid, 4, lease_at=lab.t + 60, fields={"status": "succeeded"})  # (cancel)
    assert entries(lab, tid) == {"due": lab.t + 60}
    assert lab.store.complete(tid, ttl_s=600, fields={"handoff": "done"}) == 1
    assert entries(lab, tid) == {"jobs": NOW}


def test_a_parked_job_no_one_claimed_is_overdue_a_grace_after_its_due_time(lab: Lab) -> None:
    """The sweeper's claim takes a parked job whose due time is more than the grace ago (every
    dispatcher is gone), not one within the grace, and gives it a lease in due instead."""
    late, recent = lab.job(park=5), lab.job(park=12)
    claimed = lab.store.claim_overdue(before=lab.t + 5 + GRACE + 1, lease_at=lab.t + 500, grace_s=GRACE)
    assert [o.task_id for o in claimed if o.task_id in (late, recent)] == [late]
    assert entries(lab, late) == {"due": lab.t + 500}
    assert entries(lab, recent) == {"parked": lab.t + 12}


def test_counts_take_parked_jobs_in_flight_and_past_their_grace_as_expired(lab: Lab) -> None:
    """counts() gives every job in flight (leased or parked) and, of them, those whose lease ran out
    (a parked one: its due time + the grace)."""
    base_in, base_out = lab.store.counts(lab.t + 20, grace_s=GRACE)  # other tests' jobs, if any
    lab.job(lease=3), lab.job(lease=900), lab.job(park=2), lab.job(park=800)
    inflight, expired = lab.store.counts(lab.t + 20, grace_s=GRACE)
    assert inflight - base_in == 4
    assert expired - base_out == 2


def test_the_record_of_a_job_in_flight_keeps_only_what_differs_from_the_defaults(lab: Lab) -> None:
    """After registration and a batched read that left it parked, the hash holds owner, gen, state,
    the times and the read's status, and nothing at its default: no task_id (the key names it),
    no zero counts, no empty error, no next_due_at (the parked score), no API-default expiry."""
    tid = lab.job(park=5)
    assert set(lab.r.hgetall(keys.job(tid))) == {"owner", "gen", "state", "tracked_at"}
    fields = {"status": "running", "status_polls": 1, "error_streak": 0, "last_error": None,
              "not_before": None, "polls": 1, "next_due_at": lab.t + 7, "updated_at": lab.t + 5.2,
              "created_at": 1767225600}  # fmt: skip
    assert lab.store.advance(tid, 1, lease_at=lab.t + 99, fields=fields, park_at=lab.t + 7)
    raw = lab.r.hgetall(keys.job(tid))
    assert raw == {"owner": "owner-1", "gen": "2", "state": "polling", "tracked_at": "4000000000",
                   "status": "running", "status_polls": "1", "polls": "1",
                   "updated_at": str(int(lab.t) + 6), "created_at": "1767225600"}  # fmt: skip
    rec = lab.store.get(tid)
    assert rec is not None
    assert (rec.error_streak, rec.crashes, rec.last_error, rec.next_due_at) == (0, 0, None, lab.t + 7)


def old_layout_job(lab: Lab, *, parked: bool) -> str:
    """A job as the layout before this one wrote it: zero-valued and empty fields, a task_id field,
    and an entry in jobs and due (and parked) at once."""
    tid = lab.new_id()
    lab.r.hset(keys.job(tid), mapping={
        "owner": "old-owner", "gen": "5", "state": "polling", "polls": "4", "crashes": "0",
        "error_streak": "0", "status_polls": "4", "tracked_at": "1796194280.434471", "task_id": tid,
        "expires_after": "172800", "last_error": "", "created_at": "1796194276",
        "updated_at": "1796194278.827962", "status": "running", "next_due_at": "1796194283.8272483",
    })  # fmt: skip
    lab.r.zadd(keys.JOBS, {tid: 1796194280.434471})
    lab.r.zadd(keys.DUE, {tid: lab.t + 20})
    if parked:
        lab.r.zadd(keys.PARKED, {tid: lab.t + 5})
    return tid


def test_a_record_of_the_layout_before_reads_as_it_did_and_sheds_its_old_fields_on_advance(lab: Lab) -> None:
    """get() reads an old record's values ('' as None, zeros as zeros); its next advance moves it to
    the new layout: no task_id, crashes or empty field left, one index entry in flight."""
    tid = old_layout_job(lab, parked=True)
    rec = lab.store.get(tid)
    assert rec is not None
    assert (rec.gen, rec.polls, rec.status_polls, rec.last_error, rec.expires_after) == (
        5,
        4,
        4,
        None,
        172800,
    )
    (claimed,) = [
        d for d in lab.store.claim_due(horizon=lab.t + 6, limit=10, grace_s=GRACE) if d.task_id == tid
    ]
    assert (claimed.gen, claimed.owner) == (5, "old-owner")
    fields = {"polls": 5, "status_polls": 5, "error_streak": 0, "last_error": None, "next_due_at": lab.t + 8}
    assert lab.store.advance(tid, 5, lease_at=lab.t + 99, fields=fields, park_at=lab.t + 8)
    raw = lab.r.hgetall(keys.job(tid))
    assert not {"task_id", "crashes", "error_streak", "last_error", "next_due_at"} & set(raw)
    assert entries(lab, tid) == {"parked": lab.t + 8, "jobs": 1796194280.434471}
    assert lab.store.trim_jobs_index(count=100_000) >= 1  # the rolling trim drops in-flight ids
    assert entries(lab, tid) == {"parked": lab.t + 8}
    assert [r.task_id for r in lab.store.all()].count(tid) == 1


def test_an_old_job_in_due_and_parked_is_re_driven_once_and_keeps_one_entry(lab: Lab) -> None:
    """The sweeper's claim of an old parked job's expired lease drops its parked entry too, so the
    dispatcher cannot publish a second copy of the same generation later."""
    tid = old_layout_job(lab, parked=True)
    claimed = lab.store.claim_overdue(before=lab.t + 25, lease_at=lab.t + 500, grace_s=GRACE)
    assert [o.task_id for o in claimed].count(tid) == 1
    assert entries(lab, tid) == {"due": lab.t + 500, "jobs": 1796194280.434471}
    assert all(d.task_id != tid for d in lab.store.claim_due(horizon=lab.t + 1000, limit=1000, grace_s=GRACE))


def test_a_callback_for_a_parked_job_due_soon_waits_for_its_parked_read(lab: Lab) -> None:
    """The hint rule reads a parked job's next read from its parked score: read 2 s ago, with 5 s
    between reads, an early poll could come in 3 s; parked for 1 s from now, the callback is
    'scheduled'; parked for later, an early poll is 'accepted'."""
    soon, later = lab.new_id(), lab.new_id()
    for tid, park in ((soon, 1), (later, 900)):
        lab.store.register(
            tid,
            "o",
            now=lab.t - 100,
            lease_at=0,
            fields={"status": "queued", "updated_at": lab.t - 2},
            park_at=lab.t + park,
        )
    assert (
        lab.store.hint(soon, status="running", seen="running:1", now=lab.t, min_interval_s=5).verdict
        == "scheduled"
    )
    assert (
        lab.store.hint(later, status="running", seen="running:1", now=lab.t, min_interval_s=5).verdict
        == "accepted"
    )


def test_advance_many_answers_for_each_job_in_order_across_script_calls(lab: Lab) -> None:
    """A round's advances go in script calls of ADVANCE_CHUNK jobs; each job gets its own answer, in
    order, a stale one False and left as it was, the others at their next generation and entry."""
    ids = [lab.job(lease=10) for _ in range(ADVANCE_CHUNK + 50)]
    stale = ids[ADVANCE_CHUNK + 3]
    items = [
        Advance(tid, 7 if tid == stale else 1, lab.t + 30, {"polls": 1}, park_at=lab.t + 20) for tid in ids
    ]
    before = lab.snapshot(stale)
    assert lab.store.advance_many(items) == [tid != stale for tid in ids]
    assert lab.snapshot(stale) == before
    for tid in (ids[0], ids[ADVANCE_CHUNK], ids[-1]):
        rec = lab.store.get(tid)
        assert rec is not None and (rec.gen, rec.polls) == (2, 1)
        assert entries(lab, tid) == {"parked": lab.t + 20}


def test_a_claim_brings_each_record_as_it_stands(lab: Lab) -> None:
    """claim_due hands a batched round each job's whole record, read in the same script."""
    tid = lab.job(park=3, fields={"status": "running", "status_polls": 4, "account": "volc"})
    (due,) = [d for d in lab.store.claim_due(horizon=lab.t + 5, limit=10, grace_s=GRACE) if d.task_id == tid]
    assert (due.record.status, due.record.status_polls, due.record.account, due.record.gen) == (
        "running",
        4,
        "volc",
        1,
    )
