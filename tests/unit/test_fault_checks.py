"""The fault harness's checks (tests/faults/checks.py) on hand-built run data: clean data passes, and
each planted violation is caught by its check (and fails the report)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from seedance_worker.engine.store import JobRecord
from seedance_worker.steps.notify import webhook_id
from seedance_worker.testing.simulator import RequestRecord
from seedance_worker.testing.webhooks import Delivery
from tests.faults import checks
from tests.faults.rundata import Job, KillEvent, RunData, Timeline

T0 = 1_000.0
SHA = hashlib.sha256(b"video").hexdigest()
API_KEY = "sk-faults-0123456789abcdef"
SECRET = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ="


def get(tid: str, ts: float, status: int = 200, fault: str | None = None, rid: str = "") -> RequestRecord:
    return RequestRecord(
        ts=ts, method="GET", path=f"/api/v3/contents/generations/tasks/{tid}", task_id=tid, status=status,
        request_id=rid or f"r-{tid}-{ts}", kind="get", fault=fault, headers={}, query={},
    )  # fmt: skip


def listing(
    ids: list[str], ts: float, status: int = 200, fault: str | None = None, rid: str = ""
) -> RequestRecord:
    """A batch-mode list call naming ``ids`` (as the client sends them: one filter.task_ids each)."""
    return RequestRecord(
        ts=ts, method="GET", path="/api/v3/contents/generations/tasks", task_id=None, status=status,
        request_id=rid or f"l-{ts}", kind="list", fault=fault, headers={},
        query={"page_num": ["1"], "page_size": [str(len(ids))], "filter.task_ids": ids},
    )  # fmt: skip


def file_403(tid: str, ts: float) -> RequestRecord:
    return RequestRecord(
        ts=ts, method="GET", path=f"/files/{tid}.mp4", task_id=tid, status=403, request_id=f"f-{tid}-{ts}",
        kind="file", fault="expire_first_download", headers={}, query={},
    )  # fmt: skip


def record(tid: str, status: str, terminal_at: float) -> JobRecord:
    outcome: dict[str, Any] = {"status": status, "notification": {"delivered": True}}
    if status == "succeeded":
        outcome |= {"video": {"sha256": SHA}, "charge": {"amount": "2.50"}}
    return JobRecord(
        task_id=tid, state="done", status=status, handoff="done", terminal_at=terminal_at, outcome=outcome
    )


def delivery(tid: str, status: str, ts: float, code: int = 200) -> Delivery:
    payload = {"task_id": tid, "status": status}
    return Delivery(
        ts, "/hooks/seedance", {"webhook-id": webhook_id(tid, status)}, b"{}", code, True, None, payload
    )


def clean_run() -> RunData:
    """Two jobs, one succeeded (charged, downloaded after one URL refresh) and one failed."""
    jobs = {"t-ok": Job("t-ok", "succeeded", "track", T0), "t-bad": Job("t-bad", "failed", "track", T0)}
    return RunData(
        seed=1,
        jobs=jobs,
        timeline=Timeline(t0=T0),
        settled_at=T0 + 20,
        drained=True,
        residual={"seedance.poll": 0, "seedance.post": 0, "unacked": 0},
        countdown_cap_s=5.0,
        api_key=API_KEY,
        webhook_secret=SECRET,
        records={"t-ok": record("t-ok", "succeeded", T0 + 5), "t-bad": record("t-bad", "failed", T0 + 6)},
        ledger_ids=["t-ok"],
        ledger_entries=[{"task_id": "t-ok"}],
        requests=[
            get("t-ok", T0 + 1),
            get("t-ok", T0 + 5),
            get("t-bad", T0 + 2),
            get("t-bad", T0 + 6),
            file_403("t-ok", T0 + 7),
            get("t-ok", T0 + 7.2),  # the download's URL refresh after the 403: no poll
        ],
        sim_states={"t-ok": {"status": "succeeded"}, "t-bad": {"status": "failed"}},
        served_sha256={"t-ok": SHA},
        deliveries=[delivery("t-ok", "succeeded", T0 + 8), delivery("t-bad", "failed", T0 + 6.5)],
        files={"t-ok.mp4"},
        file_sha256={"t-ok": SHA},
        logs={"w1.log": "t-ok polled\nt-bad failed\n"},
        redis_values=[("seedance:job:t-ok", [b"state=done"])],
    )


def test_clean_run_passes_every_check() -> None:
    report = checks.judge(clean_run())
    assert report["failures"] == []
    assert report["lost"] == 0 and report["duplicate_charges"] == 0 and report["duplicate_deliveries"] == 0
    assert report["polls_after_end"] == 0 and report["url_refresh_gets"] == 1
    assert report["retry_after_violations"] == 0 and report["secret_leaks"] == 0
    assert list(report)[-2:] == ["failures", "failure_details"]
    assert report["outcomes"] == report["expected_outcomes"] == {"failed": 1, "succeeded": 1}


def test_duplicate_charge_fails() -> None:
    run = clean_run()
    run.ledger_ids = ["t-ok", "t-ok"]
    run.ledger_entries = [{"task_id": "t-ok"}, {"task_id": "t-ok"}]
    found = checks.check_no_duplicate_charge(run)
    assert found.failures == ["t-ok: charged 2 times"] and found.fields["duplicate_charges"] == 1
    assert found.details[0]["job"] == "t-ok" and found.details[0]["log"] == ["w1.log: t-ok polled"]
    assert checks.judge(run)["failures"] == ["t-ok: charged 2 times"]


def test_charge_of_a_failed_job_fails() -> None:
    run = clean_run()
    run.ledger_ids = ["t-ok", "t-bad"]
    assert checks.check_charges_match_successes(run).failures == [
        "t-bad: charged but did not succeed",
        "ledger: 2 ids but 1 entries",
    ]


def test_lost_job_fails() -> None:
    run = clean_run()
    run.records["t-bad"] = None
    found = checks.check_outcomes(run)
    assert found.fields["lost"] == 1
    assert found.failures == ["t-bad: lost: record state None, expected done/failed"]
    report = checks.judge(run)
    assert (
        report["lost"] == 1 and "t-bad: lost: record state None, expected done/failed" in report["failures"]
    )


def test_poll_after_the_end_fails_but_a_url_refresh_does_not() -> None:
    run = clean_run()
    assert checks.check_no_poll_after_end(run).failures == []
    run.requests.append(get("t-bad", T0 + 9))  # the failed job's chain polled again
    found = checks.check_no_poll_after_end(run)
    assert found.fields["polls_after_end"] == 1 and found.fields["url_refresh_gets"] == 1
    assert found.failures == [
        "t-bad: 1 read(s) after the terminal poll (1006.000) not explained by a URL refresh (1 GET, 0 list call)"
    ]
    assert found.details[0]["reads_after"] == [(3.0, "GET", 200, None)]


def test_get_before_retry_after_fails_by_arrival_time() -> None:
    run = clean_run()
    run.requests += [get("t-ok", T0 + 2, status=429, fault="429_burst", rid="r429"), get("t-ok", T0 + 3.5)]
    run.retry_after = {"r429": 2.0}
    found = checks.check_retry_after(run)
    assert found.fields == {"responses_429": 1, "retry_after_violations": 1}
    assert found.failures == ["t-ok: GET 1.500s after a 429 to a GET (429_burst) with Retry-After 2"]
    run.retry_after = {"r429": 1.0}
    assert checks.check_retry_after(run).failures == []


def test_repeated_delivery_is_a_duplicate_unless_in_doubt() -> None:
    run = clean_run()
    run.deliveries.append(delivery("t-ok", "succeeded", T0 + 9))
    wid = webhook_id("t-ok", "succeeded")
    found = checks.check_no_duplicate_delivery(run)
    assert found.failures == [f"{wid}: delivered 2xx 2 times"] and found.fields["duplicate_deliveries"] == 1
    assert checks.check_one_delivery_per_job(run).failures == ["t-ok: 2 2xx deliveries (expected exactly 1)"]
    # The sender was SIGKILLed right after the first 2xx, and the product counted its resend.
    run.kills = [KillEvent(T0 + 8.3, "w1", [], True)]
    run.in_doubt_counted = {wid: 1}
    report = checks.judge(run)
    assert report["failures"] == []
    assert report["duplicate_deliveries"] == 0 and report["in_doubt_resends"] == 1


def test_secret_in_redis_or_a_log_fails() -> None:
    run = clean_run()
    run.redis_values.append(("seedance:job:t-bad", [b"last_error=key " + API_KEY.encode()]))
    run.logs["beat.log"] = "secret " + SECRET.removeprefix("whsec_")
    found = checks.check_no_secret(run)
    assert found.fields["secret_leaks"] == 2
    assert found.failures == ["secret found in log beat.log", "secret found in redis key seedance:job:t-bad"]


def test_missing_or_wrong_video_fails() -> None:
    run = clean_run()
    run.file_sha256 = {"t-ok": "0" * 64}
    run.files |= {"t-ok.mp4.part"}
    failures = checks.check_files(run).failures
    assert failures[0] == "partial file left: t-ok.mp4.part"
    assert failures[1].startswith("t-ok: sha256 mismatch: file 000000000000")
    run.file_sha256 = {}
    assert checks.check_files(run).failures[-1] == "t-ok: video file missing"


def test_resume_over_budget_fails() -> None:
    run = clean_run()
    run.records["t-ok"] = record("t-ok", "succeeded", T0 + 50)
    run.kills = [KillEvent(T0 + 3, "w2", ["t-ok"], True)]
    run.requests.append(get("t-ok", T0 + 40))
    run.requests.remove(run.requests[1])  # the GET at +5 s
    found = checks.check_resume_budget(run)
    assert found.fields["resume"]["budget_s"] == 35.0 and found.fields["resume_p99_s"] == 4.2
    assert found.failures == []
    run.requests = [r for r in run.requests if r.task_id != "t-ok" or r.ts >= T0 + 40]
    found = checks.check_resume_budget(run)
    assert found.failures == ["t-ok: resumed 37.0 s after its worker's SIGKILL (> 35 s)"]


def test_a_list_call_naming_a_job_inside_a_retry_after_fails() -> None:
    """A 429 to a list call holds every job it names; a 429 to a GET holds the list calls too."""
    run = clean_run()
    run.requests += [
        listing(["t-ok", "t-bad"], T0 + 2, status=429, fault="429_burst", rid="L429"),
        get("t-ok", T0 + 2.5),  # inside the list call's Retry-After: a violation for t-ok
        listing(["t-other"], T0 + 2.6),  # names neither job: no violation
    ]
    run.retry_after = {"L429": 2.0}
    found = checks.check_retry_after(run)
    assert found.fields == {"responses_429": 1, "retry_after_violations": 1}
    assert found.failures == ["t-ok: GET 0.500s after a 429 to a list call (429_burst) with Retry-After 2"]

    run = clean_run()
    run.requests += [
        get("t-bad", T0 + 3, status=429, fault="429_burst", rid="g429"),
        listing(["t-ok", "t-bad"], T0 + 4, rid="L1"),  # t-bad named 1 s into its 3-s Retry-After
        listing(["t-bad"], T0 + 4.5, status=429, fault="429_burst", rid="L2"),  # early too
    ]
    run.retry_after = {"g429": 3.0, "L2": 1.0}
    found = checks.check_retry_after(run)
    # Each early request counted once, though L2 also opens a window of its own.
    assert found.fields == {"responses_429": 2, "retry_after_violations": 2}
    assert found.failures == ["t-bad: list call 1.000s after a 429 to a GET (429_burst) with Retry-After 3"]


def test_a_list_call_naming_a_job_after_its_end_is_a_poll_after_the_end() -> None:
    run = clean_run()
    run.requests += [listing(["t-ok", "t-bad"], T0 + 4)]  # before either ended: fine
    assert checks.check_no_poll_after_end(run).fields["polls_after_end"] == 0
    # after t-ok's end, and after its download's 403: still a poll, only a GET can be a URL refresh
    run.requests += [listing(["t-ok"], T0 + 7.1)]
    found = checks.check_no_poll_after_end(run)
    assert found.fields["polls_after_end"] == 1 and found.fields["url_refresh_gets"] == 1
    assert found.failures == [
        "t-ok: 1 read(s) after the terminal poll (1005.000) not explained by a URL refresh (0 GET, 1 list call)"
    ]


def test_resume_counts_a_list_call_as_the_next_read() -> None:
    run = clean_run()
    run.records["t-ok"] = record("t-ok", "succeeded", T0 + 50)
    run.kills = [KillEvent(T0 + 3, "w2", ["t-ok"], True)]
    run.requests = [r for r in run.requests if r.task_id != "t-ok"] + [listing(["t-bad", "t-ok"], T0 + 4)]
    assert checks.check_resume_budget(run).fields["resume"]["p50_s"] == 1.0


def test_succeeded_job_without_charge_or_notification_is_counted() -> None:
    run = clean_run()
    run.ledger_ids, run.ledger_entries = [], []
    run.deliveries = [d for d in run.deliveries if d.task_id != "t-ok"]
    found = checks.check_succeeded_paid_and_notified(run)
    assert found.fields == {"succeeded_uncharged": 1, "succeeded_unnotified": 1}
    assert found.failures == ["t-ok: succeeded but no 2xx notification"]
    report = checks.judge(run)
    assert report["succeeded_uncharged"] == 1 and "t-ok: succeeded but not charged" in report["failures"]


FULL = "the download dir is full (ENOSPC: No space left on device) writing /d/.t-ok.mp4.part"


def _log_line(ts: float, text: str) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f",{int(ts * 1000) % 1000:03d}"
    return f"[{stamp}: INFO/ForkPoolWorker-1] {text}"


def full_disk_run(stored_at: float) -> Any:
    run = clean_run()
    run.full_disk = {"window": (T0 + 2, T0 + 6), "max_free_bytes_while_full": 0}
    run.logs["w2.log"] = "\n".join([
        _log_line(T0 + 3, f"download task=t-ok: {FULL}; retry 1/5 in 5s"),
        _log_line(T0 + 5, f"download task=t-ok: {FULL}; retry 2/5 in 5s"),
        _log_line(stored_at, "download task=t-ok video stored file:///d/t-ok.mp4 bytes=5 sha256=00"),
    ])  # fmt: skip
    return run


def test_full_disk_hit_and_waited_out_passes() -> None:
    found = checks.check_full_disk(full_disk_run(stored_at=T0 + 8))
    assert found.failures == []
    assert found.fields["storage_full"] == {
        "window_s": [2.0, 6.0], "retries": 2, "errnos": {"ENOSPC": 2}, "jobs_hit": 1,
        "jobs_stored_after_free": 1, "jobs_gave_up": 0, "jobs_refired_by_sweeper": 0,
        "max_free_bytes_while_full": 0,
    }  # fmt: skip


def test_full_disk_that_nothing_hit_or_a_job_that_gave_up_fails() -> None:
    run = full_disk_run(stored_at=T0 + 4)  # "stored" while the disk was full: not waited out
    assert checks.check_full_disk(run).failures == [
        f"t-ok: hit the full disk but its video was not stored after it was freed (stored at {T0 + 4})"
    ]
    run = full_disk_run(stored_at=T0 + 8)
    run.logs["w2.log"] += (
        "\ndownload task=t-ok failed kind=storage_full: " + FULL + " (gave up after 6 attempts)"
    )
    assert checks.check_full_disk(run).failures == [
        "t-ok: gave up on a full disk (storage_full) instead of waiting it out"
    ]
    run = clean_run()
    run.full_disk = {"window": (T0 + 2, T0 + 6), "max_free_bytes_while_full": 4096}
    assert checks.check_full_disk(run).failures == [
        "the disk was full but no download hit it (no storage_full retry in any log)",
        "the full disk still had 4096 bytes free",
    ]
    assert checks.check_full_disk(clean_run()).failures == []  # no full disk planned: nothing to judge
