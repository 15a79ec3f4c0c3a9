"""Markdown tables of every bench/results/*.json (what bench/README.md quotes).

reproduce with: python bench/report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import table

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict | None:
    p = RESULTS / name
    return json.loads(p.read_text()) if p.exists() else None


def f(v: float, nd: int = 2) -> str:
    return "-" if v != v else f"{v:.{nd}f}"


def throughput(d: dict) -> str:
    rows = []
    for c in d["configs"]:
        s = c["summary"]
        reps = sorted({r["rep"] for r in c["runs"]})
        cpu = {arm: [r["worker_cpu_ms_per_run"] for r in c["runs"] if r["arm"] == arm] for arm in ("a", "a_get", "plugin")}
        cpu_ratio = sorted(
            next(r["worker_cpu_ms_per_run"] for r in c["runs"] if r["rep"] == k and r["arm"] == "a")
            / next(r["worker_cpu_ms_per_run"] for r in c["runs"] if r["rep"] == k and r["arm"] == "plugin")
            for k in reps
        )
        for arm in ("a", "a_get", "plugin"):
            rows.append({
                "config": f"{c['config']} (-c {c['concurrency']}, {c['chains']} chains)", "arm": arm,
                "runs/s median [min-max]": f"{s[arm]['rate']['median']:.1f} [{s[arm]['rate']['min']:.1f}-{s[arm]['rate']['max']:.1f}]",
                "per pool process": f"{s[arm]['rate']['median'] / c['concurrency']:.1f}",
                "worker CPU ms/run [min-max]": f"{s[arm]['cpu_ms']['median']:.1f} [{min(cpu[arm]):.1f}-{max(cpu[arm]):.1f}]",
                "plugin/a (wall) [min-max]": (f"{c['ratio_vs_a']['median']:.2f} [{c['ratio_vs_a']['min']:.2f}-{c['ratio_vs_a']['max']:.2f}]" if arm == "plugin" else ""),
                "plugin/a per CPU-s [min-max]": (f"{cpu_ratio[len(cpu_ratio) // 2]:.2f} [{cpu_ratio[0]:.2f}-{cpu_ratio[-1]:.2f}]" if arm == "plugin" else ""),
            })  # fmt: skip
    return table(rows, list(rows[0]))


def inflight(d: dict) -> str:
    rows = []
    for r in d["runs"]:
        shut = [v for v in r["warm_shutdown_s"].values()]
        rows.append({
            "jobs": f"{r['jobs']:,}", "mode": r["mode"],
            "RSS main MB (peak, w1/w2)": "/".join(f"{p['main_mb']:.0f}" for p in r["rss_peak"].values()),
            "RSS child MB (peak)": "/".join(f"{p['child_mb']:.0f}" for p in r["rss_peak"].values()),
            "Redis B/job": f"{r['redis_bytes_per_job']:,.0f}",
            "unacked (held)": f"{r['unacked']:,}",
            "prefetch_count w1/w2": "/".join(str(v) for v in r["prefetch_count"].values()) if isinstance(r["prefetch_count"], dict) else "-",
            "lateness p50/p99 s (n)": f"{r['lateness_p50_s']:.3f}/{r['lateness_p99_s']:.3f} ({r['lateness_samples']})",
            "warm shutdown s w1/w2": "/".join("timeout" if v is None else f"{v:.1f}" for v in shut),
            "seed+ingest s": f"{r['ingest_s']:.0f}",
        })  # fmt: skip
    out = table(rows, list(rows[0]))
    if d.get("skipped"):
        out += "\n\nskipped: " + ", ".join(f"{s['jobs']} park={s['park']} ({s['why']})" for s in d["skipped"])
    return out


def detection(d: dict) -> str:
    m = d["model"]
    f5 = m["fixed5"]
    rows = []
    for name in ("fixed5", "default", "tuned", "cheap"):
        x = m.get(name)
        if x:
            rows.append({"arm (model, real s)": name, "p50 s": f(x["p50_s"], 1), "p95 s": f(x["p95_s"], 1), "p99 s": f(x["p99_s"], 1),
                         "GETs/job": f(x["gets_per_job"], 1), "GETs / fixed": f(x["gets_per_job"] / f5["gets_per_job"])})  # fmt: skip
    out = table(rows, list(rows[0]))
    out += f"\n\ntuned = {m['tuned_params']}\ncheap = {m['cheap_params']}\n\n"
    rows = []
    b = d["real"]
    for name, x in b.items():
        rows.append({
            "arm (real workers, x{:g})".format(d["factor"]): name, "detected": f"{x['detected']}/{x['jobs']}",
            "p50 s": f(x["p50_s"], 1), "p95 s": f(x["p95_s"], 1), "GETs/job": f(x["gets_per_job"], 1),
            "GETs / fixed": f(x["gets_per_job"] / b["fixed5"]["gets_per_job"]),
            "poll lateness p50/p99 ms (not scaled)": f"{f(x['poll_lateness_p50_ms'], 0)}/{f(x['poll_lateness_p99_ms'], 0)}",
            "hand-off p50/p95/p99 ms (n)": f"{f(x['handoff_p50_ms'], 0)}/{f(x['handoff_p95_ms'], 0)}/{f(x['handoff_p99_ms'], 0)} ({x['handoff_n']})",
        })  # fmt: skip
    return out + table(rows, list(rows[0]))


def handoff(d: dict) -> str:
    rows = [{"chain": k, "n": v["n"], "p50 ms": f(v["p50_ms"], 1), "p95 ms": f(v["p95_ms"], 1), "p99 ms": f(v["p99_ms"], 1),
             "max ms": f(v["max_ms"], 1)} for k, v in d["results"].items()]  # fmt: skip
    return table(rows, list(rows[0]))


def slots(d: dict) -> str:
    rows = [{"jobs": c["jobs"], "offered polls/s": f(c["target_polls_per_s"], 1), "achieved polls/s": f(c["polls_per_s"], 1),
             "lateness p50/p99 s": f"{f(c['lateness_p50_s'], 3)}/{f(c['lateness_p99_s'], 3)}", "sustained": c["sustained"]}
            for c in d["capacity"]]  # fmt: skip
    out = table(rows, list(rows[0]))
    demo = d["demo"]
    rows = [{"poller": k, "jobs": v["jobs"], "detection p50/max s": f"{f(v['p50_s'])}/{f(v['max_s'])}",
             "a no-op task sent 1 s in waits s": f(v["other_task_wait_s"])} for k, v in demo.items()]  # fmt: skip
    return out + "\n\n" + table(rows, list(rows[0])) + f"\n\njobs per slot (plugin, mean interval 5 s, 50 ms API): {d['jobs_per_slot_plugin']:g}"


def profile(d: dict) -> str:
    rows = [{"part (inclusive share of the pool child's samples)": k, "plugin": f"{100 * v:.1f}%",
             "baseline (a)": f"{100 * d['a']['parts'][k]:.1f}%"} for k, v in d["plugin"]["parts"].items()]  # fmt: skip
    out = table(rows, list(rows[0]))
    out += "\n\n" + table([{"frames": x["traceback_frames"], "ms per raise Ignore()": f(x["ms_per_ignore"])} for x in d["ignore_microbench"]],
                          ["frames", "ms per raise Ignore()"])  # fmt: skip
    return out


def main() -> int:
    for name, fn in (("throughput", throughput), ("inflight", inflight), ("detection", detection), ("handoff", handoff),
                     ("slots", slots), ("profile", profile)):  # fmt: skip
        d = load(f"{name}.json")
        if d:
            print(f"\n### {name}  (written {d.get('written_at')}, product {d.get('product_sha256_16')}, "
                  f"load {d['machine']['loadavg_start'][0]:.1f}->{d['machine']['loadavg_end'][0]:.1f})\n")
            print(fn(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
