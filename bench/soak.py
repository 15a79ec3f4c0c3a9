"""Issue 13, benchmark 4: soak. 5,000 jobs tracked at once, 30 minutes of polling, worker RSS flat?

Two arms side by side in one run, each with its own embedded Redis, its own simulator process and
its own worker (``-P prefork -c 2``), default poll settings:

* ``batch``: ``SEEDANCE_STATUS_SOURCE=batch`` (the default), jobs read in rounds of list calls;
* ``per_job``: ``SEEDANCE_STATUS_SOURCE=get``, one GET and one poll message per job per poll.

Each arm tracks ``--jobs`` simulator tasks at once (``track_many``). The tasks stay ``queued`` for
10 minutes longer than the soak, so all of them are in flight the whole time. Every ``--sample-s``
seconds (psutil, by pid) the RSS of each worker's main process and of each pool child is sampled,
plus Redis ``used_memory``. A child that exits and is replaced keeps its slot (``child1``,
``child2``) and the pid change is recorded. The number of status requests each simulator served
is recorded too, so the arms are seen to poll.

Goal (issue 13): flat. From the sample at 2 minutes (a third of the run if that is under 6 min) to
the end, the RSS of every process and the total of each arm grow less than 10 %.

Output: bench/results/soak.json (series and summary) and bench/results/soak.png (total RSS per
arm and RSS per process over time).

reproduce with: timeout 2400 python bench/soak.py      (quick: --quick, 300 jobs, 1 minute)
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench.common import (
    RESULTS,
    EnvProc,
    SimProcess,
    Worker,
    base_env,
    client,
    start_redis,
    start_workers,
    table,
    used_memory,
    write_json,
)
from seedance_worker import keys

ARMS: dict[str, dict[str, Any]] = {
    "batch": {"status_source": "batch"},
    "batch_nocap": {"status_source": "batch", "batch_list_rps": 0},
    "per_job": {"status_source": "get"},
}
GOAL_GROWTH = 0.10


class Tracker:
    """RSS of a worker's processes by slot: ``main``, ``child1``..; a replaced child keeps its slot."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.slots: dict[str, int] = {"main": worker.pid}
        self.replaced: list[dict[str, Any]] = []

    def sample(self, t_s: float) -> dict[str, float]:
        try:
            kids = {p.pid for p in psutil.Process(self.worker.pid).children(recursive=True)}
        except psutil.Error:
            kids = set()
        gone = [s for s, pid in self.slots.items() if s != "main" and pid not in kids]
        new = sorted(kids - set(self.slots.values()))
        for slot in gone:
            if new:
                pid = new.pop(0)
                self.replaced.append({"t_s": t_s, "slot": slot, "old_pid": self.slots[slot], "new_pid": pid})
                self.slots[slot] = pid
        for pid in new:
            self.slots[f"child{len(self.slots)}"] = pid
        out: dict[str, float] = {}
        for slot, pid in self.slots.items():
            try:
                out[slot] = psutil.Process(pid).memory_info().rss / 2**20
            except psutil.Error:
                out[slot] = float("nan")
        return out


class ArmRun:
    def __init__(self, name: str, settings: dict[str, Any]) -> None:
        self.name = name
        self.settings = settings
        self.samples: list[dict[str, Any]] = []

    def start(self, redis_url: str, n_jobs: int, queued_s: float) -> None:
        self.sim = SimProcess().start()
        self.r = client(redis_url)
        self.env = base_env(redis_url, self.sim.base_url, **self.settings)
        self.worker = Worker(f"soak-{self.name}", self.env, concurrency=2)
        start_workers(self.r, [self.worker])
        self.redis_empty = used_memory(self.r)
        self.ids = self.sim.add_n([("queued", queued_s), ("succeeded", None)], n_jobs)
        self.driver = EnvProc(self.env)
        self.tracker = Tracker(self.worker)

    def track(self) -> float:
        return float(self.driver.call("track_batch", self.ids))

    def sample(self, t_s: float) -> dict[str, Any]:
        rss = self.tracker.sample(t_s)
        s = {
            "t_s": round(t_s, 1),
            "rss_mb": rss,
            "rss_total_mb": sum(v for v in rss.values() if not math.isnan(v)),
            "redis_used_memory": used_memory(self.r),
            "polls": int(self.r.get("bench:runs:seedance.poll") or 0),
            "task_runs": {
                k.removeprefix("bench:runs:"): int(self.r.get(k) or 0)
                for k in self.r.scan_iter("bench:runs:*")
            },
            "jobs_in_registry": self.r.zcard(keys.JOBS),
            "sim_requests": self.sim.call("count", None),
        }
        self.samples.append(s)
        return s

    def stop(self) -> None:
        for close in (self.driver.close, self.worker.stop, self.sim.stop):
            try:
                close()
            except Exception as exc:  # keep stopping the rest
                print(f"  {self.name}: stop: {exc}", flush=True)


def _growth(a: float, b: float) -> float:
    return (b - a) / a if a else float("nan")


