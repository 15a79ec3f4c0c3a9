"""The polling checks of a fault run: Retry-After, the shared cool-down, no poll after the end, and
how fast a SIGKILLed worker's polls resumed.

A job is "read" by its own GETs and, in batch mode, by every list call whose ``filter.task_ids``
names it (``RunData.reads``): a 429 answered to a list call is a 429 for each job it names, and a
list call naming a job counts as a poll of that job.
"""

from __future__ import annotations

from typing import Any

from tests.faults.findings import Findings
from tests.faults.rundata import RunData, p99, percentile, what


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def check_retry_after(run: RunData) -> Findings:
    """No GET or list call naming a job arrived before a 429's time plus its Retry-After, where the
    429 answered a GET of that job or a list call naming it (by arrival time)."""
    f = Findings(run)
    violations = 0
    n429: set[str] = set()
    files_403 = run.files_403()
    for tid, recs in run.reads().items():
        early_ids: set[str] = set()
        for rec in recs:
            if rec.status != 429:
                continue
            n429.add(rec.request_id)
            ra = run.retry_after_of(rec)
            # Later by arrival time (the log is in answer order: a held "timeout" GET that arrived
            # before this 429 is logged after it and is no violation).
            early = sorted((x for x in recs if rec.ts < x.ts < rec.ts + ra), key=lambda x: x.ts)
            new = [x for x in early if x.request_id not in early_ids]
            if new:
                early_ids.update(x.request_id for x in new)
                _retry_after_violation(f, tid, rec, ra, new[0], recs, files_403.get(tid, []))
        violations += len(early_ids)
    f.fields.update(responses_429=len(n429), retry_after_violations=violations)
    return f


def _retry_after_violation(
    f: Findings, tid: str, rec: Any, ra: float, first: Any, recs: list[Any], f403: list[Any]
) -> None:
    job = f.run.records.get(tid)
    f.bad(
        tid,
        f"{what(first)} {first.ts - rec.ts:.3f}s after a 429 to a {what(rec)} ({rec.fault}) with Retry-After {ra:g}",
        reads_around=[
            (round(x.ts - rec.ts, 3), what(x), x.status, x.fault) for x in recs if abs(x.ts - rec.ts) < 10
        ],
        file_403_around=[round(x.ts - rec.ts, 3) for x in f403 if abs(x.ts - rec.ts) < 10],
        record_terminal_at=None if job is None else job.terminal_at and round(job.terminal_at - rec.ts, 3),
    )


def check_cooldown_overlaps(run: RunData) -> Findings:
    """Informational: GETs and list calls starting 0.5 s or more into any 429's Retry-After window
    (the shared cool-down), polls and URL refreshes apart; a request already in flight when the 429
    came is legitimate."""
    f = Findings(run)
    files_403 = run.files_403()
    reads = [r for r in run.requests if r.kind == "list" or (r.kind == "get" and r.task_id)]
    windows = sorted((r.ts + 0.5, r.ts + run.retry_after_of(r)) for r in reads if r.status == 429)
    polls = refreshes = 0
    for g in reads if windows else ():
        if not any(a <= g.ts < b for a, b in windows):
            continue
        # a GET right after a 403 of its video URL is the download's URL refresh
        f403 = [x.ts for x in files_403.get(g.task_id or "", [])] if g.kind == "get" else []
        if any(0 <= g.ts - t < 2.0 for t in f403):
            refreshes += 1
        else:
            polls += 1
    f.fields["cooldown_overlaps"] = {"polls": polls, "url_refreshes": refreshes}
    return f


def check_no_poll_after_end(run: RunData) -> Findings:
    """No GET of a job and no list call naming it after its terminal poll, except a succeeded
    download's URL refreshes (GETs), each answering one 403 of the video URL just before it (with
    its retries of failed GETs)."""
    f = Findings(run)
    polls_after_end = refresh_gets = unanswered_403 = 0
    reads, files_403 = run.reads(), run.files_403()
    for tid in run.jobs:
        rec = run.records.get(tid)
        if rec is None or rec.terminal_at is None:
            continue
        # By arrival time: a GET the simulator held (timeout fault) is logged after later ones.
        after = sorted((g for g in reads.get(tid, []) if g.ts > rec.terminal_at), key=lambda g: g.ts)
        pending = sorted(x.ts for x in files_403.get(tid, []) if x.ts > rec.terminal_at)
        extra: list[Any] = []
        for g in after:
            earlier = [t for t in pending if t < g.ts]
            if rec.status == "succeeded" and earlier and g.kind == "get":
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
            lists = sum(1 for g in extra if g.kind == "list")
            f.bad(
                tid,
                f"{len(extra)} read(s) after the terminal poll ({rec.terminal_at:.3f}) not explained by a "
                f"URL refresh ({len(extra) - lists} GET, {lists} list call)",
                reads_after=[(round(g.ts - rec.terminal_at, 3), what(g), g.status, g.fault) for g in after],
                file_403=[round(x.ts - rec.terminal_at, 3) for x in files_403.get(tid, [])],
            )
    f.fields.update(
        polls_after_end=polls_after_end, url_refresh_gets=refresh_gets, url_403_without_refresh=unanswered_403
    )
    return f


# --------------------------------------------------------------------------------------------------
# Resumption after a SIGKILL
# --------------------------------------------------------------------------------------------------


def resume_times(run: RunData) -> dict[str, Any]:
    """How long after each SIGKILL the polls the killed worker held were next read (GET or list)."""
    samples: list[float] = []
    no_get = 0
    budget_s = run.countdown_cap_s + 30.0
    reads = run.reads()
    over: list[tuple[str, float]] = []
    for k in run.kills:
        for tid in k.held:
            rec = run.records.get(tid)
            if rec is not None and rec.terminal_at is not None and rec.terminal_at <= k.ts:
                # Its poll had already ended the job (an `active` terminal poll finishing its
                # hand-off): what remains is the downstream chain, under the hand-off lease.
                continue
            nxt = sorted(g.ts for g in reads.get(tid, []) if g.ts >= k.ts)
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
