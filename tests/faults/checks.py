"""The judging of a fault run: one function per invariant, each taking the ``RunData`` the run gathered
and returning its ``Findings`` (failures, per-job details, report fields).

``judge()`` runs them in order and assembles the report: a JSON-able dict whose ``failures`` list is
empty only when every check held. Nothing here does I/O, so each check can be fed hand-built data.
The polling checks (Retry-After, no poll after the end, resumption) are in checks_polling.py.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from seedance_worker.steps.notify import webhook_id
from tests.faults.checks_polling import (
    check_cooldown_overlaps,
    check_no_poll_after_end,
    check_resume_budget,
    check_retry_after,
    resume_times,
)
from tests.faults.findings import MAX_DETAILS, Findings
from tests.faults.rundata import RunData

__all__ = [
    "CHECKS", "MAX_DETAILS", "Findings", "check_cooldown_overlaps", "check_no_poll_after_end",
    "check_resume_budget", "check_retry_after", "judge", "resume_times",
]  # fmt: skip


def _ok(d: Any) -> bool:
    return d.ok


# --------------------------------------------------------------------------------------------------
# Outcomes
# --------------------------------------------------------------------------------------------------


def check_outcomes(run: RunData) -> Findings:
    """Nothing lost: every job is done with the Outcome the simulator says, handed off, notified, and
    (when succeeded) with its video and its charge."""
    f = Findings(run)
    lost: list[str] = []
    outcomes: Counter[str] = Counter()
    for tid, job in run.jobs.items():
        rec = run.records.get(tid)
        sim = run.sim_states.get(tid)
        expected = job.fate if sim is None else sim["status"]
        if job.fate != expected:
            f.bad(tid, f"harness: planned fate {job.fate} but the simulator says {expected}")
        if rec is None or rec.state != "done":
            lost.append(tid)
            f.bad(tid, f"lost: record state {None if rec is None else rec.state}, expected done/{expected}")
            continue
        outcomes[str(rec.status)] += 1
        _judge_outcome(f, tid, rec, expected)
    f.fields.update(outcomes=dict(sorted(outcomes.items())), lost=len(lost))
    return f


def _judge_outcome(f: Findings, tid: str, rec: Any, expected: str) -> None:
    final = rec.outcome or {}
    if rec.status != expected or final.get("status") != expected:
        f.bad(
            tid,
            f"wrong outcome: record status {rec.status}, outcome {final.get('status')}, simulator {expected}",
        )
    if rec.handoff != "done":
        f.bad(tid, f"hand-off {rec.handoff!r}, expected 'done'")
    note = final.get("notification") or {}
    if not note.get("delivered"):
        f.bad(tid, f"outcome.notification not delivered: {note}")
    if final.get("step_errors"):
        f.bad(tid, f"outcome.step_errors: {final.get('step_errors')}")
    if expected == "succeeded" and (not final.get("video") or not final.get("charge")):
        f.bad(
            tid,
            f"succeeded outcome without video/charge: video={final.get('video')} charge={final.get('charge')}",
        )


# --------------------------------------------------------------------------------------------------
# Charges
# --------------------------------------------------------------------------------------------------


def check_no_duplicate_charge(run: RunData) -> Findings:
    """No task id appears twice in the ledger."""
    f = Findings(run)
    counts = Counter(run.ledger_ids)
    for tid, c in counts.items():
        if c > 1:
            f.bad(tid, f"charged {c} times")
    f.fields["duplicate_charges"] = sum(c - 1 for c in counts.values() if c > 1)
    return f


def check_charges_match_successes(run: RunData) -> Findings:
    """The ledger's task ids are exactly the succeeded jobs, and every id has its entry."""
    f = Findings(run)
    charged = set(run.ledger_ids)
    for tid in sorted(run.succeeded - charged):
        f.bad(tid, "succeeded but not charged")
    for tid in sorted(charged - run.succeeded):
        f.bad(tid, "charged but did not succeed")
    if len(run.ledger_entries) != len(run.ledger_ids):
        f.fail(f"ledger: {len(run.ledger_ids)} ids but {len(run.ledger_entries)} entries")
    f.fields.update(ledger_entries=len(run.ledger_ids), ledger_totals=run.ledger_totals)
    return f


def check_succeeded_paid_and_notified(run: RunData) -> Findings:
    """Every succeeded job has its ledger entry and a 2xx notification (the headline count of what
    check_charges_match_successes and check_one_delivery_per_job judge in detail)."""
    f = Findings(run)
    charged = set(run.ledger_ids)
    notified = {d.task_id for d in run.deliveries if _ok(d) and d.status == "succeeded"}
    uncharged = sorted(run.succeeded - charged)
    unnotified = sorted(run.succeeded - notified)
    for tid in unnotified:
        f.bad(tid, "succeeded but no 2xx notification")
    f.fields.update(succeeded_uncharged=len(uncharged), succeeded_unnotified=len(unnotified))
    return f


