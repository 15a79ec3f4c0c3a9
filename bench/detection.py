"""Figures 3 and 4: detection delay and GETs per job (plugin schedule vs fixed 5 s), hand-off latency.

Job mix (real seconds): 20% 30-60 s, 60% 60-180 s (a few seconds queued, the rest running), 20%
queued 5-30 min then running 60-180 s.

Part A, the schedule model (virtual time, no compression, 20,000 jobs per arm): the product's own
``seedance_worker.engine.schedule.Schedule.next_countdown`` with decide()'s status-run counting, one poll
at a time; optionally plus the lateness measured in part B. It compares the current defaults, a
fixed 5 s interval (c), and a small grid of candidate settings (the best one that uses <= 1/3 of
(c)'s GETs at a p95 delay <= (c)'s is reported as "tuned").

Part B, the real system, time-compressed by F (all durations and every schedule interval / F):
three arms side by side on one Redis (a DB each) and one simulator process, each with its own
worker (-c 2): plugin defaults, tuned, fixed 5 s. Jobs arrive over a window. Detection delay =
first GET at or after the remote terminal time (simulator log) minus that time, x F back to real
seconds; GETs per job from the same log. Figure 4 (terminal poll -> first downstream task start,
the ``seedance_terminal_at`` header read in task_prerun) is measured in the same run (default
on_succeeded chain: download_video, charge_usage, notify), not scaled.

reproduce with: python bench/detection.py          (quick: --quick)
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
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
from seedance_worker.engine.schedule import Schedule
from seedance_worker.settings import load_settings

# The product's current defaults, read from Settings (the results JSON of a run records them).
_D = Schedule.from_settings(load_settings({}))
DEFAULT = dict(
    first_delay_s=_D.first_delay_s, min_interval_s=_D.min_interval_s, max_interval_s=_D.max_interval_s,
    queued_interval_s=_D.queued_interval_s, running_interval_s=_D.running_interval_s,
    backoff_factor=_D.backoff_factor, running_backoff_factor=_D.running_backoff_factor,
)  # fmt: skip
FIXED5 = dict(
    first_delay_s=5.0, min_interval_s=5.0, max_interval_s=5.0, queued_interval_s=5.0,
    running_interval_s=5.0, backoff_factor=1.0,
)  # fmt: skip
TO_ENV = {
    "first_delay_s": "poll_first_delay_s", "min_interval_s": "poll_min_interval_s",
    "max_interval_s": "poll_max_interval_s", "queued_interval_s": "poll_queued_interval_s",
    "running_interval_s": "poll_running_interval_s", "backoff_factor": "poll_backoff_factor",
    "running_backoff_factor": "poll_running_backoff_factor",
}  # fmt: skip


def job_mix(n: int, rng: random.Random) -> list[tuple[float, float]]:
    """(queued_s, running_s) per job, real seconds."""
    out = []
    for _ in range(n):
        u = rng.random()
        if u < 0.2:
            total = rng.uniform(30, 60)
            q = rng.uniform(0, 5)
        elif u < 0.8:
            total = rng.uniform(60, 180)
            q = rng.uniform(0, 10)
        else:
            q = rng.uniform(300, 1800)
            total = q + rng.uniform(60, 180)
        out.append((q, total - q))
    return out


# --- part A: the schedule model -------------------------------------------------------------------


def model(params: dict, jobs: list[tuple[float, float]], seed: int = 1, lateness: float = 0.0) -> dict:
    sched = Schedule(**params)
    rng = random.Random(seed)
    delays, gets = [], []
    for q, run in jobs:
        end = q + run
        t = sched.first_countdown() + lateness
        n = 0
        status, sp = None, 0
        while True:
            n += 1
            seen = "queued" if t < q else ("running" if t < end else "done")
            if seen == "done":
                delays.append(t - end)
                gets.append(n)
                break
            sp = sp + 1 if seen == status else 1
            status = seen
            t += sched.next_countdown(status=status, polls_in_status=sp, rng=rng) + lateness
    return {
        "p50_s": pct(delays, 50), "p95_s": pct(delays, 95), "p99_s": pct(delays, 99),
        "gets_per_job": sum(gets) / len(gets), "jobs": len(jobs),
    }  # fmt: skip


def grid() -> list[dict]:
    cands = []
    for first in (1.0, 25.0, 28.0):
        for mn in (2.0, 4.0, 4.5):
            for running in (4.0, 5.0):
                for factor in (1.0, 1.5):
                    for queued, mx in ((10.0, 30.0), (30.0, 30.0), (60.0, 60.0), (120.0, 120.0), (180.0, 180.0), (240.0, 240.0)):
                        cands.append(dict(
                            first_delay_s=first, min_interval_s=mn, max_interval_s=mx,
                            queued_interval_s=queued, running_interval_s=running, backoff_factor=factor,
                        ))  # fmt: skip
    return cands


def part_a(n_jobs: int, grid_jobs: int = 2000) -> dict:
    jobs = job_mix(n_jobs, random.Random(7))
    small = jobs[:grid_jobs]
    fixed_small = model(FIXED5, small)
    scored = [(c, model(c, small)) for c in grid()]
    ok_p95 = [x for x in scored if x[1]["p95_s"] <= fixed_small["p95_s"]]
    ok_gets = [x for x in scored if x[1]["gets_per_job"] <= fixed_small["gets_per_job"] / 3]
    tuned = min(ok_p95, key=lambda x: x[1]["gets_per_job"])[0] if ok_p95 else None
    cheap = min(ok_gets, key=lambda x: x[1]["p95_s"])[0] if ok_gets else None
    out = {
        "fixed5": model(FIXED5, jobs), "default": model(DEFAULT, jobs),
        "tuned_params": tuned, "tuned": model(tuned, jobs) if tuned else None,
        "cheap_params": cheap, "cheap": model(cheap, jobs) if cheap else None,
        "grid_size": len(scored), "grid_jobs": grid_jobs,
        "frontier": sorted(
            ({"params": c, **m} for c, m in scored), key=lambda d: d["gets_per_job"]
        )[:0],
    }  # fmt: skip
    # the GETs / p95 Pareto frontier of the grid (for the README)
    front = []
    best_p95 = float("inf")
    for c, m in sorted(scored, key=lambda x: x[1]["gets_per_job"]):
        if m["p95_s"] < best_p95:
            best_p95 = m["p95_s"]
            front.append({"params": c, "gets_ratio": m["gets_per_job"] / fixed_small["gets_per_job"], "p95_s": m["p95_s"]})
    out["frontier"] = front
    return out


# --- part B: the real system, compressed ------------------------------------------------------------


def scaled_env(params: dict, f: float, *, park: bool) -> dict:
    env = {TO_ENV[k]: v / f if not k.endswith("backoff_factor") else v for k, v in params.items()}
    env["poll_countdown_cap_s"] = max(300.0 / f, env["poll_max_interval_s"])
    env["poll_park_after_s"] = 20.0 / f if park else 0
    env["dispatch_interval_s"] = max(0.01, 0.5 / f)
    env["poll_lease_grace_s"] = 30.0
    env["bench_lateness"] = 1
    # This figure is the per-job schedule's GETs against fixed 5 s polling; batched status (the
    # default since) reads by list calls and has its own bench: bench/budget.py.
    env["status_source"] = "get"
    return env


def part_b(arms: dict[str, dict], f: float, n_jobs: int, arrive_s: float, redis_url_base: str,
           timeout_s: float) -> dict:  # fmt: skip
    rng = random.Random(11)
    jobs = job_mix(n_jobs, rng)  # the same jobs (durations) in every arm
    arrivals = sorted(rng.uniform(0, arrive_s) for _ in range(n_jobs))
    results: dict[str, dict] = {}
    with SimProcess() as sim:
        setups = {}
        for i, (name, params) in enumerate(arms.items(), start=1):
            url = f"{redis_url_base[:-2]}/{i}"
            client(url).flushdb()
            park = name != "fixed5"
            env = base_env(url, sim.base_url, **scaled_env(params, f, park=park))
            w = Worker(f"det-{name}", env, concurrency=2)
            setups[name] = (url, env, w)
        start_workers(client(redis_url_base), [s[2] for s in setups.values()])
        drivers = {name: EnvProc(s[1]) for name, s in setups.items()}
        try:
            t0 = time.time() + 3.0
            ids_by_arm: dict[str, list[str]] = {}
            items_by_arm: dict[str, list[tuple[float, str]]] = {}
            for name in arms:
                # the remote task starts when the job arrives: its script is offset by the arrival
                scripts = [
                    [("queued", (t0 - time.time()) + a + q / f), ("running", r / f), ("succeeded", None)]
                    for a, (q, r) in zip(arrivals, jobs, strict=True)
                ]
                ids = sim.add(scripts)
                ids_by_arm[name] = ids
                items_by_arm[name] = [(t0 + a, tid) for a, tid in zip(arrivals, ids, strict=True)]
            ths = [
                threading.Thread(target=drivers[name].call, args=("track_at", items_by_arm[name]))
                for name in arms
            ]
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            all_ids = [tid for ids in ids_by_arm.values() for tid in ids]

            def done() -> bool:
                term = sim.call("terminal", all_ids)
                return all(v is not None for v in term.values())

            wait_until(done, timeout_s, 1.0)
            time.sleep(max(2.0, 10.0 / f * 3))  # the last terminal polls and their hand-offs
            term = sim.call("terminal", all_ids)
            gets = sim.call("gets")
        finally:
            for d in drivers.values():
                d.close()
            for _, _, w in setups.values():
                w.stop()
    by_task: dict[str, list[float]] = {}
    for ts, tid, status in gets:
        if status == 200 and tid:
            by_task.setdefault(tid, []).append(ts)
    for name in arms:
        delays, counts, missed = [], [], 0
        for tid in ids_by_arm[name]:
            ta = term.get(tid)
            ts_list = sorted(by_task.get(tid, []))
            after = [t for t in ts_list if ta is not None and t >= ta]
            if ta is None or not after:
                missed += 1
                continue
            delays.append((after[0] - ta) * f)
            counts.append(len([t for t in ts_list if t <= after[0]]))
        url = setups[name][0]
        hand = [x for _, x in timed_floats(client(url), "bench:handoff")]
        late = [x for _, x in timed_floats(client(url), "bench:lateness")]
        results[name] = {
            "jobs": n_jobs, "detected": len(delays), "missed": missed,
            "p50_s": pct(delays, 50), "p95_s": pct(delays, 95), "p99_s": pct(delays, 99),
            "gets_per_job": sum(counts) / max(1, len(counts)),
            "handoff_n": len(hand), "handoff_p50_ms": 1000 * pct(hand, 50), "handoff_p95_ms": 1000 * pct(hand, 95),
            "handoff_p99_ms": 1000 * pct(hand, 99), "handoff_max_ms": 1000 * max(hand, default=float("nan")),
            "poll_lateness_p50_ms": 1000 * pct(late, 50), "poll_lateness_p99_ms": 1000 * pct(late, 99),
        }  # fmt: skip
    return results


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--factor", type=float, default=10.0, help="time compression of part B")
    ap.add_argument("--jobs", type=int, default=30, help="jobs per arm in part B")
    ap.add_argument("--arrive-s", type=float, default=60.0, help="arrival window (compressed seconds)")
    ap.add_argument("--model-jobs", type=int, default=20000)
    a = ap.parse_args()
    if a.quick:
        a.factor, a.jobs, a.model_jobs, a.arrive_s = 100.0, 6, 300, 2.0
    t_start = time.time()
    A = part_a(a.model_jobs, grid_jobs=min(2000, a.model_jobs))
    rows = []
    for name in ("fixed5", "default", "tuned", "cheap"):
        m = A[name]
        if m is None:
            continue
        rows.append({"arm": name, "p50 s": m["p50_s"], "p95 s": m["p95_s"], "p99 s": m["p99_s"],
                     "GETs/job": m["gets_per_job"],
                     "GETs vs fixed": m["gets_per_job"] / A["fixed5"]["gets_per_job"]})  # fmt: skip
    print(table(rows, list(rows[0]), f"\nFigure 3A: schedule model, {a.model_jobs} jobs (real seconds, no lateness)"))
    print("tuned (fewest GETs at p95 <= fixed):", A["tuned_params"])
    print("cheap (best p95 at <= 1/3 of fixed's GETs):", A["cheap_params"])
    print("frontier (GETs vs fixed, p95 s):", [(round(x["gets_ratio"], 2), round(x["p95_s"], 1)) for x in A["frontier"]])
    arms = {"default": DEFAULT, "tuned": A["tuned_params"] or DEFAULT, "fixed5": FIXED5}
    B = part_b(arms, a.factor, a.jobs, a.arrive_s, client_url(), timeout_s=(1800 + 180) / a.factor + a.arrive_s + 60)
    # the model again with the lateness measured in the real run (scaled back), for comparison
    lat_real = max(0.0, B["default"]["poll_lateness_p50_ms"] / 1000 * a.factor) if B["default"]["poll_lateness_p50_ms"] == B["default"]["poll_lateness_p50_ms"] else 0.0
    brows = []
    for name, m in B.items():
        brows.append({
            "arm": name, "detected": f"{m['detected']}/{m['jobs']}", "p50 s": m["p50_s"], "p95 s": m["p95_s"],
            "GETs/job": m["gets_per_job"], "GETs vs fixed": m["gets_per_job"] / B["fixed5"]["gets_per_job"],
            "poll late p50 ms": m["poll_lateness_p50_ms"],
            "handoff p50 ms": m["handoff_p50_ms"], "p95 ms": m["handoff_p95_ms"], "p99 ms": m["handoff_p99_ms"],
        })  # fmt: skip
    print(table(brows, list(brows[0]), f"\nFigure 3B/4: real workers, time / {a.factor:g} (delays x {a.factor:g} = real s; hand-off not scaled)"))
    t = A["tuned"] or {}
    verdict = {
        "tuned_gets_ratio_model": (t.get("gets_per_job", float("nan")) / A["fixed5"]["gets_per_job"]),
        "default_gets_ratio_model": A["default"]["gets_per_job"] / A["fixed5"]["gets_per_job"],
        "default_p95_vs_fixed_model": A["default"]["p95_s"] - A["fixed5"]["p95_s"],
    }
    print("verdict:", verdict)
    path = write_json(
        "detection_quick.json" if a.quick else "detection.json",
        {"quick": a.quick, "factor": a.factor, "model": A, "real": B, "verdict": verdict,
         "model_lateness_scaled_s": lat_real, "runtime_s": time.time() - t_start},
    )  # fmt: skip
    print(f"\nwrote {path}  ({time.time() - t_start:.0f} s)")
    return 0


_REDIS = None


def client_url() -> str:
    assert _REDIS is not None
    return _REDIS.url


if __name__ == "__main__":
    with start_redis() as _r:
        _REDIS = _r
        sys.exit(main())
