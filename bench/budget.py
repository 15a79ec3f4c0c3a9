"""Issue 13, benchmark 1: the request budget of status polling for one account at its caps.

One account runs at most R tasks at once (the simulator's ``max_running``: the rest wait queued
and the oldest starts when a slot frees), with 120 queued behind them. At t0 all R + 120 tasks
are created and tracked at once (the burst). From then on, whenever a task ends remotely a new
one is created (``Simulator.add_task``, so creates never show up in the request log) and tracked.
R running + 120 queued stay in flight. Once a task has its slot it runs U(20, 40) s, in real
seconds with no time compression (short, but of the order of a real 5 s clip). The k-th task
gets the same duration in every arm.

Scenarios: (a) R = 3, (b) R = 10. The arms run side by side in one run. Each has its own
simulator process (its own caps) and its own Redis DB:

* ``batched``: our worker (-c 2) with default settings (``SEEDANCE_STATUS_SOURCE=batch``);
* ``per_job``: the same worker with ``SEEDANCE_STATUS_SOURCE=get``, one GET per job per poll;
* ``gateway``: new-api's loop, a thread in this script: every in-flight task in turn, one GET,
  1 s apart;
* ``batched_flat``: batched with ``SEEDANCE_POLL_BACKOFF_FACTOR=1``. Queued reads stay at
  ``SEEDANCE_BATCH_QUEUED_INTERVAL_S`` (10 s, jittered down to the 2 s round) instead of
  growing to 60 s. This is the "why" arm: see the verdict.

Measured from each simulator's request log: API requests per minute, GETs and list calls
counted apart, in the first minute of the burst and at steady state (from the warm-up to the
end of the window). Detection delay runs from the remote end (the simulator's ``terminal_at``)
to the start of downstream work. For our workers that is the start of the first downstream step
(``download_video``; ``bench:downstream`` from the task_prerun hook in baseline_tasks.py), and
the column "poll" is when the terminal poll ended (``Outcome.terminal_at``). For the gateway it
is the moment its loop read the terminal status. After the window, tracking and refills carry
on until every task that ended inside the window has been seen, or the grace time runs out
(then it is counted as missed).

Goals (issue 13): batched <= 1/4 of per-job requests, p95 detection delay <= 2.5 s, and inside
a 180 RPM budget with room for the creates (one per task that ends).

reproduce with: python bench/budget.py          (quick: --quick; one scenario: --scenarios a)
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

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
    write_json,
)

QUEUED = 120  # the account's queue cap on the real service
BUDGET_RPM = 180
TERMINAL = {"succeeded", "failed", "expired", "cancelled"}
WORKER_ARMS: dict[str, dict[str, Any]] = {
    "batched": {},
    "per_job": {"status_source": "get"},
    "batched_flat": {"poll_backoff_factor": 1},
}
ARMS = ("batched", "per_job", "gateway", "batched_flat")


class Arm:
    """One poller against its own capped simulator; ``refill`` keeps R + queued in flight."""

    def __init__(
        self, scenario: str, name: str, running: int, queued: int, run_s: tuple[float, float]
    ) -> None:
        self.scenario, self.name, self.running, self.queued = scenario, name, running, queued
        self.run_s = run_s
        self.rng = random.Random(13)  # the same duration sequence in every arm
        self.sim = SimProcess(max_running=running)
        self.inflight: list[str] = []
        self.created: dict[str, float] = {}
        self.terminal: dict[str, float] = {}
        self.samples: list[dict[str, int]] = []
        self.log: list[Any] = []  # (ts, kind, task id, status) of every API request, read at the end

    def script(self) -> list[tuple[str, float | None]]:
        # Queued for 0 s, then waiting for a slot under max_running; running counts from the slot.
        return [("queued", 0.0), ("running", self.rng.uniform(*self.run_s)), ("succeeded", None)]

    def start(self) -> None:
        self.sim.start()

    def seed(self) -> None:
        ids = self.sim.add([self.script() for _ in range(self.running + self.queued)])
        now = time.time()
        self.created.update(dict.fromkeys(ids, now))
        self.inflight = list(ids)
        self.track(ids)

    def track(self, ids: list[str]) -> None:
        raise NotImplementedError

    def refill(self) -> int:
        term = self.sim.call("terminal", self.inflight)
        ended = [tid for tid in self.inflight if term.get(tid) is not None]
        if not ended:
            return 0
        for tid in ended:
            self.terminal[tid] = float(term[tid])
        done = set(ended)
        self.inflight = [tid for tid in self.inflight if tid not in done]
        new = self.sim.add([self.script() for _ in ended])
        now = time.time()
        self.created.update(dict.fromkeys(new, now))
        self.inflight += new
        self.track(new)
        return len(ended)

    def sample(self) -> None:
        self.samples.append(self.sim.call("statuses"))

    def detections(self) -> dict[str, tuple[float, float | None]]:
        """task id -> (downstream start, poll end or None)."""
        raise NotImplementedError

    def stop(self) -> None:
        self.sim.stop()


class WorkerArm(Arm):
    def __init__(self, *a: Any, redis_url: str, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.redis_url = redis_url
        self.settings = WORKER_ARMS[self.name]

    def start(self) -> None:
        super().start()
        client(self.redis_url).flushdb()  # a DB of our own embedded Redis
        self.env = base_env(self.redis_url, self.sim.base_url, bench_downstream=1, **self.settings)
        self.worker = Worker(f"budget-{self.scenario}-{self.name}", self.env, concurrency=2)

    def open(self) -> None:
        self.driver = EnvProc(self.env)

    def track(self, ids: list[str]) -> None:
        self.driver.call("track_batch", ids)

    def detections(self) -> dict[str, tuple[float, float | None]]:
        out: dict[str, tuple[float, float | None]] = {}
        for line in client(self.redis_url).lrange("bench:downstream", 0, -1):
            ts, tid, polled = line.split()
            out.setdefault(tid, (float(ts), float(polled)))
        return out

    def stop(self) -> None:
        self.driver.close()
        self.worker.stop()
        super().stop()


class GatewayArm(Arm):
    """new-api's task loop: the in-flight tasks in turn, one GET each, 1 s apart."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.ring: collections.deque[str] = collections.deque()
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"gateway-{self.scenario}", daemon=True)

    def open(self) -> None:
        self.thread.start()

    def track(self, ids: list[str]) -> None:
        with self.lock:
            self.ring.extend(ids)

    def _loop(self) -> None:
        s = requests.Session()
        s.headers["Authorization"] = "Bearer bench-key"
        while not self.halt.is_set():
            with self.lock:
                tid = self.ring.popleft() if self.ring else None
            if tid is None:
                self.halt.wait(0.1)
                continue
            try:
                status = s.get(f"{self.sim.base_url}/contents/generations/tasks/{tid}", timeout=10).json()[
                    "status"
                ]
            except (requests.RequestException, ValueError, KeyError):
                status = None
            if status in TERMINAL:
                self.seen[tid] = time.time()
            else:
                with self.lock:
                    self.ring.append(tid)
            self.halt.wait(1.0)

    def detections(self) -> dict[str, tuple[float, float | None]]:
        return {tid: (ts, None) for tid, ts in self.seen.items()}

    def stop(self) -> None:
        self.halt.set()
        self.thread.join(15)
        super().stop()


