"""Figure 2: in-flight capacity: 1k / 10k / 100k tracked jobs with long intervals, parking OFF vs ON.

Per (jobs, mode) with a fresh Redis DB and 2 fresh workers (-c 1 each), remote tasks that stay
``queued`` for the whole run, and the schedule at a fixed long interval (SEEDANCE_POLL_MIN = MAX =
QUEUED = RUNNING_INTERVAL_S = COUNTDOWN_CAP_S = 1800 s, VISIBILITY_TIMEOUT_S 7200):

1. background: N - M jobs are put in the state a first poll leaves them in (store.register +
   store.advance via the product's JobStore, i.e. exactly what track() + one poll write), next poll
   due 1000-1800 s later (beyond the run): parking ON -> parked in ``seedance:parked``; parking OFF ->
   one countdown poll message each (publish_poll, what poll._again sends), which a worker pulls and
   holds unacked in memory;
2. probes: M = min(N, 600) more jobs, due spread over the next M / 15 s (15 polls/s, well inside
   what 2 workers sustain on this machine), whose polls
   measure lateness (actual start - options.due, task_prerun hook) while all N are in flight;
3. measured: worker RSS (main + child, psutil), Redis used_memory per job (minus the empty DB),
   unacked messages (HLEN unacked) and per-worker prefetch_count (inspect stats: 1 + held ETA
   messages), lateness p50/p99, then warm shutdown time (SIGTERM -> exit) of both workers.
Seeding skips only the first GET of each job (100k first polls would take ~10 min on 2 busy cores).

Modes: parking OFF and ON poll with one GET per job (SEEDANCE_STATUS_SOURCE=get), as they were
measured for Figure 2. A third, ``batch`` (SEEDANCE_STATUS_SOURCE=batch, the default, and
SEEDANCE_BATCH_QUEUED_INTERVAL_S at its 600 s maximum), seeds the jobs parked as with parking ON;
the workers' rounds read the due ones with list calls and send no poll message while a job is in
flight, so a probe's lateness is when the bench, scanning the probes' records every 0.1 s, sees its
``polls`` count go up, minus its due time (rounds tick every 2 s: up to ~2 s of lateness is the
round grid, not a backlog).

reproduce with: python bench/inflight.py        (quick: --quick; sizes: --sizes 1000,10000,100000;
                 parking OFF at 100k too: --before-max 100000 --budget-s 1500, ~20 min)
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
    timed_floats,
    used_memory,
    wait_until,
    write_json,
)
from seedance_worker import keys

INTERVAL = 1800.0
PROBE_RATE = 15.0


MODES = {"on": "after (park ON)", "off": "before (park OFF)", "batch": "batch"}


def settings_for(mode: str) -> dict:
    batch = {"status_source": "batch", "batch_queued_interval_s": 600} if mode == "batch" else {"status_source": "get"}
    return dict(
        poll_min_interval_s=INTERVAL, poll_max_interval_s=INTERVAL, poll_queued_interval_s=INTERVAL,
        poll_running_interval_s=INTERVAL, poll_countdown_cap_s=INTERVAL, poll_backoff_factor=1,
        visibility_timeout_s=int(INTERVAL * 4), poll_park_after_s=0 if mode == "off" else 20,
        bench_lateness=1, **batch,
    )  # fmt: skip


class ReadWatch(threading.Thread):
    """Batch mode: the time each probe's record shows a read beyond the seeded one, minus its due."""

    def __init__(self, r: Any, due: dict[str, float]) -> None:
        super().__init__(daemon=True)
        self.r, self.due = r, due
        self.late: dict[str, float] = {}
        self.stop_ev = threading.Event()

    def run(self) -> None:
        while not self.stop_ev.is_set() and len(self.late) < len(self.due):
            left = [t for t in self.due if t not in self.late]
            pipe = self.r.pipeline(transaction=False)
            for tid in left:
                pipe.hget(keys.job(tid), "polls")
            now = time.time()
            for tid, polls in zip(left, pipe.execute(), strict=True):
                if int(polls or 0) > 1:
                    self.late[tid] = now - self.due[tid]
            self.stop_ev.wait(0.1)


