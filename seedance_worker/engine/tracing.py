"""Tracing with OpenTelemetry, when it is installed (the ``otel`` extra): one trace per job.

A job gets a short root span when it is registered (``seedance.track``; ``seedance.submit`` around
the create and the track) and its record keeps that span's W3C traceparent (the ``trace`` field, 55
characters, only for a sampled root). Whatever process or thread later works on the job does it in
that context:

- every publish of the job's poll message outside a poll run (track(), the dispatcher, a batched
  round's end, the sweeper, a callback's early poll, a re-fired hand-off, a follower's wait) runs
  with the job's context attached, so Celery's instrumentation makes its ``apply_async/seedance.poll``
  span a child of the job's root;
- each poll run opens ``seedance.poll``, a child of the root linked to the run's own span (the
  ``run/seedance.poll`` that ``CeleryInstrumentor(use_span_links=True)`` starts as a root linked to
  the publish), carrying the remote task id, status and account; what the run publishes (its next
  poll, the downstream chain) is that span's child.

So a job's trace is ``root -> publish`` and ``root -> seedance.poll -> publish``: two levels below
the root whatever the number of polls. Without this, each poll's run would be the child of the
previous run's publish: two levels deeper per poll, ~11,000 for a 48 h job polled every 30 s. A
batched round's list call is a ``seedance.list`` span of its own (count, account, found), linked to
the roots of the jobs it read.

Without opentelemetry, without an SDK tracer provider, or for a job whose root was not sampled,
every function here returns a shared no-op at once, and nothing is added to the record.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from seedance_worker.settings import DEFAULT_ACCOUNT
from seedance_worker.version import __version__

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace

    INSTALLED = True
except ImportError:  # pragma: no cover  (the `otel` extra is not installed)
    INSTALLED = False

TRACE_FIELD = "trace"  # the job record's field: the W3C traceparent of the job's root span
POLL_SPAN = "seedance.poll"
LIST_SPAN = "seedance.list"
# Links on one seedance.list span (a list call names up to SEEDANCE_BATCH_SIZE <= 500 ids; the
# SDK keeps 128 links by default): seedance.count still says how many it read.
LIST_LINKS_MAX = 100

_tracer: Any = None


class Spans:
    """The spans a caller may annotate: seedance's own and, in a poll run, Celery's run span."""

    __slots__ = ("spans",)

    def __init__(self, spans: tuple[Any, ...] = ()) -> None:
        self.spans = spans

    def set(self, key: str, value: str | int | float | bool | None) -> None:
        if value is None:
            return
        for span in self.spans:
            span.set_attribute(key, value)

    def status(self, status: str | None) -> None:
        self.set("seedance.status", status)


NOOP = Spans()


class JobRoot:
    """A job's root span while it is registered; ``traceparent`` is what its record keeps."""

    __slots__ = ("spans", "traceparent")

    def __init__(self, traceparent: str | None, spans: Spans = NOOP) -> None:
        self.traceparent = traceparent
        self.spans = spans


class _Null:
    """The shared no-op context manager: what every function returns when tracing is off."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __enter__(self) -> Any:
        return self.value

    def __exit__(self, *exc: object) -> None:
        return None


# The root being registered in this context (submit() opens it, the track() inside joins it).
_open_root: contextvars.ContextVar[JobRoot | None] = contextvars.ContextVar("seedance_job_root", default=None)
_NULL_SPANS = _Null(NOOP)
_NULL_ROOT = _Null(JobRoot(None))


def tracer() -> Any:
    """seedance-worker's tracer (the global provider's: a proxy until the SDK's is set)."""
    global _tracer
    if _tracer is None:
        _tracer = otel_trace.get_tracer("seedance_worker", __version__)
    return _tracer


def account_label(account: str | None) -> str:
    return account or DEFAULT_ACCOUNT


def job_attributes(task_id: str | None, account: str | None) -> dict[str, str]:
    attrs = {"seedance.account": account_label(account)}
    if task_id:
        attrs["seedance.task_id"] = task_id
    return attrs


def span_context(traceparent: str) -> Any:
    """The (remote) span context a W3C traceparent names; invalid for a malformed one. Parsed here,
    without the propagator's regex and context: a list call parses up to LIST_LINKS_MAX of them."""
    parts = traceparent.split("-")
    try:
        if len(traceparent) != 55 or len(parts) != 4:
            raise ValueError(traceparent)
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return otel_trace.INVALID_SPAN_CONTEXT
    return otel_trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=otel_trace.TraceFlags(flags))


def _context(traceparent: str) -> Any:
    """The current context with the span ``traceparent`` names as the current span."""
    return otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(span_context(traceparent)))


