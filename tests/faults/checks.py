"""The judging of a fault run: one function per invariant, each taking the ``RunData`` the run gathered
and returning its ``Findings`` (failures, per-job details, report fields).

``judge()`` runs them in order and assembles the report: a JSON-able dict whose ``failures`` list is
empty only when every check held. Nothing here does I/O, so each check can be fed hand-built data.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from seedance_worker.steps.notify import webhook_id
from tests.faults.rundata import RunData, p99, percentile

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


def _ok(d: Any) -> bool:
    return d.ok


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


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
# Polling: Retry-After, the shared cool-down, no poll after the end
# --------------------------------------------------------------------------------------------------


def check_retry_after(run: RunData) -> Findings:
    """No GET of a task arrived before a 429's time plus its Retry-After (same task, by arrival time)."""
    f = Findings(run)
    violations = n429 = 0
    files_403 = run.files_403()
    for tid, recs in run.gets().items():
        for rec in recs:
            if rec.status != 429:
                continue
            n429 += 1
            ra = run.retry_after_of(rec)
            # Later by arrival time (the log is in answer order: a held "timeout" GET that arrived
            # before this 429 is logged after it and is no violation).
            early = sorted((x for x in recs if rec.ts < x.ts < rec.ts + ra), key=lambda x: x.ts)
            if early:
                violations += len(early)
                _retry_after_violation(f, tid, rec, ra, early[0].ts, recs, files_403.get(tid, []))
    f.fields.update(responses_429=n429, retry_after_violations=violations)
    return f


def _retry_after_violation(
    f: Findings, tid: str, rec: Any, ra: float, first_ts: float, recs: list[Any], f403: list[Any]
) -> None:
    job = f.run.records.get(tid)
    f.bad(
        tid,
        f"GET {first_ts - rec.ts:.3f}s after a 429 ({rec.fault}) with Retry-After {ra:g}",
        gets_around=[(round(x.ts - rec.ts, 3), x.status, x.fault) for x in recs if abs(x.ts - rec.ts) < 10],
        file_403_around=[round(x.ts - rec.ts, 3) for x in f403 if abs(x.ts - rec.ts) < 10],
        record_terminal_at=None if job is None else job.terminal_at and round(job.terminal_at - rec.ts, 3),
    )


def check_cooldown_overlaps(run: RunData) -> Findings:
    """Informational: GETs starting 0.5 s or more into any 429's Retry-After window (the shared
    cool-down), polls and URL refreshes apart; a GET already in flight when the 429 came is legitimate."""
    f = Findings(run)
    gets, files_403 = run.gets(), run.files_403()
    windows = sorted(
        (rec.ts + 0.5, rec.ts + run.retry_after_of(rec))
        for recs in gets.values()
        for rec in recs
        if rec.status == 429
    )
    polls = refreshes = 0
    for tid, recs in gets.items() if windows else ():
        f403 = [x.ts for x in files_403.get(tid, [])]
        for g in recs:
            if any(a <= g.ts < b for a, b in windows):
                # a GET right after a 403 of its video URL is the download's URL refresh
                if any(0 <= g.ts - t < 2.0 for t in f403):
                    refreshes += 1
                else:
                    polls += 1
    f.fields["cooldown_overlaps"] = {"polls": polls, "url_refreshes": refreshes}
    return f


def check_no_poll_after_end(run: RunData) -> Findings:
    """No GET of a job after its terminal poll, except a succeeded download's URL refreshes, each
    answering one 403 of the video URL just before it (with its retries of failed GETs)."""
    f = Findings(run)
    polls_after_end = refresh_gets = unanswered_403 = 0
    gets, files_403 = run.gets(), run.files_403()
    for tid in run.jobs:
        rec = run.records.get(tid)
        if rec is None or rec.terminal_at is None:
            continue
        # By arrival time: a GET the simulator held (timeout fault) is logged after later ones.
        after = sorted((g for g in gets.get(tid, []) if g.ts > rec.terminal_at), key=lambda g: g.ts)
        pending = sorted(x.ts for x in files_403.get(tid, []) if x.ts > rec.terminal_at)
        extra: list[Any] = []
        for g in after:
            earlier = [t for t in pending if t < g.ts]
            if rec.status == "succeeded" and earlier:
                # A refresh tries its GET a few times on 5xx/timeouts; the one that got the fresh
                # URL (200) answers the 403.
                if g.status == 200 and g.fault is None:
                    pending.remove(earlier[0])
                refresh_gets += 1
            else:
                extra.append(g)
        unanswered_403 += len(pending)
        if extra:
            polls_after_end += len(extra)
            f.bad(
                tid,
                f"{len(extra)} GET(s) after the terminal poll ({rec.terminal_at:.3f}) not explained by a URL refresh",
                gets_after=[(round(g.ts - rec.terminal_at, 3), g.status, g.fault) for g in after],
                file_403=[round(x.ts - rec.terminal_at, 3) for x in files_403.get(tid, [])],
            )
    f.fields.update(
        polls_after_end=polls_after_end, url_refresh_gets=refresh_gets, url_403_without_refresh=unanswered_403
    )
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
# Resumption after a SIGKILL
# --------------------------------------------------------------------------------------------------


def resume_times(run: RunData) -> dict[str, Any]:
    """How long after each SIGKILL the polls the killed worker held got their next GET."""
    samples: list[float] = []
    no_get = 0
    budget_s = run.countdown_cap_s + 30.0
    gets = run.gets()
    over: list[tuple[str, float]] = []
    for k in run.kills:
        for tid in k.held:
            rec = run.records.get(tid)
            if rec is not None and rec.terminal_at is not None and rec.terminal_at <= k.ts:
                # Its poll had already ended the job (an `active` terminal poll finishing its
                # hand-off): what remains is the downstream chain, under the hand-off lease.
                continue
            nxt = [g.ts for g in gets.get(tid, []) if g.ts >= k.ts]
            if nxt:
                samples.append(nxt[0] - k.ts)
                if samples[-1] > budget_s:
                    over.append((tid, samples[-1]))
            elif rec is None or rec.terminal_at is None or rec.terminal_at > k.ts:
                no_get += 1
    return {
        "budget_s": budget_s,
        "over_budget": over,
        "n": len(samples),
        "p50_s": _round(percentile(samples, 50)),
        "p99_s": _round(p99(samples)),
        "max_s": _round(max(samples) if samples else None),
        "held_without_later_get": no_get,
        "kills_inspected": sum(1 for k in run.kills if k.inspected),
    }


def check_resume_budget(run: RunData) -> Findings:
    """A chain held by a SIGKILLed worker resumed within its interval plus 30 s (every interval here
    is at most the countdown cap)."""
    f = Findings(run)
    resume = resume_times(run)
    for tid, waited in resume["over_budget"][:10]:
        f.fail(f"{tid}: resumed {waited:.1f} s after its worker's SIGKILL (> {resume['budget_s']:g} s)")
    f.fields.update(resume=resume, resume_p99_s=resume["p99_s"])
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
    check_deliveries_signed,
    check_one_delivery_per_job,
    check_no_duplicate_delivery,
    check_files,
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
    "seed", "jobs", "jobs_by_origin", "kills", "worker_crashes", "restarts", "redis_downtime_s", "bursts",
    "faults_served", "requests", "responses_429", "outcomes", "expected_outcomes", "lost",
    "duplicate_charges", "ledger_entries", "ledger_totals", "duplicate_deliveries", "in_doubt_resends",
    "deliveries", "retry_after_violations", "cooldown_overlaps", "polls_after_end", "url_refresh_gets",
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