class RssSampler(threading.Thread):
    def __init__(self, workers: list[Worker]) -> None:
        super().__init__(daemon=True)
        self.workers = workers
        self.peak: dict[str, dict[str, float]] = {w.name: {"main_mb": 0.0, "child_mb": 0.0} for w in workers}
        self.stop_ev = threading.Event()

    def run(self) -> None:
        while not self.stop_ev.wait(0.5):
            self.sample()

    def sample(self) -> None:
        for w in self.workers:
            rss = w.rss()
            p = self.peak[w.name]
            p["main_mb"] = max(p["main_mb"], rss["main_mb"] if rss["main_mb"] == rss["main_mb"] else 0)
            p["child_mb"] = max(p["child_mb"], max(rss["children_mb"], default=0.0))


def run_one(n: int, mode_key: str, ids: list[str], snapshot: dict, sim: SimProcess, redis_url: str) -> dict:
    mode = MODES[mode_key]
    park = mode_key != "off"
    r = client(redis_url)
    r.flushall()
    env = base_env(redis_url, sim.base_url, **settings_for(mode_key))
    tag = f"{mode_key}-{n}"
    workers = [Worker(f"if-{tag}-w{i}", env, concurrency=1) for i in (1, 2)]
    t_start = time.time()
    start_workers(r, workers)
    drivers = [EnvProc(env) for _ in range(4)]
    try:
        time.sleep(1.0)
        rss0 = {w.name: w.rss() for w in workers}
        mem0 = used_memory(r)
        sampler = RssSampler(workers)
        sampler.start()
        m = min(n, 600)
        bg, probes = ids[: n - m], ids[n - m : n]
        # 1. background jobs, due beyond the run
        t0 = time.time()
        items = [(tid, t0 + 1000 + random.random() * (INTERVAL - 1000)) for tid in bg]
        parts = [items[i::4] for i in range(4)]
        ths = [threading.Thread(target=drivers[i].call, args=("seed", parts[i], snapshot, park)) for i in range(4)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        seed_s = time.time() - t0
        # parking OFF: wait until the workers pulled (and hold) every countdown message
        ingest_ok = True
        if not park:
            ingest_ok = wait_until(lambda: r.hlen("unacked") >= len(bg) and r.llen("seedance.poll") == 0, 300, 0.5)
        ingest_s = time.time() - t0
        # 2. probes: due at PROBE_RATE/s starting 3 s from now
        tp = time.time() + 3.0
        window = m / PROBE_RATE
        probe_items = [(tid, tp + random.random() * window) for tid in probes]
        watch = ReadWatch(r, dict(probe_items)) if mode_key == "batch" else None
        if watch:
            watch.start()
        drivers[0].call("seed", probe_items, snapshot, park)
        if watch:
            watch.join(window + 60)
            watch.stop_ev.set()
            watch.join()
        else:
            wait_until(lambda: r.llen("bench:lateness") >= m, window + 60, 0.5)
        time.sleep(2.0)
        sampler.stop_ev.set()
        sampler.join()
        sampler.sample()
        lat = list(watch.late.values()) if watch else [x for _, x in timed_floats(r, "bench:lateness")]
        mem1 = used_memory(r)
        unacked = r.hlen("unacked")
        parked = r.zcard(keys.PARKED)
        jobs = r.zcard(keys.JOBS)
        try:
            prefetch = drivers[0].call("inspect_prefetch")
        except Exception as exc:
            prefetch = {"error": str(exc)}
        rss1 = {w.name: w.rss() for w in workers}
    except BaseException:
        for d in drivers:
            d.close()
        for w in workers:
            w.kill()
        raise
    for d in drivers:
        d.close()
    # 3. warm shutdown of both at once
    shut: dict[str, float | None] = {}
    t_sig = time.monotonic()
    for w in workers:
        w.sigterm()

    def _wait(w: Worker) -> None:
        took = w.wait_exit(180)
        shut[w.name] = None if took is None else time.monotonic() - t_sig

    waiters = [threading.Thread(target=_wait, args=(w,)) for w in workers]
    for th in waiters:
        th.start()
    for th in waiters:
        th.join()
    shut = {w.name: shut.get(w.name) for w in workers}
    restored = r.llen("seedance.poll")
    row = {
        "jobs": n, "mode": mode, "probes": m, "lateness_samples": len(lat),
        "seed_s": seed_s, "ingest_s": ingest_s, "run_s": time.time() - t_start,
        "rss_start": rss0, "rss_end": rss1, "rss_peak": sampler.peak,
        "redis_used_memory_empty": mem0, "redis_used_memory_loaded": mem1,
        "redis_bytes_per_job": (mem1 - mem0) / n,
        "unacked": unacked, "parked": parked, "jobs_in_registry": jobs, "prefetch_count": prefetch,
        "lateness_p50_s": pct(lat, 50), "lateness_p99_s": pct(lat, 99), "lateness_max_s": max(lat, default=float("nan")),
        "warm_shutdown_s": shut, "messages_restored_to_queue_after_shutdown": restored, "ingest_ok": ingest_ok,
    }  # fmt: skip
    print(
        f"  {n:>6} {mode:18s} seed {seed_s:5.1f}s ingest {ingest_s:5.1f}s  "
        f"RSS peak main {max(p['main_mb'] for p in sampler.peak.values()):6.0f} MB child "
        f"{max(p['child_mb'] for p in sampler.peak.values()):5.0f} MB  redis {row['redis_bytes_per_job']:6.0f} B/job  "
        f"unacked {unacked}  lateness p50 {row['lateness_p50_s']:.3f} p99 {row['lateness_p99_s']:.3f} s  "
        f"shutdown {[None if v is None else round(v, 1) for v in shut.values()]}  ({row['run_s']:.0f} s)",
        flush=True,
    )
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--before-max", type=int, default=10000, help="largest size measured with parking OFF (100000 takes ~12 min more)")
    ap.add_argument("--budget-s", type=float, default=900, help="skip remaining runs past this")
    ap.add_argument("--modes", default="on,off,batch", help="of on (parking ON), off (parking OFF), batch")
    a = ap.parse_args()
    sizes = [60] if a.quick else [int(x) for x in a.sizes.split(",")]
    t0 = time.time()
    rows = []
    skipped = []
    with start_redis() as red, SimProcess() as sim:
        ids = sim.add_n([("queued", None)], max(sizes))
        env = base_env(red.url, sim.base_url)
        with EnvProc(env) as d:
            snapshot = d.call("queued_snapshot", ids[0])
        plan = []
        modes = a.modes.split(",")
        for n in sizes:
            for mk in ("on", "batch", "off"):
                if mk in modes and (mk != "off" or n <= a.before_max):
                    plan.append((n, mk))
        for n, mk in plan:
            if time.time() - t0 > a.budget_s:
                skipped.append({"jobs": n, "mode": MODES[mk], "why": "time budget"})
                print(f"  skipped {n} {MODES[mk]}: time budget", flush=True)
                continue
            rows.append(run_one(n, mk, ids, snapshot, sim, red.url))
    trows = []
    for row in rows:
        after = not row["mode"].startswith("before")
        peak_main = max(p["main_mb"] for p in row["rss_peak"].values())
        peak_child = max(p["child_mb"] for p in row["rss_peak"].values())
        shut = [v for v in row["warm_shutdown_s"].values()]
        shut_max = max((v if v is not None else float("inf")) for v in shut)
        trows.append({
            "jobs": row["jobs"], "mode": row["mode"],
            "RSS main max MB": peak_main, "RSS child max MB": peak_child,
            "Redis B/job": row["redis_bytes_per_job"], "unacked held": row["unacked"],
            "prefetch per worker": "/".join(str(v) for v in row["prefetch_count"].values()) if isinstance(row["prefetch_count"], dict) else "-",
            "late p50 s": row["lateness_p50_s"], "late p99 s": row["lateness_p99_s"], "n": row["lateness_samples"],
            "warm shutdown s": shut_max,
            "goals (after)": (
                ("RSS ok" if max(peak_main, peak_child) <= 512 else "RSS MISSED") + ", "
                + ("Redis ok" if row["redis_bytes_per_job"] <= 2048 else "Redis MISSED") + ", "
                + ("p99 ok" if row["lateness_p99_s"] <= 2 else "p99 MISSED") + ", "
                + ("shutdown ok" if shut_max < 10 else "shutdown MISSED")
            ) if after else "",
        })  # fmt: skip
    print(table(trows, list(trows[0]), "\nFigure 2: in-flight capacity (2 workers x -c 1; interval 1800 s)"))
    path = write_json(
        "inflight_quick.json" if a.quick else "inflight.json",
        {"quick": a.quick, "interval_s": INTERVAL, "probe_rate_per_s": PROBE_RATE, "runs": rows, "skipped": skipped},
    )
    print(f"\nwrote {path}  (total {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