def make_arms(scenario: str, running: int, args: argparse.Namespace, db0: int, redis_base: str) -> list[Arm]:
    arms: list[Arm] = []
    for i, name in enumerate(args.arms):
        common = (scenario, name, running, args.queued, (args.run_min_s, args.run_max_s))
        if name == "gateway":
            arms.append(GatewayArm(*common))
        else:
            arms.append(WorkerArm(*common, redis_url=f"{redis_base}/{db0 + i}"))
    return arms


def drive(arms: list[Arm], redis_base: str, window_s: float, grace_s: float) -> tuple[float, float]:
    """Start every arm, burst at t0, keep them at their caps for the window, then wait (refilling
    still) until the tasks that ended in the window were seen. Returns (t0, t_end)."""
    for arm in arms:
        arm.start()
    workers = [a.worker for a in arms if isinstance(a, WorkerArm)]
    start_workers(client(redis_base + "/0"), workers)
    try:
        for arm in arms:
            arm.open()
        t0 = time.time()
        for arm in arms:
            arm.seed()
        t_end = t0 + window_s
        next_sample = t0
        while True:
            now = time.time()
            for arm in arms:
                arm.refill()
            if now >= next_sample:
                for arm in arms:
                    arm.sample()
                next_sample = now + 10.0
            if now >= t_end and (now >= t_end + grace_s or all(_all_seen(a, t_end) for a in arms)):
                break
            time.sleep(0.25)
        time.sleep(1.0)  # the last downstream steps' hooks
        for arm in arms:
            arm.refill()
            arm.log = arm.sim.call("log", ["get", "list", "create", "delete"])
        return t0, t_end
    finally:
        for arm in arms:
            arm.stop()


