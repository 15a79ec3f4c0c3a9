"""What a fault run gathered, as plain data: the jobs, the chaos events, and afterwards everything
the checks look at (the simulator's request log, the job records, the ledger, the deliveries, the
files, the logs, a dump of Redis).

``RunData`` is what ``checks.py`` judges; ``collect.py`` fills it from a finished run, and the unit
tests build one by hand.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from seedance_worker.testing.simulator import RequestRecord
from seedance_worker.testing.webhooks import Delivery


@dataclass
class Job:
    task_id: str
    fate: str  # the status the job must end with
    via: str  # submit | track | unknown
    tracked_at: float = 0.0


@dataclass
class KillEvent:
    ts: float
    worker: str
    held: list[str]  # remote task ids whose poll was active/reserved/scheduled in the killed worker
    inspected: bool


@dataclass
class Timeline:
    """The run's clock origin and its event lines (``"  12.34s what happened"``)."""

    t0: float = 0.0
    events: list[str] = field(default_factory=list)

    def note(self, text: str, ts: float | None = None) -> None:
        self.events.append(f"{(time.time() if ts is None else ts) - self.t0:6.2f}s {text}")


def p99(values: list[float]) -> float | None:
    return percentile(values, 99)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))  # nearest rank
    return s[k]


def listed_ids(rec: RequestRecord) -> list[str]:
    """The task ids a list call names, as the simulator reads them (repeated or comma-separated)."""
    ids = (i for v in rec.query.get("filter.task_ids", []) for i in v.split(",") if i)
    return list(dict.fromkeys(ids))


def what(rec: RequestRecord) -> str:
    """``GET`` or ``list call``: how a failure line names a request."""
    return "list call" if rec.kind == "list" else rec.method


@dataclass
class RunData:
    """Everything one run gathered, for the checks (no I/O from here on)."""

    # the run itself
    seed: int
    jobs: dict[str, Job]
    timeline: Timeline
    kills: list[KillEvent] = field(default_factory=list)
    restarts: list[tuple[float, float]] = field(default_factory=list)  # (start, downtime_s)
    bursts: list[tuple[float, float, int]] = field(default_factory=list)  # (ts, duration_s, retry_after_s)
    crashes: list[dict[str, Any]] = field(default_factory=list)  # workers that exited on their own
    sweeper: str = "beat"
    status_source: str = "batch"  # SEEDANCE_STATUS_SOURCE of the run
    full_disk: dict[str, Any] | None = None  # FullDisk.report() when the disk was filled for a window
    settle_timeout_s: float = 120.0
    settled_at: float | None = None
    drained: bool = False
    residual: dict[str, int] = field(default_factory=dict)
    residual_detail: dict[str, Any] | None = None
    wall_s: float = 0.0
    countdown_cap_s: float = 300.0  # SEEDANCE_POLL_COUNTDOWN_CAP_S of the run
    api_key: str = ""
    webhook_secret: str = ""
    # what the product left behind, per job id (JobRecord or None) and in the ledger
    records: dict[str, Any] = field(default_factory=dict)
    ledger_ids: list[str] = field(default_factory=list)  # the raw ledger list, in charge order
    ledger_entries: list[dict[str, Any]] = field(default_factory=list)
    ledger_totals: dict[str, Any] = field(default_factory=dict)
    in_doubt_counted: dict[str, int] = field(default_factory=dict)  # webhook-id -> delivery's in_doubt
    # what the simulator saw and holds
    requests: list[RequestRecord] = field(default_factory=list)
    retry_after: dict[str, float] = field(default_factory=dict)  # request id -> Retry-After answered
    sim_states: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # status/terminal_at/history
    served_sha256: dict[str, str] = field(default_factory=dict)  # task id -> sha256 the simulator serves
    # what the receiver, the download dir, the logs and Redis hold
    deliveries: list[Delivery] = field(default_factory=list)
    files: set[str] = field(default_factory=set)  # names in the download dir
    file_sha256: dict[str, str] = field(default_factory=dict)  # task id -> sha256 of <id>.mp4
    logs: dict[str, str] = field(default_factory=dict)  # log file name -> text
    redis_values: list[tuple[str, list[bytes]]] = field(default_factory=list)  # key -> its values

    @property
    def t0(self) -> float:
        return self.timeline.t0

    # The views below are computed on each call (the data may be edited, as the unit tests do): a
    # check calls each once.

    def gets(self) -> dict[str, list[RequestRecord]]:
        """Every task GET, by task id, in the simulator's log order (answer order)."""
        out: dict[str, list[RequestRecord]] = defaultdict(list)
        for rec in self.requests:
            if rec.kind == "get" and rec.task_id:
                out[rec.task_id].append(rec)
        return out

    def reads(self) -> dict[str, list[RequestRecord]]:
        """Every request naming a task, by task id, in log order: its GETs, and each list call
        whose ``filter.task_ids`` names it (the list record itself, shared by all it names)."""
        out: dict[str, list[RequestRecord]] = defaultdict(list)
        for rec in self.requests:
            if rec.kind == "get" and rec.task_id:
                out[rec.task_id].append(rec)
            elif rec.kind == "list":
                for tid in listed_ids(rec):
                    out[tid].append(rec)
        return out

    def files_403(self) -> dict[str, list[RequestRecord]]:
        """Every video download answered 403 (URL expired), by task id."""
        out: dict[str, list[RequestRecord]] = defaultdict(list)
        for rec in self.requests:
            if rec.kind == "file" and rec.task_id and rec.status == 403 and rec.path.endswith(".mp4"):
                out[rec.task_id].append(rec)
        return out

    @property
    def succeeded(self) -> set[str]:
        return {tid for tid, j in self.jobs.items() if j.fate == "succeeded"}

    @property
    def ok_by_wid(self) -> Counter[str]:
        """2xx deliveries per webhook-id."""
        return Counter(d.webhook_id for d in self.deliveries if d.ok)

    def retry_after_of(self, rec: RequestRecord) -> float:
        ra = self.retry_after.get(rec.request_id)
        if ra is None:
            raise AssertionError(f"429 {rec.request_id} without a recorded Retry-After")
        return ra

    def log_excerpt(self, task_id: str, n: int = 25) -> list[str]:
        lines = [
            f"{name}: {line}"
            for name, text in self.logs.items()
            for line in text.splitlines()
            if task_id in line
        ]
        return lines[-n:]
