"""``Simulator``: the facade that wires the parts together (config -> faults, task book, callbacks,
downloads, task API -> HTTP front) and runs the server and ticker threads.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from seedance_worker.testing.simulator.callbacks import Callbacks
from seedance_worker.testing.simulator.config import (
    API_PREFIX,
    CallbackRecord,
    RequestKind,
    RequestRecord,
    Shared,
    SimConfig,
)
from seedance_worker.testing.simulator.downloads import Downloads
from seedance_worker.testing.simulator.endpoints import TaskApi
from seedance_worker.testing.simulator.faults import FaultGate
from seedance_worker.testing.simulator.server import Front, ResponseObserver, Server, open_server
from seedance_worker.testing.simulator.state import Jobs, TaskBook
from seedance_worker.testing.simulator.task import snapshot
from seedance_worker.testing.simulator.urls import UrlSigner


def _scripted_request(
    model: str,
    content: list[dict[str, Any]] | None,
    callback_url: str | None,
    return_last_frame: bool,
    fields: Mapping[str, Any],
) -> dict[str, Any]:
    """The create request a scripted task pretends it came from."""
    req = {k: v for k, v in fields.items() if v is not None}
    req["model"] = model
    req["content"] = content or [{"type": "text", "text": "simulated task"}]
    if callback_url:
        req["callback_url"] = callback_url
    if return_last_frame:
        req["return_last_frame"] = True
    return req


class Simulator:
    """The Ark task API on a real socket.  See the package docstring."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        config: SimConfig | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        cfg = dataclasses.replace(config) if config is not None else SimConfig()
        self._shared = Shared(config=cfg, clock=clock or time.time)
        self._faults = FaultGate(cfg)
        self._callbacks = Callbacks(self._shared)
        signer = UrlSigner(self._shared, self._own_url)
        self._book = TaskBook(self._shared, signer, self._callbacks, self._purged)
        self._downloads = Downloads(self._shared, self._book, self._faults, signer)
        self._front = Front(self._shared, TaskApi(self._shared, self._book, self._faults), self._downloads)
        self._server: Server | None = None
        self._threads: list[threading.Thread] = []

    def _own_url(self) -> str:
        return self.url if self._server is not None else "http://127.0.0.1:0"

    def _purged(self, task_id: str) -> None:
        self._faults.forget(task_id)
        self._downloads.forget(task_id)

    # ---- life cycle ------------------------------------------------------------------------------

    def start(self) -> Simulator:
        if self._server is not None:
            return self
        server = open_server(self.host, self._requested_port, self._front)
        self._server = server
        self._shared.stop.clear()
        serve = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="seedance-sim-http", daemon=True
        )
        ticker = threading.Thread(target=self._book.ticker, name="seedance-sim-ticker", daemon=True)
        self._threads = [serve, ticker]
        serve.start()
        ticker.start()
        return self

    def stop(self) -> None:
        server = self._server
        if server is None:
            return
        self._shared.stop.set()
        server.shutdown()
        server.server_close()
        with self._shared.lock:
            conns = list(self._front.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []
        self._server = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + API_PREFIX

    # ---- configuration and fault control ---------------------------------------------------------

    @property
    def config(self) -> SimConfig:
        """A copy of the current configuration."""
        return dataclasses.replace(self._shared.config)

    def configure(self, **kw: Any) -> SimConfig:
        """Change configuration fields at runtime (thread-safe); returns the new configuration."""
        names = {f.name for f in dataclasses.fields(SimConfig)}
        unknown = set(kw) - names
        if unknown:
            raise TypeError(f"unknown SimConfig fields: {sorted(unknown)}")
        with self._shared.lock:
            new = dataclasses.replace(self._shared.config, **kw)
            if "seed" in kw:
                self._faults.reseed(new.seed)
            if {"rps_limit", "rps_burst", "list_rps_limit", "list_rps_burst"} & set(kw):
                self._faults.refill(new)
            if "max_log_records" in kw:
                self._front.log = collections.deque(self._front.log, maxlen=new.max_log_records)
            self._shared.config = new
            self._book.reconsider()
            return dataclasses.replace(new)

    def burst_429(self, duration_s: float, retry_after_s: int = 1) -> None:
        """Answer every task-API request with 429 + ``Retry-After`` for ``duration_s`` seconds."""
        with self._shared.lock:
            self._faults.burst(duration_s, retry_after_s)

    def rate_limit_task(
        self,
        task_id: str,
        retry_after_s: int = 3,
        until: float | None = None,
        *,
        duration_s: float | None = None,
    ) -> None:
        """Make GET/DELETE of one task answer 429 + ``Retry-After``.

        ``until`` is a timestamp on the simulator clock (``time.time()`` by default), ``duration_s``
        is relative (real seconds); with neither, until ``clear_rate_limits()``.
        """
        now_mono = time.monotonic()
        if until is not None:
            end = now_mono + (until - self._shared.clock())
        elif duration_s is not None:
            end = now_mono + duration_s
        else:
            end = math.inf
        with self._shared.lock:
            self._faults.limit_task(task_id, end, retry_after_s)

    def clear_rate_limits(self) -> None:
        with self._shared.lock:
            self._faults.clear()

    # ---- observing responses ---------------------------------------------------------------------

    def add_response_observer(self, fn: ResponseObserver) -> None:
        """Call ``fn(request_id, status, headers)`` for every response recorded in ``requests()``.

        It runs on the handler thread just before the response is written, so whatever it keeps is
        there by the time the client has the answer.  ``headers`` is a read-only mapping of the
        headers the simulator set, spelled as sent (``"Retry-After"``, ``"X-Request-Id"``, ...; the
        ``Server`` and ``Date`` that ``http.server`` adds are not in it).  ``fn`` must be quick and
        must not raise: an exception aborts that response like any other handler error.
        """
        with self._shared.lock:
            self._front.observers = (*self._front.observers, fn)

    def remove_response_observer(self, fn: ResponseObserver) -> None:
        """Stop calling ``fn`` (a no-op when it was never added)."""
        with self._shared.lock:
            self._front.observers = tuple(o for o in self._front.observers if o != fn)

    # ---- tasks for tests -------------------------------------------------------------------------

    def add_task(
        self,
        status_script: Sequence[tuple[str, float | None]] | None = None,
        *,
        model: str = "seedance-1-5-pro-251215",
        task_id: str | None = None,
        fate: str | None = None,
        usage_tokens: int | None = None,
        callback_url: str | None = None,
        return_last_frame: bool = False,
        error_code: str | None = None,
        error_message: str | None = None,
        content: list[dict[str, Any]] | None = None,
        video_content_type: str | None = None,
        video_body: bytes | None = None,
        video_bytes: int | None = None,
        drop_connection_after_bytes: int | None = None,
        response_extra: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> str:
        """Create a task directly (no HTTP, no validation) and return its id.

        ``status_script``: ``[(status, duration_s), ..., (final_status, None)]``; statuses may be any
        string.  Without a script the task follows the configured queued/running durations and then
        ``fate`` (default ``SimConfig.default_fate``).  ``fields`` are create-request fields that get
        echoed (``resolution``, ``ratio``, ``duration``, ``service_tier``, ``execution_expires_after``,
        ``priority``, ``safety_identifier``, ``seed``, ``generate_audio`` ...).  ``video_*`` and
        ``drop_connection_after_bytes`` override how this task's video is served;
        ``response_extra`` is merged into every GET body.
        """
        cfg = self._shared.config
        script = list(status_script) if status_script else None
        if script is None:
            script = [("queued", cfg.queued_s), ("running", cfg.running_s), (fate or cfg.default_fate, None)]
        req = _scripted_request(model, content, callback_url, return_last_frame, fields)
        overrides = {
            key: val
            for key, val in (
                ("video_content_type", video_content_type),
                ("video_body", video_body),
                ("video_bytes", video_bytes),
                ("drop_connection_after_bytes", drop_connection_after_bytes),
            )
            if val is not None
        }

        def op(now: float, jobs: Jobs) -> str:
            return self._book.new_task_locked(
                now, req, script, fate=script[-1][0], usage_tokens=usage_tokens, error_code=error_code,
                error_message=error_message, task_id=task_id, overrides=overrides,
                response_extra=dict(response_extra or {}), jobs=jobs,
            ).id  # fmt: skip

        return self._book.run(op, purge=False)

    def task(self, task_id: str) -> dict[str, Any] | None:
        """Internal state of one task (also of deleted ones, with ``deleted_at`` set), or None."""

        def op(now: float, jobs: Jobs) -> dict[str, Any] | None:
            t = self._book.find_locked(task_id, deleted_too=True)
            return None if t is None else snapshot(t)

        return self._book.run(op, purge=False)

    def tasks(self) -> list[dict[str, Any]]:
        """Internal state of every live task, oldest first."""
        return self._book.run(lambda now, jobs: [snapshot(t) for t in self._book.tasks.values()], purge=False)

    def tick(self) -> None:
        """Evaluate due transitions now (useful with an injected clock)."""
        self._book.run(lambda now, jobs: None, force_purge=True)

    def file_bytes(self, task_id: str, kind: Literal["video", "last_frame"] = "video") -> bytes:
        """The exact bytes the file endpoint serves for a task (for sha256 comparisons)."""
        with self._shared.lock:
            t = self._book.find_locked(task_id, deleted_too=True)
            if t is None:
                raise KeyError(task_id)
        return self._downloads.body(t, kind)[0]

    # ---- logs ------------------------------------------------------------------------------------

    def requests(self, kind: RequestKind | None = None, task_id: str | None = None) -> list[RequestRecord]:
        with self._shared.lock:
            records = list(self._front.log)
        return [
            r
            for r in records
            if (kind is None or r.kind == kind) and (task_id is None or r.task_id == task_id)
        ]

    def clear_log(self) -> None:
        with self._shared.lock:
            self._front.log.clear()
            self._callbacks.records.clear()

    @property
    def callbacks_sent(self) -> list[CallbackRecord]:
        with self._shared.lock:
            return list(self._callbacks.records)
