"""Fault-injection bench: the harness of tests/faults, longer and with many more SIGKILLs.

    python bench/faults.py --jobs 1000 --kills 40 [--runs 5] [--restarts 1] [--seed N] [--quick]
                           [--status-source batch|get] [--full-disk [--full-disk-s 20]]

Each run: an embedded Redis (AOF) restarted mid-run, the simulator with 5xx / read timeouts /
malformed bodies / 429 bursts / expiring download URLs, a webhook receiver that verifies signatures,
3 prefork workers (-c 2) SIGKILLed `--kills` times and replaced, `celery beat` running the sweeper.
Status is read by list calls of chunks of jobs (`--status-source batch`, the product's default) or
one GET per job (`get`). With `--full-disk`, the first run's download directory sits on a tmpfs of
its own that is filled to the last byte (writes fail with ENOSPC) for `--full-disk-s` seconds
mid-run, then freed; the bench then re-runs itself under `unshare --mount` so that mount is private
to it and its workers.
Prints a table and writes JSON (every run's full report) to bench/results/faults.json
(`--quick`: a ~60 s smoke run, written to bench/results/faults-quick.json). Exits 1 when any check
of any run failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.faults.harness import (  # noqa: E402
    FaultConfig,
    FaultRun,
    bench_config,
    summary,
    with_status_source,
)

RESULTS = ROOT / "bench" / "results"
MOUNT_NS_ENV = "FAULTS_BENCH_MOUNT_NS"  # set once the bench runs in a mount namespace of its own


def quick_config(seed: int | None) -> FaultConfig:
    """~60 s: 120 jobs tracked over 10 s, 3 SIGKILLs, 1 Redis restart, the full fault mix."""
    return FaultConfig(
        jobs=120,
        kills=3,
        redis_restarts=1,
        seed=seed,
        track_window_s=10.0,
        chaos_end_s=18.0,
        settle_timeout_s=90.0,
    )


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, dict):
        return " ".join(f"{k}={n}" for k, n in v.items())
    return str(v)


def _window(w: list[float] | None) -> str:
    return "-" if not w else f"{w[0]:.0f}-{w[1]:.0f}"


def _hits(sf: dict[str, Any]) -> str:
    if not sf["window_s"]:
        return "-"
    return f"{sf['jobs_hit']}/{sf['jobs_stored_after_free']}/{sf['jobs_refired_by_sweeper']}"


def in_own_mount_namespace(argv: list[str]) -> None:
    """Re-run this bench under ``unshare --mount`` (once): the full disk's tmpfs is then private to the
    bench and its workers, and goes away with them however the bench ends. Same pid (exec)."""
    if os.environ.get(MOUNT_NS_ENV) == "1":
        return
    if shutil.which("unshare") is None:
        raise SystemExit("--full-disk needs util-linux's unshare (a tmpfs mount of the bench's own)")
    cmd = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        cmd.append("--map-root-user")  # a user namespace: root there may mount a tmpfs
    os.environ[MOUNT_NS_ENV] = "1"
    os.execvp(cmd[0], [*cmd, sys.executable, str(Path(__file__).resolve()), *argv])


def table(reports: list[dict[str, Any]]) -> str:
    cols = [
        ("run", lambda i, r: str(i + 1)),
        ("seed", lambda i, r: str(r["seed"])),
        ("jobs", lambda i, r: str(r["jobs"])),
        ("kills", lambda i, r: str(r["kills"])),
        ("restarts", lambda i, r: str(r["restarts"])),
        ("crashes", lambda i, r: str(len(r["worker_crashes"]))),
        ("faults", lambda i, r: str(sum(r["faults_served"].values()))),
        ("lost", lambda i, r: str(r["lost"])),
        ("dup charges", lambda i, r: str(r["duplicate_charges"])),
        ("dup deliveries", lambda i, r: str(r["duplicate_deliveries"])),
        ("uncharged", lambda i, r: str(r["succeeded_uncharged"])),
        ("unnotified", lambda i, r: str(r["succeeded_unnotified"])),
        # the sender SIGKILLed between the receiver's 2xx and its mark: resent, same webhook-id
        ("in-doubt resends", lambda i, r: str(r.get("in_doubt_resends", 0))),
        ("RA viol.", lambda i, r: str(r["retry_after_violations"])),
        ("polls after end", lambda i, r: str(r["polls_after_end"])),
        ("list calls", lambda i, r: str(r["requests"].get("list", 0))),
        ("full disk s", lambda i, r: _window(r["storage_full"]["window_s"])),
        ("ENOSPC retries", lambda i, r: str(r["storage_full"]["retries"])),
        ("ENOSPC jobs hit/stored after/re-fired", lambda i, r: _hits(r["storage_full"])),
        ("resume p99 s", lambda i, r: _fmt(r["resume_p99_s"])),
        ("wall s", lambda i, r: _fmt(r["wall_s"])),
        ("checks", lambda i, r: "PASS" if not r["failures"] else f"FAIL ({len(r['failures'])})"),
    ]
    rows = [[name for name, _ in cols]] + [[f(i, r) for _, f in cols] for i, r in enumerate(reports)]
    widths = [max(len(row[c]) for row in rows) for c in range(len(cols))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for i, r in enumerate(reports):
        lines.append(f"run {i + 1} faults served: {_fmt(r['faults_served'])}")
        lines.append(
            f"run {i + 1} outcomes:      {_fmt(r['outcomes'])} (expected {_fmt(r['expected_outcomes'])})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--restarts", type=int, default=1, help="Redis restarts per run (AOF on)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the first run (the next runs add 1)")
    ap.add_argument("--quick", action="store_true", help="~60 s smoke run (120 jobs, 3 kills, 1 restart)")
    ap.add_argument("--sweeper", choices=("beat", "thread"), default="beat")
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON path (default bench/results/faults[-quick].json)"
    )
    ap.add_argument("--keep", action="store_true", help="keep each run's directory (logs, AOF, videos)")
    ap.add_argument("--status-source", choices=("batch", "get"), default="batch",
                    help="SEEDANCE_STATUS_SOURCE of the workers (default batch, the product's default)")  # fmt: skip
    ap.add_argument("--full-disk", action="store_true",
                    help="fill the first run's download filesystem (ENOSPC) for --full-disk-s mid-run")  # fmt: skip
    ap.add_argument("--full-disk-s", type=float, default=None,
                    help="how long the disk stays full (default 20 s, --quick 8 s)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.full_disk:
        in_own_mount_namespace(sys.argv[1:] if argv is None else argv)
    # A plain `kill` of the bench must still stop its workers, beat, simulator and Redis (the
    # harness cleans up in `finally`, which SIGTERM's default action would skip).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    out = args.out or RESULTS / ("faults-quick.json" if args.quick else "faults.json")
    reports: list[dict[str, Any]] = []
    started = time.time()
    for n in range(args.runs):
        seed = None if args.seed is None else args.seed + n
        cfg = (
            quick_config(seed)
            if args.quick
            else bench_config(args.jobs, args.kills, seed=seed, restarts=args.restarts)
        )
        cfg.sweeper = args.sweeper
        with_status_source(cfg, args.status_source)
        if args.full_disk and n == 0:
            cfg.full_disk_s = args.full_disk_s or (8.0 if args.quick else 20.0)
        workdir = Path(tempfile.mkdtemp(prefix="seedance-faults-"))
        print(
            f"== run {n + 1}/{args.runs}: {cfg.jobs} jobs, {cfg.kills} kills, {cfg.redis_restarts} Redis restarts, "
            f"status {args.status_source}, full disk {cfg.full_disk_s:g} s (dir {workdir})",
            flush=True,
        )
        report = FaultRun(cfg, workdir).run()
        report["workdir"] = str(workdir) if args.keep or report["failures"] else None
        reports.append(report)
        print(summary(report), flush=True)
        if not args.keep and not report["failures"]:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(table(reports))
    passed = all(not r["failures"] for r in reports)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "bench": "faults",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": _cpus()},
        "started_at": started,
        "wall_s": round(time.time() - started, 1),
        "passed": passed,
        "totals": {
            "jobs": sum(r["jobs"] for r in reports),
            "kills": sum(r["kills"] for r in reports),
            "restarts": sum(r["restarts"] for r in reports),
            "worker_crashes": sum(len(r["worker_crashes"]) for r in reports),
            "lost": sum(r["lost"] for r in reports),
            "duplicate_charges": sum(r["duplicate_charges"] for r in reports),
            "duplicate_deliveries": sum(r["duplicate_deliveries"] for r in reports),
            "succeeded_uncharged": sum(r["succeeded_uncharged"] for r in reports),
            "succeeded_unnotified": sum(r["succeeded_unnotified"] for r in reports),
            "retry_after_violations": sum(r["retry_after_violations"] for r in reports),
            "polls_after_end": sum(r["polls_after_end"] for r in reports),
            "storage_full_retries": sum(r["storage_full"]["retries"] for r in reports),
            "in_doubt_resends": sum(r.get("in_doubt_resends", 0) for r in reports),
            "failed_checks": sum(len(r["failures"]) for r in reports),
        },
        "runs": reports,
    }
    out.write_text(json.dumps(doc, indent=1, default=str))
    print(f"\n{'PASS' if passed else 'FAIL'}: {len(reports)} run(s); JSON in {out}")
    return 0 if passed else 1


def _cpus() -> int | None:
    import os

    return os.cpu_count()


if __name__ == "__main__":
    sys.exit(main())
