"""Issue 13, benchmark 2: 10,000 jobs in flight on one worker of 2 pool processes (``-c 2``),
batched status (``SEEDANCE_STATUS_SOURCE=batch``) against per-job GETs (``=get``), side by side.

Per mode, on a fresh Redis database and a fresh worker, the same plan:

1. N remote tasks in the simulator (its own process), ``running`` for longer than the run, except
   a sample of S (200) that succeed at times spread from mid warm-up to the end of the window;
2. all N tracked (``track_many``, as a user would; the downstream chain is ``bench.noop``, set by
   SEEDANCE_ON_SUCCEEDED / _ON_FAILED so no record stores a chain of its own), then a warm-up;
3. at the end of the warm-up: Redis ``used_memory`` against the empty database (everything: job
   state, the result backend's ``POLLING`` progress keys, the broker's queues), and by ``MEMORY
   USAGE`` what a job in flight costs (its hash and its share of the index it sits in) and what
   the progress keys cost;
4. over the window: requests per second the simulator answered (GETs and list calls), worker CPU
   (main process and pool children, user + system) per job-poll (reads: the sum of every record's
   ``polls``, which counts a job read by a list call like one read by its own GET), worker RSS
   (main + children) every 2 s;
5. detection delay of the sample: the job record's ``terminal_at`` (the poll that ended the job)
   minus the simulator's terminal time; a job not detected by the end counts with its lower bound.

Schedules are the product's defaults; the one change is ``SEEDANCE_BATCH_LIST_RPS=0`` (no cap on
list calls: the default 5/s serves 500 jobs per second, not 10,000 every 2 s round). The machine
has 2 cores shared with other work: read the ratios between the modes, measured in the same run.

reproduce with: python bench/inflight10k.py        (quick: --quick, under 90 s; --jobs N)
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

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
    total_polls,
    used_memory,
    wait_until,
    write_json,
)
from seedance_worker import keys

MODES = ("batch", "get")
GOALS = {"cpu_ratio": 1 / 20, "redis_b_per_job": 450, "p95_detection_s": 3.0, "rss_growth": 0.10}


class RssSeries(threading.Thread):
    """RSS of the worker's main process and the sum of its pool children, every ``step_s``."""

    def __init__(self, worker: Worker, step_s: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.worker, self.step_s = worker, step_s
        self.points: list[tuple[float, float, float]] = []
        self.stop_ev = threading.Event()

    def run(self) -> None:
        while True:
            rss = self.worker.rss()
            self.points.append((time.time(), rss["main_mb"], sum(rss["children_mb"])))
            if self.stop_ev.wait(self.step_s):
                return

    def summary(self) -> dict[str, float]:
        total = [m + c for _, m, c in self.points]
        return {"start_mb": total[0], "end_mb": total[-1], "max_mb": max(total),
                "main_end_mb": self.points[-1][1], "children_end_mb": self.points[-1][2],
                "growth": (total[-1] - total[0]) / total[0]}  # fmt: skip


def redis_costs(r: Any, inflight: list[str], n: int, mem_empty: int, one: str) -> dict[str, Any]:
    """What the jobs cost: used_memory against the empty database (everything, over all n jobs), and
    by MEMORY USAGE what a job in flight costs (its hash and its share of the index it sits in) and
    the result backend's POLLING progress keys."""
    pipe = r.pipeline(transaction=False)
    for tid in inflight:
        pipe.memory_usage(keys.job(tid), samples=0)
    hashes = sum(int(v or 0) for v in pipe.execute())
    pipe = r.pipeline(transaction=True)  # one moment: a round moves jobs between due and parked
    for key in (keys.DUE, keys.PARKED, keys.JOBS):
        pipe.memory_usage(key, samples=0)
        pipe.zcard(key)
    sizes = [int(v or 0) for v in pipe.execute()]
    index_bytes, index_entries = sum(sizes[::2]), sum(sizes[1::2])
    meta = list(r.scan_iter("celery-task-meta-*", count=5000))
    pipe = r.pipeline(transaction=False)
    for k in meta:
        pipe.memory_usage(k, samples=0)
    meta_bytes = sum(int(v or 0) for v in pipe.execute())
    entry = index_bytes / index_entries if index_entries else 0.0
    return {
        "used_memory_delta_per_job": (used_memory(r) - mem_empty) / n,
        "job_state_per_job": hashes / len(inflight) + entry,
        "index_entries_per_job": index_entries / n,
        "progress_keys": len(meta), "progress_per_job": meta_bytes / n,
        "one_job": {"hash": int(r.memory_usage(keys.job(one), samples=0) or 0), "index_entry": entry,
                    "fields": sorted(r.hgetall(keys.job(one)))},
    }  # fmt: skip


def one_read_job(r: Any, ids: list[str]) -> str:
    """A job in flight (not of the sample) that has been read at least once, if any has."""
    for tid in ids[:2000]:
        if r.hexists(keys.job(tid), "polls"):
            return tid
    return ids[0]


def detection(r: Any, sim: SimProcess, sample: list[str], until: float) -> dict[str, Any]:
    """Record terminal_at minus the simulator's terminal time, for the sample (misses: lower bounds)."""
    ended = sim.call("terminal", sample)
    pipe = r.pipeline(transaction=False)
    for tid in sample:
        pipe.hget(keys.job(tid), "terminal_at")
    seen = dict(zip(sample, pipe.execute(), strict=True))
    delays, missed = [], 0
    for tid in sample:
        if ended.get(tid) is None:
            continue
        if seen[tid]:
            delays.append(float(seen[tid]) - ended[tid])
        else:
            missed += 1
            delays.append(until - ended[tid])  # not detected yet: at least this late
    return {"ended": len(delays), "missed": missed, "p50_s": pct(delays, 50), "p95_s": pct(delays, 95),
            "max_s": max(delays, default=float("nan"))}  # fmt: skip


def run_mode(mode: str, a: argparse.Namespace, sim: SimProcess, redis_url: str) -> dict[str, Any]:
    r = client(redis_url)
    r.flushall()
    env = base_env(redis_url, sim.base_url, status_source=mode, batch_list_rps=0, batch_size=a.batch_size,
                   on_succeeded="bench.noop", on_failed="bench.noop")  # fmt: skip
    worker = Worker(f"if10k-{mode}", env, concurrency=2)
    start_workers(r, [worker])
    driver = EnvProc(env)
    try:
        time.sleep(1.0)
        mem_empty = used_memory(r)
        n, s = a.jobs, a.sample
        lead = a.track_s + a.warmup_s
        # The sample ends from mid warm-up (so the pool children have run end polls and hand-offs
        # before RSS is measured) to the end of the window.
        span = a.warmup_s / 2 + a.window_s * 0.95
        ends = [lead - a.warmup_s / 2 + span * random.random() for _ in range(s)]
        ids = sim.add_n([("running", None)], n - s) + sim.add(
            [[("running", e), ("succeeded", None)] for e in ends]
        )
        sample, background = ids[n - s :], ids[: n - s]
        t0 = time.time()
        random.shuffle(ids)
        driver.call("track_batch", ids)
        track_s = time.time() - t0
        time.sleep(max(0.0, t0 + lead - time.time()))
        costs = redis_costs(r, background, n, mem_empty, one_read_job(r, background))
        rss = RssSeries(worker)
        rss.start()
        w0, cpu0, polls0 = time.time(), worker.cpu_s(), total_polls(r, ids)
        time.sleep(a.window_s)
        w1, cpu1, polls1 = time.time(), worker.cpu_s(), total_polls(r, ids)
        rss.stop_ev.set()
        rss.join()
        req = sim.call("since", w0)
        wait_until(lambda: all(r.hget(keys.job(t), "terminal_at") for t in sample), a.detect_wait_s, 0.5)
        det = detection(r, sim, sample, time.time())
    finally:
        driver.close()
        worker.kill()
    secs, reads = w1 - w0, polls1 - polls0
    row = {
        "mode": mode, "jobs": n, "sample": s, "track_s": track_s, "window_s": secs,
        "requests_per_s": (req["get"] + req["list"]) / secs, "gets_per_s": req["get"] / secs,
        "list_calls_per_s": req["list"] / secs, "ids_per_list_call": req["list_ids"] / max(req["list"], 1),
        "job_reads": reads, "job_reads_per_s": reads / secs,
        "worker_cpu_s": cpu1 - cpu0, "cpu_ms_per_job_poll": (cpu1 - cpu0) * 1000 / max(reads, 1),
        "rss": rss.summary(), "rss_points": rss.points, "redis": costs, "detection": det,
    }  # fmt: skip
    print(f"  {mode:5s} track {track_s:4.1f}s  {row['requests_per_s']:6.1f} req/s  {row['job_reads_per_s']:7.1f} "
          f"reads/s  {row['cpu_ms_per_job_poll']:7.3f} ms CPU/read  RSS {row['rss']['start_mb']:.0f}->"
          f"{row['rss']['end_mb']:.0f} MB  job state {costs['job_state_per_job']:.0f} B/job  detection p95 "
          f"{det['p95_s']:.2f} s ({det['missed']} missed)", flush=True)  # fmt: skip
    return row


def verdicts(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    b, g = rows["batch"], rows["get"]
    ratio = b["cpu_ms_per_job_poll"] / g["cpu_ms_per_job_poll"]
    return {
        "cpu_ratio_batch_over_get": ratio, "cpu_ok": ratio <= GOALS["cpu_ratio"],
        "rss_ok": b["rss"]["growth"] <= GOALS["rss_growth"],
        "redis_ok": b["redis"]["job_state_per_job"] <= GOALS["redis_b_per_job"],
        "p95_ok": b["detection"]["p95_s"] <= GOALS["p95_detection_s"] and not b["detection"]["missed"],
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="600 jobs, short windows: proves it runs (< 90 s)")
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=100, help="SEEDANCE_BATCH_SIZE")
    a = ap.parse_args()
    if a.quick:
        a.jobs, a.sample, a.track_s, a.warmup_s, a.window_s, a.detect_wait_s = 600, 30, 2.0, 5.0, 12.0, 5.0
    else:
        a.sample, a.track_s, a.warmup_s, a.window_s, a.detect_wait_s = 200, 5.0, 25.0, 60.0, 20.0
    t0 = time.time()
    rows: dict[str, dict[str, Any]] = {}
    with start_redis() as red, SimProcess() as sim:
        for mode in MODES:
            rows[mode] = run_mode(mode, a, sim, red.url)
    v = verdicts(rows)
    trows = [{
        "mode": m, "req/s to API": x["requests_per_s"], "GET/s": x["gets_per_s"], "list/s": x["list_calls_per_s"],
        "job reads/s": x["job_reads_per_s"], "CPU ms per job-poll": x["cpu_ms_per_job_poll"],
        "RSS MB start/end/max": f"{x['rss']['start_mb']:.0f}/{x['rss']['end_mb']:.0f}/{x['rss']['max_mb']:.0f}",
        "Redis B/job (used_memory)": x["redis"]["used_memory_delta_per_job"],
        "job state B/job": x["redis"]["job_state_per_job"], "of it one hash + entry":
            f"{x['redis']['one_job']['hash']} + {x['redis']['one_job']['index_entry']:.0f}",
        "progress B/job": x["redis"]["progress_per_job"],
        "detect p50/p95 s": f"{x['detection']['p50_s']:.2f}/{x['detection']['p95_s']:.2f}",
        "missed": f"{x['detection']['missed']}/{x['detection']['ended']}",
    } for m, x in rows.items()]  # fmt: skip
    print(table(trows, list(trows[0]), f"\n{a.jobs:,} jobs in flight, 1 worker -c 2, batched vs per-job"))
    print(f"\nCPU per job-poll, batch / get: {v['cpu_ratio_batch_over_get']:.4f} (goal <= {GOALS['cpu_ratio']:.3f}: "
          f"{'ok' if v['cpu_ok'] else 'MISSED'}); RSS growth in batch {rows['batch']['rss']['growth']:+.1%} "
          f"({'ok' if v['rss_ok'] else 'MISSED'}); job state {rows['batch']['redis']['job_state_per_job']:.0f} B/job "
          f"(goal <= 450: {'ok' if v['redis_ok'] else 'MISSED'}); detection p95 "
          f"{rows['batch']['detection']['p95_s']:.2f} s (goal <= 3: {'ok' if v['p95_ok'] else 'MISSED'})")  # fmt: skip
    path = write_json("inflight10k_quick.json" if a.quick else "inflight10k.json", {
        "quick": a.quick, "jobs": a.jobs, "sample": a.sample, "batch_size": a.batch_size,
        "warmup_s": a.warmup_s, "window_s": a.window_s, "goals": GOALS, "verdicts": v, "runs": rows,
    })  # fmt: skip
    print(f"\nwrote {path}  (total {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
