"""Figure 1: poll throughput of real prefork workers, against Celery's own ceiling, in one run.

Arms, interleaved and repeated on the SAME worker (same broker, same settings, same queue):
  a       bench.noop_resched: no-op self-reschedule via signature_from_request + Ignore (Celery's ceiling)
  a_get   bench.get_resched: the same plus one plain requests GET of the simulator (cheapest poller)
  plugin  seedance.poll with every interval at 1 ms (SEEDANCE_POLL_MIN/MAX/QUEUED/RUNNING_INTERVAL_S
          =0.001, FIRST_DELAY 0) and per-job GETs (SEEDANCE_STATUS_SOURCE=get): the full poll path
          (fence, GET, decide, advance, re-publish)
Two configurations: simulator answering at once (worker -c 2 = the 2 cores) and with 50 ms latency
(-c 16, so that neither arm is bound by slots). Counted by a task_prerun INCR (same cost for all).

Batched status (SEEDANCE_STATUS_SOURCE=batch, the default) publishes no poll message while a job is
in flight, so it has its own arm, on a second worker of the same concurrency started after the
three above, same Redis and simulator, in the same run:
  batch   N running jobs tracked at once, rounds every 0.2 s (SEEDANCE_BATCH_ROUND_S and
          _QUEUED_INTERVAL_S at their minimum, SEEDANCE_BATCH_LIST_RPS=0): more job reads due than
          the worker can serve, so reads per second is its ceiling. A read is one job's status
          taken from a list call and advanced in Redis, counted by the records' ``polls``.

reproduce with: python bench/throughput.py            (quick: --quick)
"""

from __future__ import annotations

import argparse
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
    spread,
    start_redis,
    start_workers,
    table,
    total_polls,
    wait_until,
    write_json,
)

ARMS = ("a", "a_get", "plugin")
TASK = {"a": "bench.noop_resched", "a_get": "bench.get_resched", "plugin": "seedance.poll"}
CD = 0.001
ROUND_S = 0.2  # the settings' minimum for SEEDANCE_BATCH_ROUND_S


def run_batch(redis_url: str, sim: SimProcess, name: str, conc: int, n: int, reps: int, warm: float,
              measure: float) -> list[dict]:
    """The batched arm: n running jobs on a worker of its own, reads per second over each window."""
    r = client(redis_url)
    r.flushall()
    env = base_env(redis_url, sim.base_url, status_source="batch", batch_round_s=ROUND_S,
                   batch_queued_interval_s=ROUND_S, batch_list_rps=0)  # fmt: skip
    w = Worker(f"tp-{name}-batch", env, concurrency=conc)
    start_workers(r, [w])
    out = []
    try:
        ids = sim.add_n([("running", None)], n)
        with EnvProc(env) as drv:
            drv.call("track_batch", ids, ["bench.noop"], ["bench.noop"])
        time.sleep(warm)
        for rep in range(reps):
            p0, cpu0, t0 = total_polls(r, ids), w.cpu_s(), time.time()
            time.sleep(measure)
            p1, cpu1, t1 = total_polls(r, ids), w.cpu_s(), time.time()
            res = {"arm": "batch", "rep": rep, "jobs": n, "runs_per_s": (p1 - p0) / (t1 - t0),
                   "worker_cpu_ms_per_run": 1000 * (cpu1 - cpu0) / max(1, p1 - p0), "window_ok": True}  # fmt: skip
            out.append(res)
            print(f"  {name} rep{rep} batch   {res['runs_per_s']:8.1f}/s  "
                  f"cpu {res['worker_cpu_ms_per_run']:.3f} ms/read ({n} jobs)", flush=True)
    finally:
        w.kill()
    return out