def _all_seen(arm: Arm, t_end: float) -> bool:
    seen = arm.detections()
    return all(tid in seen for tid, ta in arm.terminal.items() if ta <= t_end)


def measure(arm: Arm, log: list[Any], t0: float, t_end: float, warm_s: float) -> dict[str, Any]:
    burst_end = min(t0 + 60.0, t_end)
    steady0 = t0 + warm_s

    def rpm(kind: str, a: float, b: float) -> float:
        n = sum(1 for ts, k, _, _ in log if k == kind and a <= ts < b)
        return n * 60.0 / max(1e-9, b - a)

    seen = arm.detections()
    out: dict[str, Any] = {"scenario": arm.scenario, "arm": arm.name, "running_cap": arm.running}
    for kind in ("get", "list"):
        out[f"burst_{kind}_rpm"] = rpm(kind, t0, burst_end)
        out[f"steady_{kind}_rpm"] = rpm(kind, steady0, t_end)
    out["burst_rpm"] = out["burst_get_rpm"] + out["burst_list_rpm"]
    out["steady_rpm"] = out["steady_get_rpm"] + out["steady_list_rpm"]
    out["other_requests"] = sum(1 for ts, k, _, _ in log if k not in ("get", "list") and t0 <= ts < t_end)
    out["non_200"] = sum(1 for ts, k, _, st in log if k in ("get", "list") and st != 200 and t0 <= ts < t_end)
    ends_steady = [ta for ta in arm.terminal.values() if steady0 <= ta < t_end]
    out["creates_per_min"] = len(ends_steady) * 60.0 / max(1e-9, t_end - steady0)
    for label, lo in (("all", t0), ("steady", steady0)):
        ended = {tid: ta for tid, ta in arm.terminal.items() if lo <= ta < t_end}
        d = [seen[tid][0] - ta for tid, ta in ended.items() if tid in seen]
        out[f"{label}_n"] = len(ended)
        out[f"{label}_missed"] = len(ended) - len(d)
        out[f"{label}_p50_s"], out[f"{label}_p95_s"] = pct(d, 50), pct(d, 95)
        out[f"{label}_p99_s"], out[f"{label}_max_s"] = pct(d, 99), max(d, default=float("nan"))
        polled = [p - ta for tid, ta in ended.items() if (p := seen.get(tid, (0.0, None))[1]) is not None]
        out[f"{label}_poll_p50_s"], out[f"{label}_poll_p95_s"] = pct(polled, 50), pct(polled, 95)
    later = arm.samples[1:]  # the first sample is taken right at the burst
    out["inflight_queued_min_max"] = [min((s.get("queued", 0) for s in later), default=0),
                                      max((s.get("queued", 0) for s in later), default=0)]  # fmt: skip
    out["inflight_running_min_max"] = [min((s.get("running", 0) for s in later), default=0),
                                       max((s.get("running", 0) for s in later), default=0)]  # fmt: skip
    return out


def run_scenarios(
    scenarios: dict[str, int], args: argparse.Namespace, redis_base: str
) -> list[dict[str, Any]]:
    """All the arms of ``scenarios`` in one drive (quick mode runs every scenario at once)."""
    arms: list[Arm] = []
    for j, (name, running) in enumerate(scenarios.items()):
        arms += make_arms(name, running, args, 1 + j * len(args.arms), redis_base)
    t0, t_end = drive(arms, redis_base, args.window_s, args.grace_s)
    return [measure(a, a.log, t0, t_end, args.warm_s) for a in arms]


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scen in sorted({r["scenario"] for r in rows}):
        by = {r["arm"]: r for r in rows if r["scenario"] == scen}
        if "per_job" not in by:
            continue
        base = by["per_job"]["steady_rpm"]
        for arm in ("batched", "batched_flat"):
            r = by.get(arm)
            if r is None:
                continue
            out[f"{scen}.{arm}"] = {
                "requests_vs_per_job": r["steady_rpm"] / base if base else float("nan"),
                "le_quarter": bool(base and r["steady_rpm"] <= base / 4),
                "p95_s": r["all_p95_s"],
                "p95_le_2_5": bool(r["all_p95_s"] <= 2.5),
                "steady_rpm_plus_creates": r["steady_rpm"] + r["creates_per_min"],
                "within_180": bool(r["steady_rpm"] + r["creates_per_min"] <= BUDGET_RPM),
                "burst_rpm_plus_burst_creates": r["burst_rpm"] + r["running_cap"] + QUEUED,
            }
    return out


