"""Tracing's two ends that need no worker: the traceparent a job record keeps reaches every
publisher (the store's claims and hints hand it over), and without opentelemetry (or with nothing
sampling) every tracing call is the shared no-op and nothing is added to a record.

The traces themselves (one per job, linked poll spans, the depth bound) are tests/e2e/test_tracing.py.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator

import pytest
import redis

from seedance_worker import keys
from seedance_worker.engine import tracing
from seedance_worker.engine.store import JobStore

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
T0 = 100.0  # lease and park times far below any other test's, so no claim here takes another's job


@pytest.fixture
def store(redis_url: str) -> Iterator[JobStore]:
    s = JobStore(redis.Redis.from_url(redis_url, decode_responses=True))
    yield s
    for tid in IDS:
        s.r.delete(keys.job(tid))
        for index in (keys.DUE, keys.PARKED, keys.JOBS):
            s.r.zrem(index, tid)


IDS = [f"cgt-20260101000000-{uuid.uuid4().hex[:8]}" for _ in range(4)]


def test_the_traceparent_reaches_every_publisher_of_the_job(store: JobStore) -> None:
    """register_many keeps one traceparent per job (none for an untraced one); the dispatcher's
    claim, the sweeper's claim and an accepted callback hint each hand it back."""
    parked, overdue, hinted, untraced = IDS
    items = [(parked, "o1"), (overdue, "o2"), (hinted, "o3"), (untraced, "o4")]
    store.register_many(items, now=T0, lease_at=[T0 + 50, T0 + 1, 4e9, 4e9],
                        park_at=[T0 + 5, 0.0, 0.0, T0 + 5], fields={}, traces=[TRACE, TRACE, TRACE, None])  # fmt: skip
    assert store.get(parked).trace == TRACE  # type: ignore[union-attr]
    assert "trace" not in store.r.hgetall(keys.job(untraced))  # nothing at all for an untraced job

    due = {d.task_id: d.trace for d in store.claim_due(horizon=T0 + 10, limit=100, grace_s=10)}
    assert due[parked] == TRACE and due[untraced] is None
    swept = {o.task_id: o.trace for o in store.claim_overdue(before=T0 + 10, lease_at=4e9, grace_s=10)}
    assert swept[overdue] == TRACE
    hint = store.hint(hinted, status="running", seen="running@1", now=T0 + 2, min_interval_s=0.0)
    assert hint.verdict == "accepted" and hint.trace == TRACE


def test_with_nothing_sampling_no_traceparent_is_kept() -> None:
    """opentelemetry is installed here, but no SDK tracer provider samples this process's spans
    (none set, or the e2e test's switched off): a job gets no trace field."""
    with tracing.start_job("seedance.track", "cgt-x") as root:
        assert root.traceparent is None
    assert tracing.start_jobs("seedance.track", ["a", "b"]) == [None, None]


OFF = """
import sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
from seedance_worker.engine import tracing

assert not tracing.INSTALLED
shared = tracing.attached(None)
assert tracing.attached("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") is shared
assert tracing.poll_span("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "cgt-x", None) is shared
assert tracing.list_span(None, ["x"]) is shared
with shared as spans:
    assert spans is tracing.NOOP
    spans.status("running")
root_cm = tracing.start_job("seedance.track", "cgt-x")
assert tracing.start_job("seedance.submit") is root_cm
with root_cm as root:
    assert root.traceparent is None
assert tracing.start_jobs("seedance.track", ["a", "b"]) == [None, None]
import seedance_worker.track, seedance_worker.engine.poll, seedance_worker.engine.batch
print("ok")
"""


def test_without_opentelemetry_every_call_is_the_shared_no_op() -> None:
    """In a fresh interpreter where opentelemetry cannot be imported: the module and everything
    that uses it import, and each call returns the same no-op object without doing anything."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(OFF)], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_kept_traceparent_is_w3c_and_a_malformed_one_links_nothing() -> None:
    """What the record keeps reads back as the W3C propagator reads it; a damaged field gives an
    invalid context (no parent, no link), never an error in a poll."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    ctx = tracing.span_context(TRACE)
    theirs = trace.get_current_span(TraceContextTextMapPropagator().extract({"traceparent": TRACE}))
    assert ctx == theirs.get_span_context() and ctx.is_valid and ctx.trace_flags.sampled
    assert tracing.traceparent_of(trace.NonRecordingSpan(ctx)) == TRACE
    unsampled = trace.SpanContext(ctx.trace_id, ctx.span_id, is_remote=False, trace_flags=trace.TraceFlags(0))
    assert tracing.traceparent_of(trace.NonRecordingSpan(unsampled)) is None  # a dropped trace: not kept
    for bad in (
        "",
        "garbage",
        TRACE[:-1],
        TRACE.replace("-", "_"),
        "00-" + "0" * 32 + "-" + "0" * 16 + "-01",
    ):
        assert not tracing.span_context(bad).is_valid, bad
