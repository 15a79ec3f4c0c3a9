"""Tracing (README: Tracing): one trace per job, its polls linked spans, the depth bounded.

The OpenTelemetry SDK with an in-memory exporter and CeleryInstrumentor(use_span_links=True) in
this process, an in-process worker (threads pool) on the seedance queues with the dispatcher
thread, the simulator over HTTP. Per-job polls (SEEDANCE_STATUS_SOURCE=get: a GET and a message
per poll) and batched status (list calls in the dispatcher's rounds).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from celery import chain
from celery.contrib.testing.worker import start_worker
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

import seedance_worker
from seedance_worker.engine.dispatch import start_dispatcher, stop_dispatcher
from seedance_worker.engine.store import get_store
from seedance_worker.engine.tracing import span_context
from seedance_worker.settings import get_settings
from seedance_worker.testing.simulator import SimConfig, Simulator
from seedance_worker.track import track_many
from tests.support.e2e_tasks import canvas_step
from tests.support.env import configure
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

# What the README states: every span of a job's trace is at most this many levels below its root,
# however many polls the job takes (root -> publish, root -> seedance.poll -> publish).
DEPTH_MAX = 2
SCRIPT = [("queued", 1.0), ("running", 1.2), ("succeeded", None)]


class Switch(Sampler):
    """Everything sampled while a test here runs; nothing before or after. The tracer provider is
    process-wide and set once: off, the suite's other tests run as if tracing were not set up."""

    on = False

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if not self.on:
            return SamplingResult(Decision.DROP)
        return ALWAYS_ON.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return "tests.e2e.test_tracing.Switch"


SWITCH = Switch()
EXPORTER = InMemorySpanExporter()


def _provider() -> None:
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider) and current.sampler is SWITCH:
        return
    provider = TracerProvider(sampler=SWITCH)
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider, "another tracer provider was set in this process"


@pytest.fixture(params=["get"])
def traced(request: pytest.FixtureRequest, env: pytest.MonkeyPatch, redis_url: str) -> Iterator[Simulator]:
    """The simulator, tracing on, an in-process worker; the test's ``traced`` parameter is the
    status source, "-nolinks" after it instrumenting without span links."""
    _provider()
    source, _, nolinks = str(request.param).partition("-")
    sim = Simulator(config=SimConfig()).start()
    configure(env, redis_url, api_base_url=sim.base_url, on_succeeded="", on_failed="",
              status_source=source, batch_round_s="0.5", batch_queued_interval_s="0.5",
              accounts=json.dumps({"studio": {"api_key": "sk-studio-not-a-secret"}}))  # fmt: skip
    app = seedance_worker.app
    settings = get_settings()
    instrumentor = CeleryInstrumentor()
    instrumentor.instrument(use_span_links=not nolinks)
    SWITCH.on = True
    EXPORTER.clear()
    root_logger = logging.getLogger()
    logging_before = (root_logger.level, list(root_logger.handlers))  # the worker sets logging up
    try:
        with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False,
                          queues=[settings.poll_queue, settings.post_queue]):  # fmt: skip
            start_dispatcher()
            try:
                yield sim
            finally:
                stop_dispatcher()
    finally:
        root_logger.setLevel(logging_before[0])
        root_logger.handlers[:] = logging_before[1]
        SWITCH.on = False
        instrumentor.uninstrument()
        EXPORTER.clear()
        sim.stop()


# --- reading the exported spans --------------------------------------------------------------------


@dataclass
class JobTrace:
    root: ReadableSpan
    spans: list[ReadableSpan]  # every span of the root's trace
    polls: list[ReadableSpan]  # its seedance.poll spans, in start order

    def depth(self, span: ReadableSpan) -> int:
        by_id = {s.context.span_id: s for s in self.spans}
        d = 0
        while span.parent is not None:
            span = by_id[span.parent.span_id]
            d += 1
        return d


def _spans() -> list[ReadableSpan]:
    """Every span, once each published message has been run: a handle resolves when the chain's
    seedance.complete ran, possibly before the terminal poll that replaced itself ended its spans."""

    def settled() -> list[ReadableSpan] | None:
        spans = list(EXPORTER.get_finished_spans())
        runs = sum(s.name.startswith("run/") for s in spans)
        return spans if runs == sum(s.name.startswith("apply_async/") for s in spans) else None

    return wait_for(settled, 10, "a run span for every publish")