def summarise(arm: ArmRun, base_s: float, n_jobs: int) -> dict[str, Any]:
    samples = arm.samples
    base = next((s for s in samples if s["t_s"] >= base_s), samples[0])
    end = samples[-1]
    procs = {}
    for slot in end["rss_mb"]:
        a, b = base["rss_mb"].get(slot, float("nan")), end["rss_mb"][slot]
        procs[slot] = {"rss_base_mb": a, "rss_end_mb": b, "growth": _growth(a, b)}
    total_growth = _growth(base["rss_total_mb"], end["rss_total_mb"])
    flat = all(p["growth"] < GOAL_GROWTH for p in procs.values())
    return {
        "arm": arm.name,
        "base_t_s": base["t_s"],
        "end_t_s": end["t_s"],
        "processes": procs,
        "rss_total_base_mb": base["rss_total_mb"],
        "rss_total_end_mb": end["rss_total_mb"],
        "rss_total_max_mb": max(s["rss_total_mb"] for s in samples),
        "total_growth": total_growth,
        "redis_used_memory_empty": arm.redis_empty,
        "redis_used_memory_end": end["redis_used_memory"],
        "redis_bytes_per_job": (end["redis_used_memory"] - arm.redis_empty) / n_jobs,
        "redis_growth_after_base": _growth(base["redis_used_memory"], end["redis_used_memory"]),
        "jobs_in_registry_end": end["jobs_in_registry"],
        "polls": end["polls"],
        "task_runs": end["task_runs"],
        "sim_requests": end["sim_requests"],
        "children_replaced": arm.tracker.replaced,
        "goal_met": bool(flat and total_growth < GOAL_GROWTH),
    }


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    colours = {"batch": "tab:blue", "batch_nocap": "tab:green", "per_job": "tab:orange"}
    styles = ["-", "--", ":", "-."]
    for name, series in res["series"].items():
        t = [s["t_s"] / 60 for s in series]
        ax1.plot(
            t, [s["rss_total_mb"] for s in series], color=colours[name], label=f"{name} (main + children)"
        )
        for i, slot in enumerate(series[-1]["rss_mb"]):
            ys = [s["rss_mb"].get(slot, float("nan")) for s in series]
            ax2.plot(t, ys, styles[i % len(styles)], color=colours[name], label=f"{name} {slot}")
    base_min = res["params"]["base_s"] / 60
    for ax in (ax1, ax2):
        ax.axvline(base_min, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("minutes since tracking")
        ax.set_ylabel("RSS (MB)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    p = res["params"]
    ax1.set_title(f"worker RSS total, {p['jobs']:,} jobs in flight per arm")
    ax2.set_title("RSS per process (-P prefork -c 2)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(n_jobs: int, minutes: float, sample_s: float, base_s: float) -> dict[str, Any]:
    duration_s = minutes * 60
    queued_s = duration_s + 600  # every task stays queued past the end of the soak
    arms = [ArmRun(name, s) for name, s in ARMS.items()]
    with contextlib.ExitStack() as stack:
        reds = [stack.enter_context(start_redis()) for _ in arms]
        started: list[ArmRun] = []
        try:
            for arm, red in zip(arms, reds, strict=True):
                arm.start(red.url, n_jobs, queued_s)
                started.append(arm)
            track_s = {}
            t0 = time.time()
            for arm in arms:  # one after the other: track_many takes a second or two per arm
                track_s[arm.name] = arm.track()
            next_at = t0
            while True:
                t = time.time() - t0
                line = [f"{t / 60:5.1f} min"]
                for arm in arms:
                    s = arm.sample(t)
                    line.append(
                        f"{arm.name} {s['rss_total_mb']:6.1f} MB polls {s['polls']:>7} req {s['sim_requests']:>7}"
                        f" redis {s['redis_used_memory'] / 2**20:5.1f} MB"
                    )
                print("  " + "  |  ".join(line), flush=True)
                if t >= duration_s:
                    break
                next_at += sample_s
                time.sleep(max(0.0, min(next_at, t0 + duration_s) - time.time()))
        finally:
            for arm in started:
                arm.stop()
    return {
        "params": {
            "jobs": n_jobs, "minutes": minutes, "sample_s": sample_s, "base_s": base_s,
            "queued_s": queued_s, "concurrency": 2, "arms": ARMS, "goal_growth": GOAL_GROWTH,
        },
        "track_s": track_s,
        "summary": [summarise(arm, base_s, n_jobs) for arm in arms],
        "series": {arm.name: arm.samples for arm in arms},
    }  # fmt: skip


def rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for s in res["summary"]:
        for slot, p in [*s["processes"].items(), ("total", None)]:
            a = p["rss_base_mb"] if p else s["rss_total_base_mb"]
            b = p["rss_end_mb"] if p else s["rss_total_end_mb"]
            g = p["growth"] if p else s["total_growth"]
            out.append({
                "arm": s["arm"], "process": slot, "RSS at base MB": a, "RSS at end MB": b,
                "growth %": 100 * g, "< 10 %": "yes" if g < GOAL_GROWTH else "NO",
                "Redis B/job": s["redis_bytes_per_job"] if not p else "",
                "poll tasks": s["polls"] if not p else "", "API requests": s["sim_requests"] if not p else "",
            })  # fmt: skip
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="300 jobs, 1 minute, samples every 5 s")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--sample-s", type=float, default=10.0)
    a = ap.parse_args()
    jobs, minutes, sample_s = (300, 1.0, 5.0) if a.quick else (a.jobs, a.minutes, a.sample_s)
    base_s = 120.0 if minutes >= 6 else minutes * 60 / 3
    t_start = time.time()
    res = run(jobs, minutes, sample_s, base_s)
    title = (
        f"\nSoak: {jobs:,} jobs in flight per arm, {minutes:g} min, -P prefork -c 2, RSS growth from "
        f"{base_s / 60:.2g} min to the end (goal < 10 %)"
    )
    print(table(rows(res), list(rows(res)[0]), title))
    for s in res["summary"]:
        print(
            f"  {s['arm']}: goal {'met' if s['goal_met'] else 'MISSED'}; children replaced: {len(s['children_replaced'])}"
        )
    name = "soak_quick" if a.quick else "soak"
    res["runtime_s"] = time.time() - t_start
    path = write_json(name + ".json", {"quick": a.quick, **res})
    plot(res, RESULTS / (name + ".png"))
    print(f"\nwrote {path} and {name}.png  ({res['runtime_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
