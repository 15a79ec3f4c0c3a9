"""Figure 4 at nominal load: terminal poll -> first downstream task start (p50/p95/p99).

One worker (-c 2, default settings except polls every U(2, 3) s so the run is short), simulator
answering at once; N=60 jobs whose remote tasks end spread over W=40 s (about 10-15 polls/s:
nominal, well below what the worker sustains). The first downstream task of each hand-off carries the Celery header
``seedance_terminal_at`` (the poll's time after its terminal GET); a task_prerun hook records
``start - seedance_terminal_at``. Two chains: the default on_succeeded
(download_video, charge_usage, notify) and a single no-op task. (detection.py measures the same
under the heavier, time-compressed detection load.)

Both status sources, on a fresh worker each: per-job GETs (SEEDANCE_STATUS_SOURCE=get, the poll
intervals above) and batched status (=batch, the default: running jobs read in 2 s rounds, and the
job that ended gets its own poll message carrying the list call's snapshot; the hand-off measured is
that poll's end to the first downstream start, the same stage as with a GET). Poll lateness
(task_prerun start - options.due) counts every poll message, which in batch mode are only the
terminal ones.

reproduce with: python bench/handoff.py          (quick: --quick)
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    EnvProc,
    SimProcess,
    Worker,
    base_env,
    client,
    pct,
    start_redis,
    start_workers,
    table,
    timed_floats,
    wait_until,
    write_json,
)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--window", type=float, default=40.0)
    a = ap.parse_args()
    if a.quick:
        a.jobs, a.window = 20, 4.0
    t_start = time.time()
    out = {}
    with start_redis() as red, SimProcess() as sim:
        r = client(red.url)
        plan = [(src, c) for src in ("get", "batch") for c in (("default chain", None), ("noop", ["bench.noop"]))]
        for source, (chain_label, chain) in plan:
            chain_name = f"{chain_label} ({source})"
            r.flushdb()
            env = base_env(red.url, sim.base_url, poll_running_interval_s=3, poll_min_interval_s=2,
                           poll_max_interval_s=3, poll_first_delay_s=0.5, bench_lateness=1,
                           status_source=source)  # fmt: skip
            w = Worker("handoff", env, concurrency=2)
            start_workers(r, [w])
            drv = EnvProc(env)
            try:
                rng = random.Random(3)
                ends = [2.0 + rng.uniform(0, a.window) for _ in range(a.jobs)]
                ids = sim.add([[("running", e), ("succeeded", None)] for e in ends])
                drv.call("track_batch", ids, chain, None)
                wait_until(lambda: r.llen("bench:handoff") >= a.jobs, a.window + 60, 0.5)
                time.sleep(1.0)
                hand = [x for _, x in timed_floats(r, "bench:handoff")]
                late = [x for _, x in timed_floats(r, "bench:lateness")]
            finally:
                drv.close()
                w.stop()
            out[chain_name] = {
                "n": len(hand), "p50_ms": 1000 * pct(hand, 50), "p95_ms": 1000 * pct(hand, 95),
                "p99_ms": 1000 * pct(hand, 99), "max_ms": 1000 * max(hand, default=float("nan")),
                "poll_lateness_p50_ms": 1000 * pct(late, 50), "poll_lateness_p99_ms": 1000 * pct(late, 99),
            }  # fmt: skip
    rows = [{"chain": k, **v, "goal p50<=10ms, p99<=250ms": "met" if v["p50_ms"] <= 10 and v["p99_ms"] <= 250 else "MISSED"}
            for k, v in out.items()]  # fmt: skip
    print(table(rows, list(rows[0]), "\nFigure 4: terminal poll -> first downstream start (nominal load)"))
    path = write_json("handoff_quick.json" if a.quick else "handoff.json",
                      {"quick": a.quick, "jobs": a.jobs, "window_s": a.window, "results": out,
                       "runtime_s": time.time() - t_start})  # fmt: skip
    print(f"\nwrote {path}  ({time.time() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
