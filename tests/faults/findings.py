"""What one check of a fault run found (checks.py, checks_polling.py): failure lines, details of
the first failing jobs, report fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.faults.rundata import RunData

MAX_DETAILS = 40  # failure_details kept per report


@dataclass
class Findings:
    """What one check found: failure lines, details of the first failing jobs, and report fields."""

    run: RunData = field(repr=False)
    failures: list[str] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)

    def fail(self, what: str) -> None:
        self.failures.append(what)

    def bad(self, job_id: str | None, what: str, **extra: Any) -> None:
        """A failure of one job, with its record, simulator state and log lines as a detail."""
        self.failures.append(f"{job_id or '-'}: {what}")
        if job_id and len(self.details) < MAX_DETAILS:
            rec = self.run.records.get(job_id)
            self.details.append(
                {
                    "job": job_id,
                    "what": what,
                    "record": None if rec is None else rec.public() | {"handoff_fires": rec.handoff_fires},
                    "sim": self.run.sim_states.get(job_id),
                    "log": self.run.log_excerpt(job_id),
                    **extra,
                }
            )
