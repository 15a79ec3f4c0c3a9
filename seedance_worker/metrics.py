"""Prometheus metrics (``prometheus-client``), counted in every process and served by the worker.

Names (all prefixed ``seedance_``):

* ``seedance_polls_total{status}``: polls decided, by the remote status seen (or the error class)
* ``seedance_poll_lateness_seconds``: histogram, actual start minus scheduled time of a poll
* ``seedance_outcomes_total{status}``: jobs that reached their terminal Outcome
* ``seedance_http_responses_total{code}``: API answers by HTTP status (or timeout/connection)
* ``seedance_ratelimit_wait_seconds{kind}``: histogram of limiter holds (``slot`` / ``cooldown``)
* ``seedance_handoff_latency_seconds``: histogram, terminal poll -> first downstream task start
* ``seedance_downloaded_bytes_total{kind}``: bytes stored by ``download_video`` (video/last_frame)
* ``seedance_charged_tokens_total{model}``: completion tokens written to the ledger (once per job)
* ``seedance_intake_callbacks_total{result}``: callback posts the intake answered
* ``seedance_jobs_inflight`` / ``seedance_jobs_lease_expired``: read from Redis at scrape time
  (``ZCARD`` / ``ZCOUNT`` of ``seedance:due`` and ``seedance:parked``)

The endpoint listens on ``SEEDANCE_METRICS_ADDR`` (default 127.0.0.1: nothing is exposed beyond the
host unless asked; deploy/ sets 0.0.0.0 where Prometheus scrapes from another container or host).

Prefork workers count in their pool children, so a worker with ``SEEDANCE_METRICS_PORT`` runs
prometheus-client's multiprocess mode: on ``worker_init`` (main process, before the pool forks and
before any metric object exists: they are created lazily, on first use) ``PROMETHEUS_MULTIPROC_DIR``
is pointed at a fresh temporary directory unless the user set one, and the main process serves the
merged view. A child's live-gauge files are dropped on ``worker_process_shutdown``; the temporary
directory is removed on ``worker_shutdown``. Without a port everything still counts in-process
(plain in-memory values, nothing served). A metric call never raises into the caller.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from seedance_worker.settings import get_settings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_HANDOFF_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)


@dataclass
class _Metrics:
    polls: Any
    lateness: Any
    outcomes: Any
    http: Any
    ratelimit: Any
    handoff: Any
    downloaded: Any
    tokens: Any
    intake: Any


_lock = threading.Lock()
_metrics: _Metrics | None = None


def _build() -> _Metrics:
    from prometheus_client import Counter, Histogram

    return _Metrics(
        polls=Counter("seedance_polls", "Polls decided, by remote status or error class", ["status"]),
        lateness=Histogram(
            "seedance_poll_lateness_seconds",
            "Actual start minus scheduled time of a poll message",
            buckets=_TIME_BUCKETS,
        ),
        outcomes=Counter("seedance_outcomes", "Jobs that reached a terminal Outcome", ["status"]),
        http=Counter(
            "seedance_http_responses", "API calls answered, by HTTP status or transport failure", ["code"]
        ),
        ratelimit=Histogram(
            "seedance_ratelimit_wait_seconds",
            "Polls held back by the fleet-wide limiter (slot) or a 429 cool-down (cooldown)",
            ["kind"],
            buckets=_TIME_BUCKETS,
        ),
        handoff=Histogram(
            "seedance_handoff_latency_seconds",
            "Terminal poll to the start of the first downstream task",
            buckets=_HANDOFF_BUCKETS,
        ),
        downloaded=Counter("seedance_downloaded_bytes", "Bytes stored by download_video", ["kind"]),
        tokens=Counter("seedance_charged_tokens", "Completion tokens written to the ledger", ["model"]),
        intake=Counter("seedance_intake_callbacks", "Callback posts answered by the intake", ["result"]),
    )


def _m() -> _Metrics:
    global _metrics
    current = _metrics
    if current is None:
        with _lock:
            if _metrics is None:
                _metrics = _build()
            current = _metrics
    return current


def _safely(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # a metrics problem must never break a poll or a download
        log.debug("metric update failed", exc_info=True)


# --- the call sites (poll.py, client.py, download.py, charge.py, intake.py) -----------------------


def poll(status: str) -> None:
    """One poll decided: the remote status seen, or what went wrong (error class, 'ratelimited')."""
    _safely(lambda: _m().polls.labels(status=str(status)).inc())


def poll_lateness(seconds: float) -> None:
    """Actual start minus scheduled time of a poll message."""
    _safely(lambda: _m().lateness.observe(max(0.0, float(seconds))))


def outcome(status: str) -> None:
    """A job reached its terminal Outcome."""
    _safely(lambda: _m().outcomes.labels(status=str(status)).inc())


def http_response(code: str) -> None:
    """One API call answered: the HTTP status, or 'timeout' / 'connection' / 'malformed'."""
    _safely(lambda: _m().http.labels(code=str(code)).inc())


def ratelimit_wait(seconds: float, kind: str) -> None:
    """A poll was held back by the fleet-wide limiter ('slot') or a 429 cool-down ('cooldown')."""
    _safely(lambda: _m().ratelimit.labels(kind=str(kind)).observe(max(0.0, float(seconds))))


def handoff_latency(seconds: float) -> None:
    """Time from the terminal poll to the start of the first downstream task."""
    _safely(lambda: _m().handoff.observe(max(0.0, float(seconds))))


def downloaded_bytes(n: int, kind: str = "video") -> None:
    """Bytes of a file ``download_video`` stored (counted once, at the atomic commit)."""
    _safely(lambda: _m().downloaded.labels(kind=kind).inc(max(0, int(n))))


def charged_tokens(n: int | None, model: str | None) -> None:
    """Completion tokens of a ledger entry just written (not for an entry that already existed)."""
    if not n:
        return
    _safely(lambda: _m().tokens.labels(model=str(model or "unknown")).inc(int(n)))


def intake_callback(result: str) -> None:
    """A callback post answered: accepted, duplicate, unchanged, pending, scheduled, ignored,
    wrong_job, bad_token, not_found, bad_request, error; or a connection refused over the cap (busy)
    or closed at a read deadline (timeout)."""
    _safely(lambda: _m().intake.labels(result=result).inc())


# --- in-flight jobs, read from Redis at scrape time ------------------------------------------------


InflightCounts = Callable[[float], tuple[int, int]]


class InflightCollector:
    """``seedance_jobs_inflight`` and ``seedance_jobs_lease_expired``, read at scrape time from
    ``counts(now)`` (the job store's, handed in by the worker wiring)."""

    def __init__(self, counts: InflightCounts) -> None:
        self.counts = counts

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            inflight, expired = self.counts(time.time())
        except Exception as exc:
            log.debug("metrics: cannot read the due index: %s", exc)
            return []
        return [
            GaugeMetricFamily(
                "seedance_jobs_inflight", "Jobs polling or handing off (due + parked)", value=inflight
            ),
            GaugeMetricFamily(
                "seedance_jobs_lease_expired",
                "Jobs whose lease ran out and that wait for the sweeper",
                value=expired,
            ),
        ]


# --- serving --------------------------------------------------------------------------------------


class _State:
    server: Any = None
    thread: threading.Thread | None = None
    port: int | None = None
    addr: str | None = None
    owned_dir: str | None = None
    pid: int | None = None  # the process that serves (forked children inherit a copy of this state)


_state = _State()


def multiprocess_enabled() -> bool:
    try:
        from prometheus_client import values
    except ImportError:
        return False
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def enable_multiprocess() -> str:
    """Switch this process (and the children it forks later) to multiprocess mode; returns the dir.

    Must run before any metric value exists in a process that will count; metric objects already
    built here (if any) are dropped and rebuilt on next use.
    """
    global _metrics
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        path = tempfile.mkdtemp(prefix="seedance-metrics-")
        os.environ[MULTIPROC_ENV] = path
        _state.owned_dir = path
        _state.pid = os.getpid()
    os.makedirs(path, exist_ok=True)
    from prometheus_client import REGISTRY, values

    if not getattr(values.ValueClass, "_multiprocess", False):
        # prometheus_client picks the value class when it is first imported; re-pick it now.
        values.ValueClass = values.get_value_class()
    with _lock:
        if _metrics is not None:
            for metric in vars(_metrics).values():
                with contextlib.suppress(KeyError):
                    REGISTRY.unregister(metric)
            _metrics = None
    return path


def serving_registry(inflight: InflightCounts | None = None) -> Any:
    """What the endpoint shows: the merged per-process files (multiprocess) or this process."""
    from prometheus_client import REGISTRY, CollectorRegistry

    if multiprocess_enabled():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
        _m()  # the metric families exist (at zero) from the first scrape on
    if inflight is not None:
        registry.register(InflightCollector(inflight))
    return registry


def start_server(port: int, addr: str = "127.0.0.1", inflight: InflightCounts | None = None) -> int:
    """Serve ``/metrics`` on ``port`` (0: any free port) from a daemon thread; returns the port."""
    from prometheus_client import start_http_server

    if _state.server is not None:
        return int(_state.port or 0)
    server, thread = start_http_server(port, addr=addr, registry=serving_registry(inflight))
    _state.server, _state.thread = server, thread
    _state.port = int(server.server_address[1])
    _state.addr = addr
    _state.pid = os.getpid()
    return _state.port


def stop_server() -> None:
    """Stop serving and remove the temporary multiprocess dir; a no-op outside the serving process."""
    if _state.pid is not None and _state.pid != os.getpid():
        return
    if _state.server is not None:
        _state.server.shutdown()
        _state.server.server_close()
        _state.server = None
        _state.thread = None
        _state.port = None
        _state.addr = None
    if _state.owned_dir:
        shutil.rmtree(_state.owned_dir, ignore_errors=True)
        if os.environ.get(MULTIPROC_ENV) == _state.owned_dir:
            del os.environ[MULTIPROC_ENV]
        _state.owned_dir = None


def served_port() -> int | None:
    return _state.port


# --- what the worker's signal handlers call (wiring/signals.py) ----------------------------------


def metrics_port() -> int | None:
    try:
        return get_settings().metrics_port
    except Exception:  # a bad setting stops the worker elsewhere, naming it
        return None


def metrics_addr() -> str:
    try:
        return get_settings().metrics_addr
    except Exception:  # a bad setting stops the worker elsewhere, naming it
        return "127.0.0.1"


def start_for_worker(inflight: InflightCounts | None = None) -> None:
    """Main process, before the pool forks: serve the merged view, or refuse to start naming why."""
    port = metrics_port()
    if port is None:
        return
    addr = metrics_addr()
    path = enable_multiprocess()
    try:
        bound = start_server(port, addr=addr, inflight=inflight)
    except OSError as exc:
        print(
            f"seedance-worker: refusing to start: cannot serve metrics on SEEDANCE_METRICS_ADDR={addr} "
            f"SEEDANCE_METRICS_PORT={port}: {exc.strerror or exc}",
            file=sys.stderr,
            flush=True,
        )
        stop_server()
        raise SystemExit(2) from None
    log.debug("metrics on %s:%d/metrics (multiprocess dir %s)", addr, bound, path)


def announce() -> None:
    # Logging is configured after worker_init; say where the metrics are once it is.
    if _state.port is not None and _state.pid == os.getpid():
        log.info(
            "metrics on %s:%d/metrics (multiprocess dir %s)",
            _state.addr,
            _state.port,
            os.environ.get(MULTIPROC_ENV),
        )


def child_exited(pid: int | None) -> None:
    if not multiprocess_enabled():
        return
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())
    except Exception:
        log.debug("mark_process_dead failed", exc_info=True)


def task_started(task: Any) -> None:
    """The first downstream task of a hand-off carries ``seedance_terminal_at`` (handoff.py)."""
    request = getattr(task, "request", None)
    terminal_at = getattr(request, "seedance_terminal_at", None)
    if terminal_at is None or getattr(request, "retries", None):
        return
    delivery = getattr(request, "delivery_info", None) or {}
    if delivery.get("redelivered"):
        return
    try:
        handoff_latency(time.time() - float(terminal_at))
    except (TypeError, ValueError):
        return