def _job_trace(spans: list[ReadableSpan], tid: str) -> JobTrace:
    """The trace of job ``tid``: the one its record names, with its root and its poll spans."""
    record = get_store().get(tid)
    assert record is not None and record.trace, f"{tid}: no traceparent in the job record"
    assert len(record.trace) == 55  # the W3C traceparent, and nothing more, in the record
    ctx = span_context(record.trace)
    roots = [s for s in spans if s.context.span_id == ctx.span_id]
    assert len(roots) == 1 and roots[0].parent is None, f"{tid}: the record's span is not a root"
    in_trace = [s for s in spans if s.context.trace_id == ctx.trace_id]
    polls = sorted((s for s in in_trace if s.name == "seedance.poll"), key=lambda s: s.start_time or 0)
    return JobTrace(roots[0], in_trace, polls)


def _runs_linked_from(job: JobTrace, spans: list[ReadableSpan], *, entered: bool) -> list[ReadableSpan]:
    """Each seedance.poll span's link: Celery's run span, a root of its own linked to a publish of
    the job's own trace (but the first run of a job ``entered`` from a user's chain, whose link is
    to that chain's publish)."""
    by_id = {s.context.span_id: s for s in spans}
    publishes = {s.context.span_id for s in job.spans if s.name == "apply_async/seedance.poll"}
    runs = []
    for i, poll in enumerate(job.polls):
        assert len(poll.links) == 1, poll.links
        run = by_id[poll.links[0].context.span_id]
        assert run.name == "run/seedance.poll" and run.parent is None
        assert run.context.trace_id != job.root.context.trace_id  # use_span_links: not nested
        (published,) = [by_id[link.context.span_id] for link in run.links]
        assert published.name == "apply_async/seedance.poll"
        assert (
            (published.context.span_id not in publishes)
            if entered and i == 0
            else (published.context.span_id in publishes)
        )
        runs.append(run)
    return runs


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _check_job(
    job: JobTrace, tid: str, spans: list[ReadableSpan], *, entered: bool = False, account: str = "default"
) -> None:
    """What every job's trace shows: depth bounded, every poll a child of the root with the task id,
    account and status, linked to its run span (which carries them too)."""
    assert max(job.depth(s) for s in job.spans) <= DEPTH_MAX, [(s.name, job.depth(s)) for s in job.spans]
    assert job.polls, f"{tid}: no seedance.poll span"
    for poll in job.polls:
        assert poll.parent is not None and poll.parent.span_id == job.root.context.span_id
        attrs = _attrs(poll)
        assert attrs["seedance.task_id"] == tid and attrs["seedance.account"] == account
        assert "seedance.status" in attrs, attrs
    assert _attrs(job.polls[-1])["seedance.status"] == "succeeded"
    for run, poll in zip(_runs_linked_from(job, spans, entered=entered), job.polls, strict=True):
        for key in ("seedance.task_id", "seedance.account", "seedance.status"):
            assert _attrs(run)[key] == _attrs(poll)[key], key
    publishes = [s for s in job.spans if s.name == "apply_async/seedance.poll"]
    assert publishes and all(job.depth(p) in (1, 2) for p in publishes)


# --- per-job polls ---------------------------------------------------------------------------------


