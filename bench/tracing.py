"""What tracing (seedance_worker/engine/tracing.py) costs per call, in the four states a process can be in.

Each state runs in a fresh interpreter, side by side in one run:

* ``not installed``: ``opentelemetry`` cannot be imported (the ``otel`` extra absent);
* ``API, no provider``: installed, no SDK tracer provider set (the API's no-op tracer);
* ``SDK, not sampled``: an SDK provider whose sampler drops every trace;
* ``SDK, sampled``: an SDK provider sampling everything, a SimpleSpanProcessor to an in-memory
  exporter (export cost included, network excluded).

Timed, per call (best of 5 repetitions, the empty loop's time subtracted): a poll run's span
(``poll_span`` + two attributes), a publish in the job's context (``attached``), a job's root at
track() (``start_job``), and a batched list call's span over 100 jobs (``list_span``). Each state
uses the traceparent its own track() would have kept (none unless sampled).

reproduce with: python bench/tracing.py            (quick: --quick)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, table, write_json

STATES = ("not installed", "API, no provider", "SDK, not sampled", "SDK, sampled")

SETUP = {
    "not installed": 'import sys\nsys.modules["opentelemetry"] = None\n',
    "API, no provider": "",
    "SDK, not sampled": textwrap.dedent("""
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
        trace.set_tracer_provider(TracerProvider(sampler=ALWAYS_OFF))
        """),
    "SDK, sampled": textwrap.dedent("""
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        EXPORTER = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
        trace.set_tracer_provider(provider)
        """),
}

TIMING = textwrap.dedent("""
    import json, time
    from seedance_worker.engine import tracing

    N = {n}
    TID = "cgt-20260101000000-abcdefgh"
    with tracing.start_job("seedance.track", TID) as root:
        TP = root.traceparent  # what this state's track() keeps in the record

    def clear():
        exporter = globals().get("EXPORTER")
        if exporter is not None:
            exporter.clear()  # the in-memory exporter would otherwise grow for the whole run

    def poll_run():
        with tracing.poll_span(TP, TID, None, expected=(KeyError,)) as spans:
            spans.set("seedance.read", "running")
            spans.status("running")

    def publish():
        with tracing.attached(TP):
            pass

    def job_root():
        with tracing.start_job("seedance.track", TID, None):
            pass

    TPS = [TP] * 100
    def list_call():
        with tracing.list_span(None, TPS) as spans:
            spans.set("seedance.found", 100)

    def empty():
        pass

    def best_ns(fn, n):
        runs = []
        for _ in range(5):
            clear()
            t = time.perf_counter_ns()
            for _ in range(n):
                fn()
            runs.append((time.perf_counter_ns() - t) / n)
        return min(runs)

    base = best_ns(empty, N)
    out = {{"installed": tracing.INSTALLED, "traceparent_kept": TP is not None}}
    for name, fn, n in (("poll_run", poll_run, N), ("publish", publish, N), ("job_root", job_root, N),
                        ("list_call_100", list_call, max(N // 20, 10))):
        out[name] = max(0.0, best_ns(fn, n) - base)
    print(json.dumps(out))
    """)


def run_state(state: str, n: int) -> dict[str, object]:
    code = SETUP[state] + TIMING.format(n=n)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    row: dict[str, object] = {"state": state, **json.loads(done.stdout.strip().splitlines()[-1])}
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--calls", type=int, default=20000)
    args = ap.parse_args()
    n = 500 if args.quick else args.calls
    rows = [run_state(state, n) for state in STATES]
    for row in rows:
        for key in ("poll_run", "publish", "job_root", "list_call_100"):
            row[f"{key}_us"] = round(float(row.pop(key)) / 1000, 2)  # type: ignore[arg-type]
    cols = ["state", "traceparent_kept", "poll_run_us", "publish_us", "job_root_us", "list_call_100_us"]
    print(table(rows, cols, f"tracing cost per call, microseconds (best of 5 x {n} calls)"))
    if not args.quick:
        path = write_json("tracing.json", {"rows": rows, "calls": n})
        print(f"wrote {path}")
    ok = [bool(r["traceparent_kept"]) for r in rows] == [False, False, False, True]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