def main(redis_base: str) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scenarios", default="ab", help="a: 3 running + 120 queued, b: 10 running + 120 queued")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--queued", type=int, default=QUEUED)
    ap.add_argument("--run-min-s", type=float, default=20.0)
    ap.add_argument("--run-max-s", type=float, default=40.0)
    ap.add_argument("--window-s", type=float, default=600.0, help="measured window per scenario")
    ap.add_argument(
        "--warm-s", type=float, default=180.0, help="steady state starts this long after the burst"
    )
    ap.add_argument("--grace-s", type=float, default=180.0, help="most extra time to see the window's ends")
    a = ap.parse_args()
    a.arms = [x for x in a.arms.split(",") if x]
    if a.quick:
        a.queued, a.run_min_s, a.run_max_s, a.window_s, a.warm_s, a.grace_s = 8, 3.0, 6.0, 20.0, 8.0, 12.0
    scen_all = {"a": 3, "b": 10}
    scenarios = {k: scen_all[k] for k in a.scenarios}
    t_start = time.time()
    rows: list[dict[str, Any]] = []
    if a.quick:  # every scenario at once, to stay well under 90 s
        rows = run_scenarios(scenarios, a, redis_base)
    else:
        for name, running in scenarios.items():
            rows += run_scenarios({name: running}, a, redis_base)
            print(f"scenario {name} done ({time.time() - t_start:.0f} s)", flush=True)
    print_tables(rows, a)
    v = verdict(rows)
    print("verdict:", v)
    path = write_json(
        "budget_quick.json" if a.quick else "budget.json",
        {"quick": a.quick, "params": {k: v for k, v in vars(a).items()}, "arm_settings": WORKER_ARMS,
         "rows": rows, "verdict": v, "runtime_s": time.time() - t_start},
    )  # fmt: skip
    print(f"\nwrote {path}  ({time.time() - t_start:.0f} s)")
    return 0


def print_tables(rows: list[dict[str, Any]], a: argparse.Namespace) -> None:
    base = {r["scenario"]: r["steady_rpm"] for r in rows if r["arm"] == "per_job"}
    out = []
    for r in rows:
        b = base.get(r["scenario"])
        out.append({
            "scen": f"{r['scenario']} ({r['running_cap']}+{a.queued})", "arm": r["arm"],
            "burst GET/min": r["burst_get_rpm"], "burst list/min": r["burst_list_rpm"],
            "steady GET/min": r["steady_get_rpm"], "steady list/min": r["steady_list_rpm"],
            "steady RPM": r["steady_rpm"], "vs per-job": r["steady_rpm"] / b if b else float("nan"),
            "creates/min": r["creates_per_min"], "RPM+creates": r["steady_rpm"] + r["creates_per_min"],
            "delay p50 s": r["all_p50_s"], "p95 s": r["all_p95_s"], "max s": r["all_max_s"],
            "poll p95 s": r["all_poll_p95_s"], "ended": r["all_n"], "missed": r["all_missed"],
        })  # fmt: skip
    title = (f"\nRequests per minute and detection delay, one account at its caps (running U({a.run_min_s:g}, "
             f"{a.run_max_s:g}) s; burst = first {min(60.0, a.window_s):g} s, steady = {a.warm_s:g} s to "
             f"{a.window_s:g} s; delay = remote end -> downstream start)")  # fmt: skip
    print(table(out, list(out[0]), title))
    caps = [{"scen": r["scenario"], "arm": r["arm"], "queued min-max": r["inflight_queued_min_max"],
             "running min-max": r["inflight_running_min_max"], "steady p95 s": r["steady_p95_s"],
             "steady n": r["steady_n"], "non-200": r["non_200"]} for r in rows]  # fmt: skip
    print(
        table(caps, list(caps[0]), "\nIn flight on the simulator (sampled every 10 s) and steady-state delay")
    )


if __name__ == "__main__":
    with start_redis() as _r:
        sys.exit(main(_r.url.rsplit("/", 1)[0]))
