"""Every knob (``SimConfig``), what the simulator records (``RequestRecord``, ``CallbackRecord``),
the API's paths and status sets, and ``Shared``: the one lock, clock and live config all parts read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

API_PREFIX = "/api/v3"
TASKS_PATH = API_PREFIX + "/contents/generations/tasks"
FILES_PREFIX = "/files/"
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "expired", "cancelled"})
LIST_STATUSES = frozenset({"queued", "running", "cancelled", "succeeded", "failed", "expired"})
FATES = frozenset({"succeeded", "failed", "expired"})

RequestKind = Literal["create", "get", "list", "delete", "file", "other"]


@dataclass
class SimConfig:
    """Every knob of the simulator.  Mutable at runtime through ``Simulator.configure(**kw)``."""

    # life cycle of tasks created over HTTP (scripted tasks bring their own durations)
    queued_s: float = 1.0
    running_s: float = 3.0
    default_fate: str = "succeeded"  # "succeeded" | "failed" | "expired"
    slow_factor: float = 10.0  # the "[slow]" prompt marker multiplies queued_s and running_s by this
    time_scale: float = 1.0  # real seconds per second of execution_expires_after (0.001: 3600 -> 3.6 s)
    fail_code: str = "OutputVideoSensitiveContentDetected"
    fail_message: str = "The request failed because the output video may contain sensitive information."
    max_running: int | None = None  # concurrency cap: queued tasks wait for a running slot
    max_queued: int | None = None  # queue cap: create answers 429 QuotaExceeded (real service: 120)
    cancelled_retention_s: float = 86400.0  # cancelled records are purged this long after cancel
    retention_s: float = 7 * 86400.0  # every record is purged this long after created_at
    strict_model_fields: bool = True  # reject fields the (recognised) model family does not support
    # auth and errors
    api_keys: frozenset[str] | None = None  # None: any non-empty bearer key is accepted
    not_found_code: str = "ResourceNotFound"
    # generated files
    public_url: str | None = None  # base of video_url/last_frame_url; default the simulator's own url
    url_ttl_s: int = 86400
    url_secret: str = "seedance-simulator-secret"
    expire_first_download: bool = False
    video_bytes: int = 32 * 1024  # target MP4 size (padded with a `free` box); never below the minimum
    video_content_type: str = "video/mp4"
    drop_connection_after_bytes: int | None = None  # close the download after this many body bytes
    drop_connection_max: int | None = None  # drop only the first N downloads of each file (None: all)
    faults_apply_to_files: bool = False
    # fault injection on the task API
    latency_s: float = 0.0
    error_rate_5xx: float = 0.0
    rate_429: float = 0.0
    retry_after_s: int = 1
    timeout_rate: float = 0.0
    timeout_sleep_s: float = 5.0
    malformed_rate: float = 0.0
    seed: int | None = None
    rps_limit: float | None = None  # token bucket refill rate, requests per second
    rps_burst: float | None = None  # bucket size; default max(1, rps_limit)
    # the list endpoint (GET /contents/generations/tasks)
    list_refusal: int | None = None  # 404 or 405: answer list like a proxy that lacks the endpoint
    list_rps_limit: float | None = None  # a token bucket for list calls only (on top of rps_limit)
    list_rps_burst: float | None = None  # its size; default max(1, list_rps_limit)
    list_window_s: float = 7 * 86400.0  # list covers tasks created this long ago at most
    list_requires_model: bool = False  # a key with Custom permissions: filter.model is required
    # callbacks
    callback_timeout_s: float = 5.0
    callback_retries: int = 3  # extra attempts for succeeded/failed when no 2xx arrives
    callback_retry_interval_s: float = 1.0
    # internals
    ticker_interval_s: float = 0.05
    max_log_records: int = 100_000

    def __post_init__(self) -> None:
        if self.api_keys is not None:
            self.api_keys = frozenset(self.api_keys)
        if self.default_fate not in FATES:
            raise ValueError(f"default_fate must be one of {sorted(FATES)}, not {self.default_fate!r}")
        if self.list_refusal not in (None, 404, 405):
            raise ValueError(f"list_refusal must be None, 404 or 405, not {self.list_refusal!r}")


@dataclass(frozen=True)
class RequestRecord:
    """One request the simulator answered (the Authorization value is never stored)."""

    ts: float
    method: str
    path: str
    task_id: str | None
    status: int
    request_id: str
    kind: RequestKind
    fault: str | None
    headers: dict[str, str]
    query: dict[str, list[str]]
    auth_present: bool = False
    body: Any = None  # the parsed JSON body of create requests
    duration_s: float = 0.0


@dataclass(frozen=True)
class CallbackRecord:
    """One delivery attempt of a ``callback_url`` post."""

    url: str
    task_id: str
    status: str  # the task status carried in the body
    attempt: int  # 1 for the first delivery
    status_code: int | None  # None when the attempt failed without an HTTP answer
    error: str | None
    ts: float

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass
class Shared:
    """What every part of one simulator reads and guards with one lock.

    ``config`` is replaced whole by ``Simulator.configure``, so parts read it through this object at
    the moment they need it; ``stop`` is set when the simulator stops (ticker, callback threads).
    """

    config: SimConfig
    clock: Callable[[], float]
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