def traceparent_of(span: Any) -> str | None:
    """The W3C traceparent of ``span``; None unless it is sampled (nothing kept for a dropped trace)."""
    ctx = span.get_span_context()
    if not (ctx.is_valid and ctx.trace_flags.sampled):
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


# --- a job's root ---------------------------------------------------------------------------------


def start_job(name: str, task_id: str | None = None, account: str | None = None) -> Any:
    """``with start_job("seedance.track", id, account) as root:`` keep ``root.traceparent`` in the
    record. A new root linked to the caller's span (a job outlives the request that made it by
    hours; its trace is its own), or the one already open (submit() around track())."""
    if not INSTALLED:
        return _NULL_ROOT
    return _job_root(name, task_id, account)


@contextmanager
def _job_root(name: str, task_id: str | None, account: str | None) -> Iterator[JobRoot]:
    outer = _open_root.get()
    if outer is not None:
        outer.spans.set("seedance.task_id", task_id)
        yield outer
        return
    caller = otel_trace.get_current_span().get_span_context()
    links = [otel_trace.Link(caller)] if caller.is_valid else None
    span = tracer().start_span(
        name, context=otel_context.Context(), links=links, attributes=job_attributes(task_id, account)
    )
    root = JobRoot(traceparent_of(span), Spans((span,)))
    token = _open_root.set(root)
    try:
        with otel_trace.use_span(span, end_on_exit=True):
            yield root
    finally:
        _open_root.reset(token)


def start_jobs(name: str, task_ids: Sequence[str], account: str | None = None) -> list[str | None]:
    """A root each for jobs registered together (track_many): their traceparents, in order."""
    if not INSTALLED:
        return [None] * len(task_ids)
    out: list[str | None] = []
    for task_id in task_ids:
        with _job_root(name, task_id, account) as root:
            out.append(root.traceparent)
    return out


# --- work on a job --------------------------------------------------------------------------------


class _Attached:
    __slots__ = ("ctx", "token")

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.token: Any = None

    def __enter__(self) -> None:
        self.token = otel_context.attach(self.ctx)

    def __exit__(self, *exc: object) -> None:
        otel_context.detach(self.token)


def attached(traceparent: str | None) -> Any:
    """``with attached(record.trace): publish...``: the job's context is the current one."""
    if not INSTALLED or not traceparent:
        return _NULL_SPANS
    return _Attached(_context(traceparent))


def poll_span(
    traceparent: str | None,
    task_id: str,
    account: str | None,
    *,
    expected: tuple[type[BaseException], ...] = (),
) -> Any:
    """A poll run's ``seedance.poll`` span under the job's root, linked to Celery's run span; both
    get the task id and account now and the status when the caller sets it. An exception in
    ``expected`` (a rescheduled or dropped copy, a typed generation failure) is no error."""
    if not INSTALLED:
        return _NULL_SPANS
    run = otel_trace.get_current_span()
    if not traceparent and not run.is_recording():
        return _NULL_SPANS
    return _poll_span(run, traceparent, task_id, account, expected)


@contextmanager
def _poll_span(
    run: Any,
    traceparent: str | None,
    task_id: str,
    account: str | None,
    expected: tuple[type[BaseException], ...],
) -> Iterator[Spans]:
    attrs = job_attributes(task_id, account)
    if not traceparent:  # a job registered without tracing: Celery's run span alone
        spans = Spans((run,))
        for key, value in attrs.items():
            spans.set(key, value)
        yield spans
        return
    link = run.get_span_context()
    span = tracer().start_span(
        POLL_SPAN,
        context=_context(traceparent),
        links=[otel_trace.Link(link)] if link.is_valid else None,
        attributes=attrs,
    )
    spans = Spans((span, run))
    for key, value in attrs.items():
        run.set_attribute(key, value)
    with otel_trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
        try:
            yield spans
        except expected:
            raise
        except Exception as exc:
            _fail(span, exc)
            raise


def _fail(span: Any, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def list_span(account: str | None, traceparents: Sequence[str | None]) -> Any:
    """A batched round's list call: ``seedance.list`` with the number of ids and the account,
    linked to the roots of (at most LIST_LINKS_MAX of) the jobs it reads."""
    if not INSTALLED:
        return _NULL_SPANS
    return _list_span(account, traceparents)


@contextmanager
def _list_span(account: str | None, traceparents: Sequence[str | None]) -> Iterator[Spans]:
    links: list[Any] = []
    for tp in traceparents:
        if len(links) >= LIST_LINKS_MAX:
            break
        ctx = span_context(tp) if tp else None
        if ctx is not None and ctx.is_valid:
            links.append(otel_trace.Link(ctx))
    attrs = {"seedance.account": account_label(account), "seedance.count": len(traceparents)}
    span = tracer().start_span(LIST_SPAN, links=links, attributes=attrs)
    with otel_trace.use_span(span, end_on_exit=True):
        yield Spans((span,))