def run_arm(arm: str, *, drv: EnvProc, sim: SimProcess, r, worker: Worker, k: int, warm: float, measure: float) -> dict:
    r.delete(*[f"bench:runs:{t}" for t in TASK.values()])
    until = time.time() + 1.0 + warm + measure + 0.5
    if arm == "a":
        drv.call("start_noop", k, until, CD)
    elif arm == "a_get":
        ids = sim.add_n([("queued", None)], k)
        drv.call("start_get", ids, sim.base_url, until, CD)
    else:
        ids = sim.add_n([("queued", until - time.time()), ("succeeded", None)], k)
        drv.call("track_batch", ids, ["bench.noop"], ["bench.noop"])
    time.sleep(warm)
    key = f"bench:runs:{TASK[arm]}"
    c0, cpu0, t0 = int(r.get(key) or 0), worker.cpu_s(), time.time()
    time.sleep(measure)
    c1, cpu1, t1 = int(r.get(key) or 0), worker.cpu_s(), time.time()
    ok = t1 < until
    # let the chains end (they stop at `until`) and the queue drain before the next arm
    time.sleep(max(0.0, until - time.time()))
    wait_until(lambda: r.llen("seedance.poll") == 0 and r.hlen("unacked") == 0, 60, 0.2)
    rate = (c1 - c0) / (t1 - t0)
    return {
        "arm": arm,
        "runs_per_s": rate,
        "worker_cpu_ms_per_run": 1000 * (cpu1 - cpu0) / max(1, c1 - c0),
        "window_ok": ok,
    }