# --------------------------------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------------------------------


def in_doubt_resends(run: RunData) -> dict[str, int]:
    """Repeated 2xx deliveries explained by a SIGKILL of the sender, by webhook-id.

    A repeat is "in doubt", not a duplicate, when the first 2xx went to a sender SIGKILLed before it
    could record it: a kill landed right after that 2xx and the product counted the resend in the
    delivery record (in_doubt). No sender can close that window; a receiver drops the repeat by its
    webhook-id (Standard Webhooks). Any other repeat is a failure.
    """
    out: dict[str, int] = {}
    for wid, c in run.ok_by_wid.items():
        if c < 2:
            continue
        first = min(d.at for d in run.deliveries if d.webhook_id == wid and _ok(d))
        counted = run.in_doubt_counted.get(wid, 0)
        if counted >= c - 1 and any(-0.5 <= k.ts - first <= 2.0 for k in run.kills):
            out[wid] = c - 1
    return out


def check_deliveries_signed(run: RunData) -> Findings:
    """Every delivery the receiver got carried a valid Standard Webhooks signature and a JSON body."""
    f = Findings(run)
    unverified = [d for d in run.deliveries if not d.verified]
    for d in unverified[:5]:
        f.bad(d.task_id, f"webhook {d.webhook_id} failed verification: {d.error}")
    f.fields["deliveries"] = {
        "total": len(run.deliveries),
        "2xx": sum(run.ok_by_wid.values()),
        "503": sum(1 for d in run.deliveries if d.answered == 503),
        "unverified": len(unverified),
    }
    return f


def check_one_delivery_per_job(run: RunData) -> Findings:
    """Every job got exactly one 2xx delivery (plus its in-doubt resends), with its webhook-id and status."""
    f = Findings(run)
    in_doubt = in_doubt_resends(run)
    for tid, job in run.jobs.items():
        rec = run.records.get(tid)
        expected = rec.status if rec is not None else job.fate
        wid = webhook_id(tid, str(job.fate))
        ok = [d for d in run.deliveries if d.task_id == tid and _ok(d)]
        if len(ok) != 1 + in_doubt.get(wid, 0):
            f.bad(
                tid,
                f"{len(ok)} 2xx deliveries (expected exactly 1)",
                deliveries=[
                    (d.at, d.webhook_id, d.status, d.answered) for d in run.deliveries if d.task_id == tid
                ],
            )
        elif ok[0].webhook_id != wid or ok[0].status != job.fate:
            f.bad(
                tid,
                f"delivery {ok[0].webhook_id}/{ok[0].status}, expected {wid}/{job.fate} (record {expected})",
            )
    return f


def check_no_duplicate_delivery(run: RunData) -> Findings:
    """No webhook-id was answered 2xx twice, except the in-doubt resends, which are counted apart."""
    f = Findings(run)
    in_doubt = in_doubt_resends(run)
    duplicates = {wid: c for wid, c in run.ok_by_wid.items() if c > 1 and wid not in in_doubt}
    for wid, c in duplicates.items():
        f.fail(f"{wid}: delivered 2xx {c} times")
    f.fields.update(
        duplicate_deliveries=sum(c - 1 for c in duplicates.values()),
        in_doubt_resends=sum(in_doubt.values()),
    )
    return f


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def check_files(run: RunData) -> Findings:
    """One video per succeeded job, with the sha256 the simulator serves (file and outcome), and no
    partial or extra file."""
    f = Findings(run)
    expected_files = {f"{tid}.mp4" for tid in run.succeeded}
    for name in sorted(run.files):
        if name.endswith(".part"):
            f.fail(f"partial file left: {name}")
        elif name not in expected_files:
            f.fail(f"extra file: {name}")
    for tid in sorted(run.succeeded):
        got = run.file_sha256.get(tid)
        if got is None:
            f.bad(tid, "video file missing")
            continue
        want = run.served_sha256[tid]
        rec = run.records.get(tid)
        video = ((rec.outcome if rec else None) or {}).get("video") or {}
        if got != want or video.get("sha256") != want:
            f.bad(
                tid,
                f"sha256 mismatch: file {got[:12]} outcome {str(video.get('sha256'))[:12]} simulator {want[:12]}",
            )
    return f


# --------------------------------------------------------------------------------------------------
# A full disk
# --------------------------------------------------------------------------------------------------

