"""The job record as stored: what a ``seedance:job:{task_id}`` hash holds, and how fields are written.

A record keeps only what differs from its defaults, so a job in flight costs a few hundred bytes of
Redis:

- a field equal to its default (``polls`` 0, ``error_streak`` 0, ``raw`` false, no metadata, ...)
  or None is not stored: ``encode_fields`` sends it as ``''`` and every script deletes a field it
  is given as ``''``; ``from_hash`` reads a missing field as its default (and still reads ``''``,
  which records written before this layout hold, as None);
- the task id is the key, not a field (older records still carry a ``task_id`` field: ignored,
  and dropped by their next advance);
- times are Unix seconds kept to the millisecond, written without trailing zeros (a time on the
  round grid is a whole number, which Redis stores as an integer); ``updated_at`` (the last read,
  only the early-poll rule needs it) to the second, rounded up;
- ``next_due_at`` is not stored while the job is parked: its score in ``seedance:parked`` is that
  time (``JobStore.get`` and ``all`` fill it in).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

JSON_FIELDS = ("outcome", "metadata", "on_succeeded", "on_failed", "canvas", "submitted")
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
# Fields not stored at these values (read back as the dataclass default). gen, owner and state are
# always stored: the scripts fence on them.
SPARSE_DEFAULTS: dict[str, Any] = {
    "polls": 0,
    "crashes": 0,
    "error_streak": 0,
    "status_polls": 0,
    "handoff_fires": 0,
    "raw": False,
    "metadata": {},
}
WHOLE_SECOND_FIELDS = ("updated_at",)


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
    updated_at: float | None = None  # the last read, to the second (rounded up)
    handoff: str | None = None
    handoff_at: float | None = None
    handoff_fires: int = 0
    last_error: str | None = None
    end_reason: str | None = None
    created_at: float | None = None  # of the remote task, for the deadline
    expires_after: int | None = None  # its execution_expires_after (None: the API's default)
    outcome: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    on_succeeded: list[Any] | None = None  # None: SEEDANCE_ON_SUCCEEDED at hand-off time
    on_failed: list[Any] | None = None
    canvas: dict[str, Any] | None = None  # the caller's poll signature (chain, links) when not track()
    hint_seen: str | None = None  # the last callback taken for this job (intake.py), for de-duplication
    hint_gen: int | None = None  # the generation an early poll was last published for
    callback_nonce: str | None = None  # of the per-task callback URL submit() gave Ark (intake/urls.py)
    raw: bool = False  # the poll returns the terminal Outcome; the downstream chain runs beside
    account: str | None = None  # the account's name (SEEDANCE_ACCOUNTS), never its key; None: default
    service_tier: str | None = None  # "flex" when the task is (a list call must ask for flex); else None
    submitted: dict[str, Any] | None = None  # price facts and estimate of submit() (Outcome.submitted)
    trace: str | None = None  # the W3C traceparent of the job's root span (tracing.py); only when traced

    @classmethod
    def from_hash(cls, task_id: str, raw: dict[str, str]) -> JobRecord:
        known = cls.__dataclass_fields__  # a dict: membership without a set built per record
        values: dict[str, Any] = {}
        for k, v in raw.items():
            if k not in known or k == "task_id" or v == "":
                continue  # '' (older records' None) and missing fields both read as the default
            if k in JSON_FIELDS:
                values[k] = json.loads(v)
            elif k in FLOAT_FIELDS:
                values[k] = float(v)
            elif k in INT_FIELDS:
                values[k] = int(float(v))
            elif k == "raw":
                values[k] = v == "1"
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
            "account": self.account,
            "submitted": self.submitted,
        }


def fmt_time(t: float) -> str:
    """A Unix time to the millisecond, without trailing zeros ('1796304260' on the round grid)."""
    return f"{t:.3f}".rstrip("0").rstrip(".")


_UNSET = object()


def encode_value(k: str, v: Any) -> str:
    """One field as the script writes it; '' deletes it (None, or the field's default)."""
    if v is None or SPARSE_DEFAULTS.get(k, _UNSET) == v:
        return ""
    if k in JSON_FIELDS:
        return json.dumps(v, separators=(",", ":"))
    if isinstance(v, bool):
        return str(int(v))
    if k in WHOLE_SECOND_FIELDS:
        return str(math.ceil(float(v)))
    if k in FLOAT_FIELDS:
        return fmt_time(float(v))
    return str(v)


def encode_fields(fields: dict[str, Any]) -> str:
    """The fields a script writes, as the JSON object of strings it takes in ARGV[1]."""
    return json.dumps({k: encode_value(k, v) for k, v in fields.items()}, separators=(",", ":"))


@dataclass(frozen=True)
class Begun:
    """What ``begin`` found: the verdict, the crash count, the record and the 429 cool-down."""

    verdict: str  # ok | stale | missing | terminal | crashloop
    crashes: int
    record: JobRecord | None
    cooldown_s: float
