"""What the job store's claim and hint scripts answer, and what a batched round hands it: plain rows.

Kept apart from store.py (the scripts' callers) so that file stays small; store.py is where they
are made and the only place that reads Redis for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from seedance_worker.engine.record import JobRecord


@dataclass(frozen=True)
class Registration:
    """What ``register`` found: did this call create the job, and whose chain owns it."""

    created: bool
    owner: str
    state: str


@dataclass(frozen=True)
class Overdue:
    """A job the sweeper claimed: its lease ran out while polling or handing off."""

    task_id: str
    state: str
    gen: int
    owner: str
    handoff_fires: int
    canvas: dict[str, Any] | None
    trace: str | None = None


@dataclass(frozen=True)
class Hint:
    """What ``hint`` decided for a callback: the verdict and, when ``accepted``, the early poll."""

    verdict: str  # ignored | duplicate | unchanged | pending | scheduled | accepted
    gen: int = 0
    owner: str = ""
    countdown_s: float = 0.0
    canvas: dict[str, Any] | None = None
    trace: str | None = None


@dataclass(frozen=True)
class Advance:
    """One job's advance in a batched round (``advance_many``): as ``advance`` takes it."""

    task_id: str
    gen: int
    lease_at: float
    fields: dict[str, Any]
    park_at: float = 0.0


@dataclass(frozen=True)
class Due:
    """A parked poll the dispatcher claimed: publish it for ``due_at`` (a batched round reads
    ``record``, which the claim read in the same script)."""

    record: JobRecord
    due_at: float

    @property
    def task_id(self) -> str:
        return self.record.task_id

    @property
    def gen(self) -> int:
        return self.record.gen

    @property
    def owner(self) -> str:
        return self.record.owner

    @property
    def canvas(self) -> dict[str, Any] | None:
        return self.record.canvas

    @property
    def trace(self) -> str | None:
        return self.record.trace
