"""Pool-child memory and CPU per poll, with and without the billiard ExceptionInfo work-around.

Two workers side by side (``-P prefork -c 2`` each, each on its own embedded Redis, one simulator
process for both): the product as shipped, and the same with ``--include bench.einfo_unpatched``
(which undoes seedance_worker/wiring/compat.py's billiard patch in that worker). Each tracks
``--chains`` jobs that stay queued, polled with every interval at 1 ms, so every poll is a
rescheduling poll (``raise Ignore()``), until it has run ``--polls`` polls. Sampled every 2 s
(psutil): the RSS of each pool child and of the main process, and the worker's CPU time (main plus
children). CPU per poll is measured from the first sample past ``--warm`` polls to the end.

reproduce with: python bench/pool_memory.py      (quick: --quick; default 20,000 polls per arm)
"""

from __future__ import annotations

import argparse
import sys
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
    start_redis,
    start_workers,
    table,
    write_json,
)

ARMS = ("with work-around", "without (billiard as shipped)")
FAST = dict(
    poll_first_delay_s=0, poll_first_jitter_ratio=0, poll_min_interval_s=0.001,
    poll_max_interval_s=0.001, poll_queued_interval_s=0.001, poll_running_interval_s=0.001,
    poll_backoff_factor=1, status_source="get",  # the per-job path: batched rounds raise no Ignore
)  # fmt: skip


def _worker(arm: str, env: dict[str, str]) -> Worker:
    w = Worker("mem_" + ("patched" if arm == ARMS[0] else "unpatched"), env, concurrency=2)
    if arm != ARMS[0]:
        i = w.cmd.index("bench.baseline_tasks")  # one --include option: a second would replace it
        w.cmd[i] = "bench.baseline_tasks,bench.einfo_unpatched"
    return w


def _sample(w: Worker, polls: int, t0: float) -> dict[str, Any]:
    rss = w.rss()
    return {"t_s": round(time.time() - t0, 1), "polls": polls, "cpu_s": w.cpu_s(), **rss}


def _summary(arm: str, samples: list[dict[str, Any]], warm: int) -> dict[str, Any]:
    first, last = samples[0], samples[-1]
    base = next((s for s in samples if s["polls"] >= warm), first)
    polls = last["polls"] - base["polls"]
    kids_end = last["children_mb"] or [float("nan")]
    kids_start = first["children_mb"] or [float("nan")]
    return {
        "arm": arm,
        "polls": last["polls"],
        "child_rss_start_mb": sum(kids_start) / len(kids_start),
        "child_rss_end_mb": sum(kids_end) / len(kids_end),
        "child_rss_max_mb": max((max(s["children_mb"], default=0.0) for s in samples), default=float("nan")),
        "main_rss_end_mb": last["main_mb"],
        "cpu_ms_per_poll": 1000 * (last["cpu_s"] - base["cpu_s"]) / max(1, polls),
        "polls_per_s": polls / max(1e-9, last["t_s"] - base["t_s"]),
    }


def run(n_polls: int, chains: int, warm: int, budget_s: float) -> dict[str, Any]:
    with start_redis() as red_a, start_redis() as red_b, SimProcess() as sim:
        reds = dict(zip(ARMS, (red_a, red_b), strict=True))
        envs = {arm: base_env(reds[arm].url, sim.base_url, **FAST) for arm in ARMS}
        workers = {arm: _worker(arm, envs[arm]) for arm in ARMS}
        rs = {arm: client(reds[arm].url) for arm in ARMS}
        for arm in ARMS:
            start_workers(rs[arm], [workers[arm]])
        unpatched = {arm: rs[arm].get("bench:einfo_unpatched") for arm in ARMS}
        samples: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
        t0 = time.time()
        for arm in ARMS:
            samples[arm].append(_sample(workers[arm], 0, t0))
        helpers = {arm: EnvProc(envs[arm]) for arm in ARMS}
        try:
            for arm in ARMS:
                ids = sim.add_n([("queued", 36_000.0), ("succeeded", None)], chains)
                helpers[arm].call("track_batch", ids)
            running = set(ARMS)
            while running and time.time() - t0 < budget_s:
                time.sleep(2.0)
                for arm in list(running):
                    polls = int(rs[arm].get("bench:runs:seedance.poll") or 0)
                    samples[arm].append(_sample(workers[arm], polls, t0))
                    if polls >= n_polls:
                        running.discard(arm)
                        workers[arm].stop()
        finally:
            for h in helpers.values():
                h.close()
            for w in workers.values():
                w.stop()
    return {
        "summary": [_summary(arm, samples[arm], warm) for arm in ARMS],
        "samples": samples,
        "unpatched_flag": unpatched,
    }


COLS = [
    "arm", "polls", "child_rss_start_mb", "child_rss_end_mb", "child_rss_max_mb", "main_rss_end_mb",
    "cpu_ms_per_poll", "polls_per_s",
]  # fmt: skip


def report(res: dict[str, Any]) -> str:
    polls = res["params"]["polls"]
    title = f"Pool-child memory, -P prefork -c 2, {polls:,} rescheduling polls per arm, side by side"
    return table(res["summary"], COLS, title) + f"\n\nbench.einfo_unpatched active: {res['unpatched_flag']}\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--polls", type=int, default=20_000)
    ap.add_argument("--chains", type=int, default=40)
    ap.add_argument("--warm", type=int, default=500)
    ap.add_argument("--budget-s", type=float, default=1800.0)
    a = ap.parse_args()
    n, budget = (600, 50.0) if a.quick else (a.polls, a.budget_s)
    started = time.time()
    res = run(n, a.chains, min(a.warm, n // 4), budget)
    res["params"] = {"polls": n, "chains": a.chains, "warm": a.warm, "concurrency": 2, "settings": FAST}
    text = report(res)
    print("\n" + text)
    name = "pool_memory_quick" if a.quick else "pool_memory"
    path = write_json(name + ".json", {"quick": a.quick, **res, "runtime_s": time.time() - started})
    (path.parent / (name + ".md")).write_text(text)
    print(f"wrote {path} and {name}.md  ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