_FULL = re.compile(r"download task=(\S+): the download dir is full \((\w+)")
_FULL_GAVE_UP = re.compile(r"download task=(\S+) failed kind=storage_full")
_REFIRED = re.compile(r"sweep (\S+): hand-off lease ran out")
_STORED = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): [^\]]*\] download task=(\S+) video stored", re.M
)


def _log_time(day_time: str, ms: str) -> float:
    """A worker log's timestamp (local time, as Celery writes it) as time.time()."""
    return time.mktime(time.strptime(day_time, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000


def check_full_disk(run: RunData) -> Findings:
    """With a full-disk window: downloads did hit it (storage_full retries in the logs: ENOSPC),
    the filler really left no free byte, and every job that hit it got its video after it was
    freed (its file and sha256 are judged by check_files); none gave up."""
    f = Findings(run)
    retries: Counter[str] = Counter()
    errnos: Counter[str] = Counter()
    gave_up: set[str] = set()
    stored_at: dict[str, float] = {}
    refired: set[str] = set()
    for text in run.logs.values():
        for m in _FULL.finditer(text):
            retries[m.group(1)] += 1
            errnos[m.group(2)] += 1
        gave_up.update(_FULL_GAVE_UP.findall(text))
        refired.update(_REFIRED.findall(text))
        for day_time, ms, tid in _STORED.findall(text):
            stored_at[tid] = max(stored_at.get(tid, 0.0), _log_time(day_time, ms))
    disk = run.full_disk
    window = (disk or {}).get("window")
    freed = window[1] if window else None
    hit = sorted(retries)
    after = [t for t in hit if freed is not None and stored_at.get(t, 0.0) >= freed - 0.01]
    f.fields["storage_full"] = {
        "window_s": None if not window else [round(window[0] - run.t0, 2), round(window[1] - run.t0, 2)],
        "retries": sum(retries.values()),
        "errnos": dict(errnos),
        "jobs_hit": len(hit),
        "jobs_stored_after_free": len(after),
        "jobs_gave_up": len(gave_up),
        # its hand-off lease ran out while it waited (the retry's countdown message held by a
        # SIGKILLed worker until the VT, or a backed-up post queue): the sweeper re-fired the chain
        "jobs_refired_by_sweeper": len(refired.intersection(hit)),
        "max_free_bytes_while_full": (disk or {}).get("max_free_bytes_while_full"),
    }
    for tid in sorted(gave_up):
        f.bad(tid, "gave up on a full disk (storage_full) instead of waiting it out")
    if disk is None:
        return f
    if not window:
        f.fail("full disk planned but never filled and freed")
    elif not hit:
        f.fail("the disk was full but no download hit it (no storage_full retry in any log)")
    if disk.get("max_free_bytes_while_full"):
        f.fail(f"the full disk still had {disk['max_free_bytes_while_full']} bytes free")
    for tid in sorted(set(hit) - set(after) - gave_up):
        when = stored_at.get(tid)
        f.bad(tid, f"hit the full disk but its video was not stored after it was freed (stored at {when})")
    return f


# --------------------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------------------


def secret_hits(run: RunData) -> list[str]:
    """Where the API key or the webhook secret (with or without ``whsec_``) shows up."""
    needles = [run.api_key, run.webhook_secret, run.webhook_secret.removeprefix("whsec_")]
    needles = [n for n in needles if n]
    hits: list[str] = []
    for name, text in run.logs.items():
        hits += [f"log {name}" for n in needles if n in text]
    bneedles = [n.encode() for n in needles]
    for key, values in run.redis_values:
        if any(n in v for v in values for n in bneedles):
            hits.append(f"redis key {key}")
    for d in run.deliveries:
        if any(n in d.body for n in bneedles):
            hits.append(f"webhook body {d.webhook_id}")
    return hits


def check_no_secret(run: RunData) -> Findings:
    """No secret in any worker or beat log, anything in Redis (records, results, queues) or any webhook body."""
    f = Findings(run)
    hits = secret_hits(run)
    for where in hits[:10]:
        f.fail(f"secret found in {where}")
    f.fields["secret_leaks"] = len(hits)
    return f


# --------------------------------------------------------------------------------------------------
# The run as a whole
# --------------------------------------------------------------------------------------------------


def check_no_worker_crash(run: RunData) -> Findings:
    """No worker exited on its own (only the harness's SIGKILLs end workers)."""
    f = Findings(run)
    for c in run.crashes:
        f.fail(f"worker {c['worker']} exited on its own at {c['t']}s (code {c['exit_code']}): {c['log']}")
    return f


def check_settled(run: RunData) -> Findings:
    """Every job was done within the settle timeout after the chaos window."""
    f = Findings(run)
    if not run.settled_at:
        f.fail(f"not every job done within {run.settle_timeout_s:g}s after the chaos window")
    return f


def check_drained(run: RunData) -> Findings:
    """The queues and kombu's unacked hash emptied and stayed empty (a visibility-timeout restore
    of a killed worker's messages included)."""
    f = Findings(run)
    if not run.drained:
        f.fail(f"queues/unacked not drained: {run.residual}")
    return f


def tallies(run: RunData) -> Findings:
    """Informational: faults served, requests by kind, and the recoveries the logs show."""
    f = Findings(run)
    logs = run.logs.values()
    f.fields.update(
        faults_served=dict(sorted(Counter(rec.fault for rec in run.requests if rec.fault).items())),
        requests=dict(Counter(rec.kind for rec in run.requests)),
        sweeper_redrives=sum(len(re.findall(r"lease ran out at gen=", t)) for t in logs),
        handoff_refires=sum(len(re.findall(r"hand-off lease ran out", t)) for t in logs),
        stale_copies_dropped=sum(
            len(re.findall(r"copy dropped|lost the race|lost the terminal race", t)) for t in logs
        ),
        handoff_fires_gt1=sum(1 for x in run.records.values() if x is not None and x.handoff_fires > 1),
    )
    return f


def run_fields(run: RunData) -> dict[str, Any]:
    """The report's description of the run itself: sizes, chaos events, timings."""
    t0 = run.t0
    return {
        "seed": run.seed,
        "jobs": len(run.jobs),
        "jobs_by_origin": dict(Counter(j.via for j in run.jobs.values())),
        "kills": len(run.kills),
        "worker_crashes": run.crashes,
        "restarts": len(run.restarts),
        "redis_downtime_s": [round(d, 3) for _, d in run.restarts],
        "bursts": [(round(ts - t0, 2), round(d, 2), ra) for ts, d, ra in run.bursts],
        "expected_outcomes": dict(sorted(Counter(j.fate for j in run.jobs.values()).items())),
        "sweeper": run.sweeper,
        "status_source": run.status_source,
        "settle_s": None if not run.settled_at else round(run.settled_at - t0, 2),
        "residual": run.residual,
        "residual_unacked": run.residual_detail,
        "wall_s": round(run.wall_s, 1),
        "events": run.timeline.events,
        "kill_events": [
            {
                "t": round(k.ts - t0, 2),
                "worker": k.worker,
                "held_polls": len(k.held),
                "inspected": k.inspected,
                "held": k.held,
            }
            for k in run.kills
        ],
    }


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------

# In the order their failures are listed.
CHECKS: tuple[Callable[[RunData], Findings], ...] = (
    check_outcomes,
    check_no_duplicate_charge,
    check_charges_match_successes,
    check_succeeded_paid_and_notified,
    check_deliveries_signed,
    check_one_delivery_per_job,
    check_no_duplicate_delivery,
    check_files,
    check_full_disk,
    check_retry_after,
    check_cooldown_overlaps,
    check_no_poll_after_end,
    check_no_secret,
    check_resume_budget,
    check_no_worker_crash,
    check_settled,
    check_drained,
    tallies,
)

REPORT_KEYS = (
    "seed", "jobs", "jobs_by_origin", "status_source", "kills", "worker_crashes", "restarts",
    "redis_downtime_s", "bursts", "faults_served", "requests", "responses_429", "outcomes",
    "expected_outcomes", "lost", "duplicate_charges", "ledger_entries", "ledger_totals",
    "succeeded_uncharged", "succeeded_unnotified", "duplicate_deliveries", "in_doubt_resends",
    "deliveries", "storage_full", "retry_after_violations", "cooldown_overlaps", "polls_after_end", "url_refresh_gets",
    "url_403_without_refresh", "secret_leaks", "resume", "resume_p99_s", "sweeper", "sweeper_redrives",
    "handoff_refires", "stale_copies_dropped", "handoff_fires_gt1", "settle_s", "residual",
    "residual_unacked", "wall_s", "events", "kill_events",
)  # fmt: skip


def judge(run: RunData) -> dict[str, Any]:
    """Every check in order, assembled into the report (``report["failures"]`` empty = passed)."""
    found = [check(run) for check in CHECKS]
    fields = run_fields(run)
    for f in found:
        fields.update(f.fields)
    return {k: fields[k] for k in REPORT_KEYS} | {
        "failures": [x for f in found for x in f.failures],
        "failure_details": [x for f in found for x in f.details][:MAX_DETAILS],
    }
