"""Gateways' status words: ``processing`` reads as running and ``pending`` as queued, while the
snapshot keeps the word the API said."""

from __future__ import annotations

import pytest

from seedance_worker.engine.decide import Reschedule, decide
from seedance_worker.engine.schedule import Schedule
from seedance_worker.engine.store import JobRecord
from seedance_worker.models import Status, TaskList, TaskSnapshot, bounded_snapshot

TID = "cgt-20260805143012-k7q2m"
S = Schedule(first_delay_s=1, min_interval_s=2, max_interval_s=30, queued_interval_s=10,
             running_interval_s=4, backoff_factor=1.5)  # fmt: skip


class Top:
    def uniform(self, a: float, b: float) -> float:
        return max(a, b)


@pytest.mark.parametrize(
    ("word", "state"),
    [("processing", Status.RUNNING), ("pending", Status.QUEUED), ("Processing", Status.RUNNING),
     (" PENDING ", Status.QUEUED)],
)  # fmt: skip
def test_a_gateway_word_reads_as_its_state_and_is_kept(word: str, state: Status) -> None:
    """status is the state (not terminal); reported_status is the word as sent, stripped."""
    snap = TaskSnapshot.model_validate({"id": TID, "status": word})
    assert snap.status is state and snap.status_text == state.value and not snap.is_terminal
    assert snap.reported_status == word.strip()


def test_ark_words_leave_no_reported_status() -> None:
    """Ark's own words are the state itself: nothing extra in the snapshot or its dump."""
    snap = TaskSnapshot.model_validate({"id": TID, "status": "running"})
    assert snap.reported_status is None
    assert "reported_status" not in snap.model_dump(mode="json", exclude_none=True)


def test_the_word_survives_a_dump_and_a_list_answer() -> None:
    """A dumped snapshot read again keeps both; items of a list answer are read the same way."""
    snap = TaskSnapshot.model_validate({"id": TID, "status": "processing"})
    data = bounded_snapshot(snap)
    assert data["status"] == "running" and data["reported_status"] == "processing"
    again = TaskSnapshot.model_validate(data)
    assert again.status is Status.RUNNING and again.reported_status == "processing"
    listing = TaskList.model_validate({"items": [{"id": TID, "status": "pending"}], "total": 1})
    assert listing.items[0].status is Status.QUEUED and listing.items[0].reported_status == "pending"


def test_the_schedule_polls_processing_as_running_and_pending_as_queued() -> None:
    """decide() records the state, not the word, and counts polls in it as for Ark's words."""
    rec = JobRecord(task_id=TID, tracked_at=1_000.0, status="running", status_polls=2)
    proc = decide(rec, TaskSnapshot.model_validate({"id": TID, "status": "processing"}), now=1100,
                  schedule=S, rng=Top())  # fmt: skip
    assert isinstance(proc, Reschedule) and proc.fields["status"] == "running"
    assert proc.fields["status_polls"] == 3 and proc.countdown_s == 9  # 4 x 1.5 x 1.5, as for running
    pend = decide(rec, TaskSnapshot.model_validate({"id": TID, "status": "pending"}), now=1100,
                  schedule=S, rng=Top())  # fmt: skip
    assert isinstance(pend, Reschedule) and pend.fields["status"] == "queued" and pend.countdown_s == 10
