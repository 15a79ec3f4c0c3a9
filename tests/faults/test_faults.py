"""The fault-injection run, CI size: ~300 jobs through real prefork workers, a real beat sweeper and an
embedded Redis with AOF, under a storm of API faults (5xx, read timeouts, malformed bodies, 429 bursts,
expired download URLs), one SIGKILL of a whole worker and one Redis restart.

Every job must reach its right Outcome, every succeeded job be charged exactly once, every job's
notification be delivered (2xx) exactly once, every file match its sha256; no GET before a
Retry-After, no poll after a job's end, no secret in any log, record or result. See checks.py for
the exact checks; the report (and the logs) stay in the test's tmp dir.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.harness import FaultRun, ci_config, summary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(330)]


def test_fault_storm_every_job_ends_right_once(faults_dir: Path, faults_seed: int | None) -> None:
    report = FaultRun(ci_config(faults_seed), faults_dir).run()
    (faults_dir / "report.json").write_text(json.dumps(report, indent=1, default=str))
    text = f"{summary(report)}\nreport: {faults_dir / 'report.json'} (replay: FAULTS_SEED={report['seed']})"
    print(text)

    assert report["jobs"] >= 300 and report["kills"] == 1 and report["restarts"] == 1, text
    assert report["faults_served"].get("5xx") and report["faults_served"].get("timeout"), text
    assert report["faults_served"].get("429_burst") and report["faults_served"].get(
        "expire_first_download"
    ), text
    assert report["lost"] == 0, text
    assert report["outcomes"] == report["expected_outcomes"], text
    assert report["duplicate_charges"] == 0, text
    assert report["duplicate_deliveries"] == 0, text
    assert report["retry_after_violations"] == 0, text
    assert report["polls_after_end"] == 0, text
    assert report["secret_leaks"] == 0, text
    assert not report["worker_crashes"], text
    assert report["failures"] == [], text
