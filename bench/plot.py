"""The scaling plot of the README's performance section, from bench/results/*.json.

Panels: worker RSS and Redis bytes per job against in-flight jobs (parking OFF vs ON, inflight.json);
achieved poll rate against offered poll rate per job count (slots.json); throughput of the plugin
and of Celery's ceiling (throughput.json); detection GETs vs p95 delay (detection.json).

reproduce with: python bench/plot.py   (after the other scripts; --quick reads the *_quick.json)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict | None:
    p = RESULTS / name
    return json.loads(p.read_text()) if p.exists() else None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    suf = "_quick" if a.quick else ""
    inflight, slots, tp, det = (load(f"{n}{suf}.json") for n in ("inflight", "slots", "throughput", "detection"))
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    ax = axes[0][0]
    if inflight:
        for mode, style in (("before", "o--"), ("after", "s-")):
            runs = sorted((r for r in inflight["runs"] if r["mode"].startswith(mode)), key=lambda r: r["jobs"])
            if not runs:
                continue
            xs = [r["jobs"] for r in runs]
            ax.plot(xs, [max(p["main_mb"] for p in r["rss_peak"].values()) for r in runs], style,
                    label=f"worker main RSS, parking {'OFF' if mode == 'before' else 'ON'}")
            ax.plot(xs, [max(p["child_mb"] for p in r["rss_peak"].values()) for r in runs], style, alpha=0.5,
                    label=f"pool child RSS, parking {'OFF' if mode == 'before' else 'ON'}")
        ax.axhline(512, color="red", lw=0.8, ls=":", label="goal 512 MB/process")
        ax.set_xscale("log")
        ax.set_xlabel("jobs in flight")
        ax.set_ylabel("MB (peak, max over the 2 workers)")
        ax.set_title("Worker memory vs jobs in flight")
        ax.legend(fontsize=7)
    ax = axes[0][1]
    if inflight:
        for mode, style in (("before", "o--"), ("after", "s-")):
            runs = sorted((r for r in inflight["runs"] if r["mode"].startswith(mode)), key=lambda r: r["jobs"])
            if runs:
                ax.plot([r["jobs"] for r in runs], [r["redis_bytes_per_job"] for r in runs], style,
                        label=f"Redis B/job, parking {'OFF' if mode == 'before' else 'ON'}")
        ax.axhline(2048, color="red", lw=0.8, ls=":", label="goal 2 KB/job")
        ax.set_xscale("log")
        ax.set_xlabel("jobs in flight")
        ax.set_ylabel("bytes per job (used_memory - empty)")
        ax.set_title("Redis memory per in-flight job")
        ax.legend(fontsize=7)
    ax = axes[1][0]
    if slots:
        cap = slots["capacity"]
        ax.plot([c["target_polls_per_s"] for c in cap], [c["polls_per_s"] for c in cap], "o-", label="plugin achieved")
        mx = max(c["target_polls_per_s"] for c in cap)
        ax.plot([0, mx], [0, mx], "k:", lw=0.8, label="offered (jobs / 5 s)")
        for c in cap:
            ax.annotate(f"{c['jobs']} jobs\np99 late {c['lateness_p99_s']:.2f}s", (c["target_polls_per_s"], c["polls_per_s"]),
                        fontsize=6, textcoords="offset points", xytext=(4, -14))
        ax.set_xlabel("offered polls/s")
        ax.set_ylabel("achieved polls/s")
        ax.set_title("One worker, 2 slots, 50 ms API: polls/s vs jobs tracked")
        ax.legend(fontsize=7)
    ax = axes[1][1]
    if tp:
        labels, vals, errs_lo, errs_hi = [], [], [], []
        for c in tp["configs"]:
            for arm in ("a", "a_get", "plugin"):
                s = c["summary"][arm]["rate"]
                labels.append(f"{c['config']}\n{arm}")
                vals.append(s["median"])
                errs_lo.append(s["median"] - s["min"])
                errs_hi.append(s["max"] - s["median"])
        ax.bar(range(len(vals)), vals, yerr=[errs_lo, errs_hi], capsize=3,
               color=["#999", "#bbb", "#3a7"] * (len(vals) // 3))
        ax.set_xticks(range(len(vals)), labels, fontsize=7)
        ax.set_ylabel("task runs / s (one worker; min-max of repetitions)")
        ax.set_title("Throughput: plugin vs Celery's own reschedule ceiling (a)")
    fig.suptitle("seedance-worker scaling (2 shared vCPUs; see bench/README.md)")
    fig.tight_layout()
    out = RESULTS / ("scaling_quick.png" if a.quick else "scaling.png")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    if det:
        fig2, ax = plt.subplots(figsize=(6, 4.5))
        fr = det["model"]["frontier"]
        ax.plot([f["gets_ratio"] for f in fr], [f["p95_s"] for f in fr], "o-", label="grid frontier (model)")
        f5 = det["model"]["fixed5"]
        for name in ("default", "tuned", "cheap"):
            m = det["model"].get(name)
            if m:
                ax.plot(m["gets_per_job"] / f5["gets_per_job"], m["p95_s"], "s", label=name)
        ax.plot(1.0, f5["p95_s"], "k^", label="fixed 5 s (c)")
        ax.axvline(1 / 3, color="red", ls=":", lw=0.8)
        ax.axhline(f5["p95_s"], color="red", ls=":", lw=0.8)
        ax.set_xlabel("GETs per job / fixed 5 s")
        ax.set_ylabel("p95 detection delay (s)")
        ax.set_title("Schedule: GETs vs detection delay")
        ax.legend(fontsize=7)
        fig2.tight_layout()
        out2 = RESULTS / ("detection_quick.png" if a.quick else "detection.png")
        fig2.savefig(out2, dpi=110)
        print(f"wrote {out2}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