def test_per_job_polls_are_one_trace_per_job_with_linked_poll_spans(traced: Simulator) -> None:
    """Jobs through track() (one of them an account's), submit(), track() under a caller's span,
    and a user's chain: each is one trace, one seedance.poll span per GET of its task (several
    each: queued, running, the end), children of the job's root and linked to their run spans; no
    span deeper than DEPTH_MAX."""
    sim = traced
    tracked = [sim.add_task(SCRIPT) for _ in range(2)]
    handles = [seedance_worker.track(tracked[0]), seedance_worker.track(tracked[1], account="studio")]
    with trace.get_tracer("tests").start_as_current_span("caller") as caller:
        under_caller = sim.add_task(SCRIPT)
        handles.append(seedance_worker.track(under_caller))
    submitted, handle = seedance_worker.submit("seedance-1-5-pro-251215", [{"type": "text", "text": "a fox"}])
    handles.append(handle)
    in_chain = sim.add_task(SCRIPT)
    chained = chain(seedance_worker.poll.s(in_chain), canvas_step.s(tag="traced")).apply_async()
    assert [h.get(timeout=60)["status"] for h in handles] == ["succeeded"] * 4
    assert chained.get(timeout=60)["status"] == "succeeded"

    spans = _spans()
    tids = [*tracked, under_caller, submitted, in_chain]
    jobs = {tid: _job_trace(spans, tid) for tid in tids}
    assert len({j.root.context.trace_id for j in jobs.values()}) == len(tids)  # one trace per job
    gets = sim.requests(kind="get")
    for tid, job in jobs.items():
        _check_job(
            job, tid, spans, entered=tid == in_chain, account="studio" if tid == tracked[1] else "default"
        )
        assert len(job.polls) == len([g for g in gets if g.task_id == tid]) >= 3, tid  # a span per poll
        statuses = [_attrs(p)["seedance.status"] for p in job.polls]
        assert "queued" in statuses and "running" in statuses, statuses
    assert jobs[tracked[0]].root.name == "seedance.track" and jobs[in_chain].root.name == "seedance.track"
    assert jobs[submitted].root.name == "seedance.submit"  # the create and its track() in one root
    assert _attrs(jobs[submitted].root)["seedance.task_id"] == submitted
    # A job outlives its caller: its own trace, linked to the caller's span.
    root = jobs[under_caller].root
    assert root.context.trace_id != caller.get_span_context().trace_id
    assert [link.context.span_id for link in root.links] == [caller.get_span_context().span_id]


# --- batched status --------------------------------------------------------------------------------


@pytest.mark.parametrize("traced", ["batch"], indirect=True)
def test_batched_jobs_are_one_trace_each_and_list_calls_link_to_them(traced: Simulator) -> None:
    """Batched status: the non-terminal reads are list calls, each a seedance.list span (count,
    account) linked to the roots of the jobs it read; a job's end is its poll, a child of its root
    (published by the dispatcher thread in the job's context), depth still bounded."""
    sim = traced
    tids = [sim.add_task(SCRIPT) for _ in range(6)]
    handles = [*track_many(tids[:4]), *(seedance_worker.track(t) for t in tids[4:])]
    assert [h.get(timeout=60)["status"] for h in handles] == ["succeeded"] * 6
    assert sim.requests(kind="get") == []  # every read was a list call

    spans = _spans()
    lists = [s for s in spans if s.name == "seedance.list"]
    assert lists and all(_attrs(s)["seedance.account"] == "default" for s in lists)
    assert sum(int(_attrs(s)["seedance.count"]) for s in lists) >= 2 * len(tids)  # queued, running
    linked = {link.context.span_id for s in lists for link in s.links}
    jobs = {tid: _job_trace(spans, tid) for tid in tids}
    assert len({j.root.context.trace_id for j in jobs.values()}) == len(tids)
    for tid, job in jobs.items():
        _check_job(job, tid, spans)
        assert job.root.context.span_id in linked, f"{tid}: no list call linked to its root"
        assert len(job.polls) == 1  # only the end is a poll message; the reads were list calls


# --- without span links ----------------------------------------------------------------------------


@pytest.mark.parametrize("traced", ["get-nolinks"], indirect=True)
def test_without_span_links_the_depth_is_bounded_still(traced: Simulator) -> None:
    """CeleryInstrumentor() without use_span_links (or a release before 0.65b0, which has no such
    option) makes each run a child of its publish. The job's polls still do not nest: each
    seedance.poll is a child of the root, each run at most one level under its publish, so the
    whole trace stays within DEPTH_MAX + 1 (the run of the hand-off's seedance.complete)."""
    sim = traced
    tids = [sim.add_task(SCRIPT) for _ in range(2)]
    handles = [seedance_worker.track(t) for t in tids]
    assert [h.get(timeout=60)["status"] for h in handles] == ["succeeded"] * 2
    spans = _spans()
    gets = sim.requests(kind="get")
    for tid in tids:
        job = _job_trace(spans, tid)
        assert max(job.depth(s) for s in job.spans) <= DEPTH_MAX + 1
        runs = [s for s in job.spans if s.name == "run/seedance.poll"]
        assert len(job.polls) == len(runs) == len([g for g in gets if g.task_id == tid]) >= 3
        assert all(p.parent is not None and p.parent.span_id == job.root.context.span_id for p in job.polls)
        assert {_attrs(r)["seedance.status"] for r in runs} >= {"queued", "running", "succeeded"}