def run_config(
    name: str, latency: float, conc: int, k: int, reps: int, warm: float, measure: float, redis_url: str,
    warmup: bool = True, batch_jobs: int = 5000,
) -> dict:
    r = client(redis_url)
    r.flushall()
    with SimProcess(latency_s=latency) as sim:
        env = base_env(
            redis_url,
            sim.base_url,
            poll_first_delay_s=0,
            poll_min_interval_s=CD,
            poll_max_interval_s=CD,
            poll_queued_interval_s=CD,
            poll_running_interval_s=CD,
            poll_backoff_factor=1,
            status_source="get",
        )
        w = Worker(f"tp-{name}", env, concurrency=conc)
        start_workers(r, [w])
        drv = EnvProc(env)
        try:
            # warm-up (not counted): the first runs in fresh pool children import lazily
            for arm in ARMS if warmup else ():
                run_arm(arm, drv=drv, sim=sim, r=r, worker=w, k=k, warm=0.5, measure=0.5)
            runs = []
            for rep in range(reps):
                order = ARMS if rep % 2 == 0 else tuple(reversed(ARMS))
                for arm in order:
                    res = run_arm(arm, drv=drv, sim=sim, r=r, worker=w, k=k, warm=warm, measure=measure)
                    res["rep"] = rep
                    runs.append(res)
                    print(f"  {name} rep{rep} {arm:7s} {res['runs_per_s']:8.1f}/s  "
                          f"cpu {res['worker_cpu_ms_per_run']:.2f} ms/run", flush=True)
        finally:
            drv.close()
            w.stop()
        # the batch arm warms longer: first reads are spread over the first poll delay and its jitter
        batch_runs = run_batch(redis_url, sim, name, conc, batch_jobs, reps, warm + 5.0, measure)
    summary = {}
    for arm in ARMS:
        rates = [x["runs_per_s"] for x in runs if x["arm"] == arm]
        cpus = [x["worker_cpu_ms_per_run"] for x in runs if x["arm"] == arm]
        summary[arm] = {"rate": spread(rates), "cpu_ms": spread(cpus)}
    # ratio per repetition (arms of one repetition ran back to back), then its median and spread
    ratios_a = []
    ratios_g = []
    cpu_a = []
    cpu_g = []
    for rep in range(reps):
        by = {x["arm"]: x["runs_per_s"] for x in runs if x["rep"] == rep}
        cpu = {x["arm"]: x["worker_cpu_ms_per_run"] for x in runs if x["rep"] == rep}
        ratios_a.append(by["plugin"] / by["a"])
        ratios_g.append(by["plugin"] / by["a_get"])
        # CPU-normalised: runs per worker-CPU-second, plugin / baseline (robust to a shared machine)
        cpu_a.append(cpu["a"] / cpu["plugin"])
        cpu_g.append(cpu["a_get"] / cpu["plugin"])
    return {
        "config": name, "latency_s": latency, "concurrency": conc, "chains": k, "runs": runs,
        "summary": summary, "ratio_vs_a": spread(ratios_a), "ratio_vs_a_get": spread(ratios_g),
        "cpu_ratio_vs_a": spread(cpu_a), "cpu_ratio_vs_a_get": spread(cpu_g),
        "batch_runs": batch_runs,
        "batch": {"jobs": batch_jobs, "round_s": ROUND_S,
                  "reads_per_s": spread([x["runs_per_s"] for x in batch_runs]),
                  "cpu_ms_per_read": spread([x["worker_cpu_ms_per_run"] for x in batch_runs])},
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--measure", type=float, default=10.0)
    ap.add_argument("--warm", type=float, default=3.0)
    ap.add_argument("--batch-jobs", type=int, default=5000, help="jobs in flight in the batch arm")
    a = ap.parse_args()
    if a.quick:
        a.reps, a.measure, a.warm = 1, 2.0, 1.0
    configs = [("lat0", 0.0, 2, 40), ("lat50", 0.05, 16, 160)]
    if a.quick:
        configs = configs[:1]
    batch_jobs = 1000 if a.quick else a.batch_jobs
    out = []
    with start_redis() as red:
        for name, lat, conc, k in configs:
            out.append(run_config(name, lat, conc, k, a.reps, a.warm, a.measure, red.url, warmup=not a.quick,
                                  batch_jobs=batch_jobs))  # fmt: skip
    rows = []
    for c in out:
        for arm in ARMS:
            s = c["summary"][arm]
            rows.append({
                "config": f"{c['config']} (-c {c['concurrency']})", "arm": arm,
                "runs/s median": s["rate"]["median"], "min": s["rate"]["min"], "max": s["rate"]["max"],
                "runs/s per pool proc": s["rate"]["median"] / c["concurrency"],
                "worker CPU ms/run": s["cpu_ms"]["median"],
            })  # fmt: skip
        b = c["batch"]
        rows.append({
            "config": f"{c['config']} (-c {c['concurrency']})", "arm": f"batch ({b['jobs']} jobs)",
            "runs/s median": b["reads_per_s"]["median"], "min": b["reads_per_s"]["min"],
            "max": b["reads_per_s"]["max"], "runs/s per pool proc": b["reads_per_s"]["median"] / c["concurrency"],
            "worker CPU ms/run": b["cpu_ms_per_read"]["median"],
        })  # fmt: skip
    print(table(rows, list(rows[0]), "\nFigure 1: throughput (median of repetitions; min/max = noise; "
                "batch: job reads per second)"))
    brows = [
        {
            "config": c["config"],
            "batch reads/s / plugin polls/s": c["batch"]["reads_per_s"]["median"] / c["summary"]["plugin"]["rate"]["median"],
            "plugin CPU / batch CPU per job-poll": c["summary"]["plugin"]["cpu_ms"]["median"] / c["batch"]["cpu_ms_per_read"]["median"],
        }
        for c in out
    ]  # fmt: skip
    print(table(brows, list(brows[0]), "\nBatched status against per-job polls (same run)"))
    rrows = [
        {
            "config": c["config"],
            "plugin / a": c["ratio_vs_a"]["median"],
            "min": c["ratio_vs_a"]["min"],
            "max": c["ratio_vs_a"]["max"],
            "plugin / a_get": c["ratio_vs_a_get"]["median"],
            "min ": c["ratio_vs_a_get"]["min"],
            "max ": c["ratio_vs_a_get"]["max"],
            "per-CPU plugin / a": c["cpu_ratio_vs_a"]["median"],
            "per-CPU plugin / a_get": c["cpu_ratio_vs_a_get"]["median"],
            "goal >= 0.8 vs a": "met" if c["ratio_vs_a"]["median"] >= 0.8 else "MISSED",
        }
        for c in out
    ]
    print(table(rrows, list(rrows[0]), "\nRatios per repetition"))
    path = write_json("throughput_quick.json" if a.quick else "throughput.json", {"quick": a.quick, "configs": out})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
