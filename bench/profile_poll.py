"""Profile of the poll path: py-spy on a real worker's pool child (and main process) under load.

One worker (-c 1) polls 20 chains as fast as it can (every interval 1 ms, simulator answering at
once, like figure 1); ``py-spy record --format raw`` samples the pool child and the main process
for D seconds; then the same for baseline (a) (no-op reschedule). Reported: inclusive share of the
child's samples for the parts of the poll path, the top self-time functions, and a micro-benchmark
of what Celery does for every ``raise Ignore()`` (two billiard ``ExceptionInfo``: a formatted
traceback each), by traceback depth.

reproduce with: python bench/profile_poll.py       (quick: --quick)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
    write_json,
)
from bench.spyreport import summarise

PYSPY = str(Path(sys.executable).parent / "py-spy")

# inclusive shares of the child's samples (substring of "function (file)")
PARTS = [
    ("whole task: fast_trace_task", "fast_trace_task (celery/app/trace.py)"),
    ("seedance.poll body (poll wrapper)", "survive_redis_outage.<locals>.wrapper"),
    ("HTTP GET + parse (ArkClient.get_task)", "ArkClient.get_task"),
    ("fence: JobStore.begin (Lua + record parse)", "JobStore.begin"),
    ("reschedule: JobStore.advance (Lua)", "JobStore.advance"),
    ("re-publish: signature_from_request + apply_async", "_again (seedance_worker/engine/poll.py)"),
    ("decide() + schedule", "decide (seedance_worker/engine/decide.py)"),
    ("PollOptions / settings / store / schedule setup", "_Poller.__init__"),
    ("rate limiter (acquire)", "RateLimiter.acquire"),
    ("metrics", "seedance_worker/metrics.py"),
    ("logging", "Logger._log"),
    ("Celery Ignore handling: ExceptionInfo (tracebacks)", "ExceptionInfo.__init__"),
    ("  of it: TraceInfo.handle_ignore", "TraceInfo.handle_ignore"),
    ("child -> parent result pickling (ForkingPickler.dumps)", "ForkingPickler.dumps"),
    ("bench hook (task_prerun INCR)", "_on_prerun (bench/baseline_tasks.py)"),
]


def inclusive(res: dict, needle: str) -> float:
    return sum(share for f, _, share in res["total_all"] if needle in f)


def record(pids: list[int], out_prefix: str, duration: float) -> list[Path]:
    procs, paths = [], []
    for i, pid in enumerate(pids):
        path = Path(f"{out_prefix}_{i}.txt")
        paths.append(path)
        procs.append(subprocess.Popen(
            [PYSPY, "record", "-p", str(pid), "-d", str(int(duration)), "-r", "250", "-f", "raw", "-o", str(path), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        ))  # fmt: skip
    for p in procs:
        p.wait()
    return [p for p in paths if p.exists()]


def ignore_microbench(n: int = 300) -> list[dict]:
    """Cost of what celery.app.trace does on `raise Ignore()`: two ExceptionInfo() (formatted tracebacks)."""
    from billiard.einfo import ExceptionInfo
    from celery.exceptions import Ignore

    def deep(d: int) -> None:
        if d <= 1:
            raise Ignore()
        deep(d - 1)

    out = []
    for depth in (2, 4, 8, 12):
        t0 = time.perf_counter()
        for _ in range(n):
            try:
                deep(depth)
            except Ignore:
                ExceptionInfo(internal=True)
                ExceptionInfo()
        out.append({"traceback_frames": depth, "ms_per_ignore": 1000 * (time.perf_counter() - t0) / n})
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--duration", type=float, default=15.0)
    a = ap.parse_args()
    dur = 3.0 if a.quick else a.duration
    t_start = time.time()
    tmp = RESULTS / "logs.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    results = {}
    with start_redis() as red, SimProcess() as sim:
        r = client(red.url)
        env = base_env(
            red.url, sim.base_url, poll_first_delay_s=0, poll_min_interval_s=0.001, poll_max_interval_s=0.001,
            poll_queued_interval_s=0.001, poll_running_interval_s=0.001, poll_backoff_factor=1,
            status_source="get",  # the per-job poll path: batched rounds send no poll message in flight
        )  # fmt: skip
        w = Worker("prof", env, concurrency=1)
        start_workers(r, [w])
        drv = EnvProc(env)
        try:
            for arm in ("plugin", "a"):
                until = time.time() + dur + 6.0
                if arm == "plugin":
                    ids = sim.add_n([("queued", dur + 6.0), ("succeeded", None)], 20)
                    drv.call("track_batch", ids, ["bench.noop"], ["bench.noop"])
                else:
                    drv.call("start_noop", 20, until, 0.001)
                time.sleep(2.0)
                key = "bench:runs:" + ("seedance.poll" if arm == "plugin" else "bench.noop_resched")
                c0, t0 = int(r.get(key) or 0), time.time()
                child = record([w.child_pids()[0]], str(tmp / f"spy_{arm}_child"), dur)
                c1, t1 = int(r.get(key) or 0), time.time()
                main_paths = []
                res_child = summarise(child, top=20)
                res_child["total_all"] = summarise(child, top=100000)["total"]
                results[arm] = {
                    "runs_per_s_while_sampled": (c1 - c0) / (t1 - t0),
                    "samples": res_child["samples"],
                    "parts": {label: inclusive(res_child, needle) for label, needle in PARTS},
                    "top_self": res_child["self"][:15],
                    "main_process_files": [str(p) for p in main_paths],
                }
                time.sleep(max(0.0, until - time.time()) + 1.0)
            # the main process while the plugin runs (consumer loop, timer, dispatcher thread)
            ids = sim.add_n([("queued", dur + 6.0), ("succeeded", None)], 20)
            drv.call("track_batch", ids, ["bench.noop"], ["bench.noop"])
            time.sleep(2.0)
            mainp = record([w.pid], str(tmp / "spy_plugin_main"), dur)
            res_main = summarise(mainp, top=15)
            results["plugin_main_process_top_self"] = res_main["self"]
        finally:
            drv.close()
            w.stop()
    results["ignore_microbench"] = ignore_microbench(50 if a.quick else 300)
    rows = []
    for label, _ in PARTS:
        rows.append({
            "part of the pool child's samples (inclusive)": label,
            "plugin": f"{100 * results['plugin']['parts'][label]:.1f}%",
            "baseline (a)": f"{100 * results['a']['parts'][label]:.1f}%",
        })  # fmt: skip
    print(table(rows, list(rows[0]), f"\nProfile (py-spy, {dur:g} s per arm; plugin "
                f"{results['plugin']['runs_per_s_while_sampled']:.0f} polls/s, (a) {results['a']['runs_per_s_while_sampled']:.0f} runs/s)"))
    print("\ntop self time, plugin child:")
    for f, _, share in results["plugin"]["top_self"][:12]:
        print(f"  {100 * share:5.1f}%  {f}")
    print(table(results["ignore_microbench"], ["traceback_frames", "ms_per_ignore"], "\nCelery's cost per `raise Ignore()`"))
    path = write_json("profile_quick.json" if a.quick else "profile.json", {"quick": a.quick, **results,
                      "runtime_s": time.time() - t_start})  # fmt: skip
    print(f"\nwrote {path}  ({time.time() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
