"""A local simulator of the BytePlus ModelArk Seedance task API (stdlib only).

It is a real HTTP server on a socket that answers like ``https://ark.ap-southeast.bytepluses.com/api/v3``
for the four video-generation task endpoints, so any client (``requests``, the official
``byteplussdkarkruntime.Ark(base_url=sim.base_url)``, a Celery worker in another process) can be
pointed at it unchanged::

    POST   /api/v3/contents/generations/tasks          create  -> {"id": "cgt-YYYYMMDDHHMMSS-xxxxx"}
    GET    /api/v3/contents/generations/tasks/{id}     get     -> the task object
    GET    /api/v3/contents/generations/tasks          list    -> {"items": [...], "total": N}
    DELETE /api/v3/contents/generations/tasks/{id}     cancel (queued) / delete (terminal) -> {}
    GET    /files/{id}.mp4?X-Tos-...                   the generated video behind a signed, expiring URL
    GET    /files/{id}.png?X-Tos-...                   the last frame (only with ``return_last_frame``)

Usage::

    with Simulator(config=SimConfig(queued_s=0.1, running_s=0.2)) as sim:
        client = Ark(base_url=sim.base_url, api_key="any")
        ...
        task_id = sim.add_task([("queued", 0.1), ("preprocessing", 0.1), ("failed", None)])

Task life cycle.  Every task follows a *script*: a list of ``(status, duration_s)`` stages, the
last one usually ``(terminal_status, None)``.  Tasks created over HTTP get
``[("queued", queued_s), ("running", running_s), (fate, None)]``; ``sim.add_task(status_script=...)``
creates a task with any script, including undocumented statuses (served verbatim).  Independently
of the script, a non-terminal task whose ``created_at + execution_expires_after * time_scale`` has
passed becomes ``expired``.  Transitions are evaluated lazily on every request and by a background
ticker, so ``callback_url`` posts are sent even when nobody polls.  The clock is injectable
(``Simulator(clock=...)``, default ``time.time``).

Prompt markers (in any ``text`` content item of an HTTP create) pick the fate of that task:

* ``[fail]``            ends in ``failed`` with ``SimConfig.fail_code`` / ``fail_message``
* ``[fail:SomeCode]``   ends in ``failed`` with ``error.code == "SomeCode"``
* ``[expire]``          ends in ``expired`` (after the queued and running stages)
* ``[succeed]``         ends in ``succeeded`` even when ``SimConfig.default_fate`` says otherwise
* ``[slow]``            multiplies the queued and running durations by ``SimConfig.slow_factor``

Without a marker the fate is ``SimConfig.default_fate`` (``"succeeded"``).

Faults (``SimConfig``; change them at runtime with ``sim.configure(**kw)``) apply to the task API:
``latency_s``, ``error_rate_5xx`` (500 ``InternalServiceError``), ``rate_429`` (429 with
``Retry-After: retry_after_s``), ``timeout_rate`` (sleeps ``timeout_sleep_s`` and then answers
normally, so a client read timeout fires while the server still did the work), ``malformed_rate``
(200 with a truncated JSON body; the operation itself is performed), ``rps_limit`` (token bucket,
429 ``RateLimitExceeded.EndpointRPMExceeded``), plus ``sim.burst_429(...)`` and
``sim.rate_limit_task(...)``.  Faults apply to file downloads only with ``faults_apply_to_files``.

Every request is recorded (``sim.requests()``) without the ``Authorization`` value; every callback
attempt is recorded in ``sim.callbacks_sent``.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import hashlib
import hmac
import json
import math
import random
import re
import secrets
import signal
import socket
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Literal, TypeVar

__all__ = [
    "API_PREFIX",
    "TERMINAL_STATUSES",
    "CallbackRecord",
    "RequestKind",
    "RequestRecord",
    "SimConfig",
    "Simulator",
    "make_mp4",
    "make_png",
    "serve_forever_cli",
]

API_PREFIX = "/api/v3"
TASKS_PATH = API_PREFIX + "/contents/generations/tasks"
FILES_PREFIX = "/files/"
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "expired", "cancelled"})
LIST_STATUSES = frozenset({"queued", "running", "cancelled", "succeeded", "failed", "expired"})
FATES = frozenset({"succeeded", "failed", "expired"})

RequestKind = Literal["create", "get", "list", "delete", "file", "other"]

_T = TypeVar("_T")
_UTC8 = timezone(timedelta(hours=8))
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_ERROR_TYPES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "RequestEntityTooLarge",
    429: "TooManyRequests",
    500: "InternalServerError",
}
_RPM_MESSAGE = (
    "The Requests Per Minute (RPM) limit of the associated endpoint for your account has been exceeded."
)
_PIXELS = {"480p": 864 * 480, "720p": 1280 * 720, "1080p": 1920 * 1080, "4k": 3840 * 2160}
_RESOLUTIONS = frozenset(_PIXELS)
_RATIOS = frozenset({"16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive"})
_MARKER_RE = re.compile(r"\[(fail(?::([A-Za-z0-9_.\-]+))?|expire|succeed|slow)\]", re.IGNORECASE)
_MAX_BODY = 64 * 1024 * 1024
_CACHE_LIMIT = 8 * 1024 * 1024


# --------------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Internal state
# --------------------------------------------------------------------------------------------------


class _ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str = "",
        headers: Sequence[tuple[str, str]] = (),
        fault: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = list(headers)
        self.fault = fault


@dataclass
class _Task:
    id: str
    seq: int
    model: str
    request: dict[str, Any]
    echo: dict[str, Any]
    script: list[tuple[str, float | None]]
    fate: str
    created_at: float
    usage_tokens: int
    callback_url: str | None
    return_last_frame: bool
    error_code: str
    error_message: str
    overrides: dict[str, Any] = field(default_factory=dict)
    response_extra: dict[str, Any] = field(default_factory=dict)
    stage: int = 0
    stage_started: float = 0.0
    status: str = ""
    updated_at: float = 0.0
    frozen: bool = False  # the script no longer drives the task (cancelled / expired)
    waiting_slot: bool = False
    history: list[tuple[str, float]] = field(default_factory=list)
    terminal_at: float | None = None
    error: dict[str, str] | None = None
    url_gen: int = 0
    urls: dict[str, str] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    downloaded: set[str] = field(default_factory=set)
    drops: dict[str, int] = field(default_factory=dict)
    needs_fresh_urls: bool = False
    deleted_at: float | None = None


@dataclass
class _CallbackJob:
    url: str
    task_id: str
    status: str
    body: bytes
    retry: bool


@dataclass
class _Resp:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    fault: str | None = None
    task_id: str | None = None
    drop_after: int | None = None
    close: bool = False
    content_length: int | None = None  # for HEAD responses


# --------------------------------------------------------------------------------------------------
# Helpers: ids, JSON, validation
# --------------------------------------------------------------------------------------------------


def _new_request_id() -> str:
    # "02" + 13-digit ms epoch + hex, 53 chars, like the live service.
    return f"02{int(time.time() * 1000):013d}{secrets.token_hex(19)}"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _family(model: str) -> str | None:
    m = model.lower()
    for tag, fam in (("2-5", "2.5"), ("2-0", "2.0"), ("1-5", "1.5"), ("1-0", "1.0")):
        if f"seedance-{tag}" in m:
            return fam
    return None


def _invalid(param: str, why: str) -> _ApiError:
    return _ApiError(
        400,
        "InvalidParameter",
        f"The parameter `{param}` specified in the request is not valid: {why}.",
        param,
    )


def _missing(param: str) -> _ApiError:
    return _ApiError(
        400,
        "MissingParameter",
        "The request failed because it is missing one or multiple required parameters. "
        f"Request parameter `{param}` is missing.",
        param,
    )


def _unsupported(param: str, model: str) -> _ApiError:
    return _ApiError(
        400,
        "InvalidParameter",
        f"The specified parameter `{param}` is not supported for model {model}, must be empty.",
        param,
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_url(param: str, obj: Any, kinds: tuple[str, ...]) -> None:
    if obj is None:
        raise _missing(param)
    if not isinstance(obj, dict):
        raise _invalid(param, "must be an object")
    url = obj.get("url")
    if url is None or url == "":
        raise _missing(f"{param}.url")
    if not isinstance(url, str) or not url.startswith(kinds):
        raise _invalid(f"{param}.url", "unsupported url")


def _validate_content(content: Any, model: str, fam: str | None, strict: bool) -> None:
    if content is None or content == []:
        raise _missing("content")
    if not isinstance(content, list):
        raise _invalid("content", "must be an array")
    first = last = ref_img = ref_vid = ref_aud = 0
    for i, item in enumerate(content):
        p = f"content[{i}]"
        if not isinstance(item, dict):
            raise _invalid(p, "must be an object")
        typ = item.get("type")
        role = item.get("role")
        if typ is None:
            raise _missing(f"{p}.type")
        if typ == "text":
            text = item.get("text")
            if text is None:
                raise _missing(f"{p}.text")
            if not isinstance(text, str):
                raise _invalid(f"{p}.text", "must be a string")
        elif typ == "image_url":
            _check_url(
                f"{p}.image_url", item.get("image_url"), ("http://", "https://", "data:image/", "asset://")
            )
            if role is None or role == "first_frame":
                first += 1
            elif role == "last_frame":
                last += 1
            elif role == "reference_image":
                ref_img += 1
            else:
                raise _ApiError(
                    400, "InvalidParameter", "invalid role specified for image content", f"{p}.role"
                )
        elif typ == "video_url":
            _check_url(f"{p}.video_url", item.get("video_url"), ("http://", "https://", "asset://"))
            if role != "reference_video":
                raise _ApiError(
                    400, "InvalidParameter", "invalid role specified for video content", f"{p}.role"
                )
            ref_vid += 1
        elif typ == "audio_url":
            _check_url(
                f"{p}.audio_url", item.get("audio_url"), ("http://", "https://", "data:audio/", "asset://")
            )
            if role != "reference_audio":
                raise _ApiError(
                    400, "InvalidParameter", "invalid role specified for audio content", f"{p}.role"
                )
            ref_aud += 1
        elif typ == "draft_task":
            draft = item.get("draft_task")
            if not isinstance(draft, dict) or not isinstance(draft.get("id"), str) or not draft.get("id"):
                raise _missing(f"{p}.draft_task.id")
        else:
            raise _invalid(f"{p}.type", f"unknown content type {typ!r}")
    if first > 1 or last > 1:
        raise _invalid("content", "at most one first_frame and one last_frame image are allowed")
    if (first or last) and (ref_img or ref_vid or ref_aud):
        raise _ApiError(
            400,
            "InvalidParameter",
            "first/last frame content cannot be mixed with reference media content",
            "content",
        )
    if last and not first:
        raise _invalid("content", "a last_frame image requires a first_frame image")
    if ref_aud and not (ref_img or ref_vid) and fam != "2.5":
        raise _ApiError(
            400, "InvalidParameter", "reference_audio cannot be the only reference input", "content"
        )
    if ref_img > (30 if fam == "2.5" else 9):
        raise _invalid("content", "too many reference images")
    if ref_vid > (10 if fam == "2.5" else 3) or ref_aud > 3:
        raise _invalid("content", "too many reference videos or audios")
    if strict and fam in ("1.0", "1.5") and (ref_vid or ref_aud):
        raise _invalid("content", f"reference video/audio is not supported for model {model}")


def _validate_create(payload: Any, strict: bool) -> dict[str, Any]:
    """Return the non-null create fields, or raise ``_ApiError`` (400)."""
    if not isinstance(payload, dict):
        raise _ApiError(400, "InvalidParameter", "The request body must be a JSON object.", "")
    model = payload.get("model")
    if model is None or model == "":
        raise _missing("model")
    if not isinstance(model, str):
        raise _invalid("model", "must be a string")
    fam = _family(model)
    _validate_content(payload.get("content"), model, fam, strict)
    req = {k: v for k, v in payload.items() if v is not None}

    def check(name: str, ok: Callable[[Any], bool], why: str) -> None:
        if name in req and not ok(req[name]):
            raise _invalid(name, why)

    for name in ("return_last_frame", "generate_audio", "draft", "camera_fixed", "watermark"):
        check(name, lambda v: isinstance(v, bool), "must be a boolean")
    check(
        "callback_url",
        lambda v: isinstance(v, str) and v.startswith(("http://", "https://")),
        "must be an http(s) url",
    )
    check("service_tier", lambda v: v in ("default", "flex"), "must be one of default, flex")
    check(
        "execution_expires_after",
        lambda v: _is_int(v) and 3600 <= v <= 259200,
        "value must be an integer in [3600, 259200]",
    )
    check(
        "safety_identifier", lambda v: isinstance(v, str) and len(v) <= 64, "must be a string of <= 64 chars"
    )
    check("priority", lambda v: _is_int(v) and 0 <= v <= 9, "value must be an integer in [0, 9]")
    check("resolution", lambda v: isinstance(v, str) and v.lower() in _RESOLUTIONS, "unsupported resolution")
    check("ratio", lambda v: v in _RATIOS, "unsupported ratio")
    lo, hi = {"2.5": (4, 30), "2.0": (4, 15), "1.5": (4, 12), "1.0": (2, 12)}.get(fam or "", (2, 30))
    check(
        "duration",
        lambda v: _is_int(v) and (v == -1 or lo <= v <= hi),
        f"value must be -1 or in [{lo}, {hi}]",
    )
    check(
        "frames", lambda v: _is_int(v) and 29 <= v <= 289 and (v - 25) % 4 == 0, "must be 25+4n in [29, 289]"
    )
    check("seed", lambda v: _is_int(v) and -1 <= v <= 2147483647, "value must be in [-1, 2147483647]")
    check("output_format", lambda v: v in ("mp4", "mov"), "must be one of mp4, mov")
    check(
        "omni_reference_task_type",
        lambda v: v in ("auto", "edit", "extend", "reference"),
        "must be one of auto, edit, extend",
    )
    check("tools", lambda v: isinstance(v, list) and all(isinstance(t, dict) for t in v), "must be an array")
    if req.get("draft") and req.get("return_last_frame"):
        raise _invalid("return_last_frame", "not supported together with draft")
    if req.get("draft") and req.get("service_tier") == "flex":
        raise _invalid("service_tier", "flex is not supported together with draft")
    if strict and fam is not None:
        per_family = {
            "draft": ("1.5",),
            "frames": ("1.0",),
            "seed": ("1.5", "1.0"),
            "camera_fixed": ("1.5", "1.0"),
            "output_format": ("2.5",),
            "omni_reference_task_type": ("2.5",),
            "generate_audio": ("2.5", "2.0", "1.5"),
            "priority": ("2.5", "2.0"),
        }
        for name, fams in per_family.items():
            if name in req and fam not in fams:
                raise _unsupported(name, model)
        if req.get("service_tier") == "flex" and fam in ("2.0", "2.5"):
            raise _invalid("service_tier", f"flex is not supported for model {model}")
        res = str(req.get("resolution", "")).lower()
        if res == "4k" and "seedance-2-0-260128" not in model.lower():
            raise _invalid("resolution", f"4k is not supported for model {model}")
        if res == "1080p" and (fam == "2.5" or "2-0-fast" in model or "2-0-mini" in model):
            raise _invalid("resolution", f"1080p is not supported for model {model}")
    return req


def _parse_markers(text: str, cfg: SimConfig) -> tuple[str, str | None, bool]:
    fate, code, slow = cfg.default_fate, None, False
    for m in _MARKER_RE.finditer(text):
        word = m.group(1).lower()
        if word.startswith("fail"):
            fate, code = "failed", m.group(2)
        elif word == "expire":
            fate = "expired"
        elif word == "succeed":
            fate = "succeeded"
        else:
            slow = True
    return fate, code, slow


def _echo_fields(task_id: str, model: str, req: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """The fields a succeeded task reports (actual values) and the deterministic token count."""
    fam = _family(model)
    digest = hashlib.sha256(task_id.encode()).digest()
    seed = req.get("seed")
    if not _is_int(seed) or seed == -1:
        seed = int.from_bytes(digest[:4], "big") % 100000
    resolution = str(req.get("resolution") or ("1080p" if fam == "1.0" else "720p")).lower()
    if req.get("draft"):
        resolution = "480p"
    ratio = req.get("ratio") or "16:9"
    if ratio == "adaptive":
        ratio = "16:9"
    echo: dict[str, Any] = {"seed": seed, "resolution": resolution, "ratio": ratio}
    frames: Any = req.get("frames")
    if _is_int(frames):
        echo["frames"] = frames
        n_frames = int(frames)
    else:
        duration: Any = req.get("duration")
        if not _is_int(duration) or duration < 1:
            duration = 5
        echo["duration"] = duration
        n_frames = int(duration) * 24 + 1
    echo["framespersecond"] = 24
    if "generate_audio" in req or fam in ("2.5", "2.0", "1.5"):
        echo["generate_audio"] = bool(req.get("generate_audio", True))
    if "draft" in req:
        echo["draft"] = bool(req["draft"])
    if "output_format" in req or fam == "2.5":
        echo["output_format"] = req.get("output_format", "mp4")
    if "tools" in req:
        echo["tools"] = req["tools"]
    tokens = _PIXELS.get(resolution, _PIXELS["720p"]) * n_frames // 1024
    return echo, tokens


# --------------------------------------------------------------------------------------------------
# Media generation: a tiny but decodable H.264 MP4 and a PNG, deterministic per task id
# --------------------------------------------------------------------------------------------------


class _Bits:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, n: int, v: int) -> None:
        self.bits.extend((v >> i) & 1 for i in range(n - 1, -1, -1))

    def ue(self, v: int) -> None:
        v += 1
        self.u(v.bit_length() - 1, 0)
        self.u(v.bit_length(), v)

    def se(self, v: int) -> None:
        self.ue(2 * v - 1 if v > 0 else -2 * v)

    def align(self) -> None:
        while len(self.bits) % 8:
            self.bits.append(0)

    def raw(self, data: bytes) -> None:
        for b in data:
            self.u(8, b)

    def trailing(self) -> bytes:
        self.bits.append(1)
        self.align()
        out = bytearray()
        for i in range(0, len(self.bits), 8):
            byte = 0
            for bit in self.bits[i : i + 8]:
                byte = (byte << 1) | bit
            out.append(byte)
        return bytes(out)


def _nal(header: int, rbsp: bytes) -> bytes:
    out = bytearray([header])
    zeros = 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def _box(kind: bytes, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _full_box(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *parts)


_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
_VIDEO_W, _VIDEO_H = 64, 36


def _h264_stream(task_id: str, n_frames: int) -> tuple[bytes, bytes, list[bytes]]:
    """SPS, PPS and one NAL per frame: an I_PCM IDR frame, then P frames of skipped macroblocks."""
    mbs_w, mbs_h = (_VIDEO_W + 15) // 16, (_VIDEO_H + 15) // 16
    sps = _Bits()
    sps.u(8, 66)  # profile_idc: baseline
    sps.u(8, 0xC0)  # constraint_set0/1
    sps.u(8, 30)  # level_idc
    sps.ue(0)  # seq_parameter_set_id
    sps.ue(0)  # log2_max_frame_num_minus4
    sps.ue(2)  # pic_order_cnt_type
    sps.ue(1)  # max_num_ref_frames
    sps.u(1, 0)  # gaps_in_frame_num_value_allowed_flag
    sps.ue(mbs_w - 1)
    sps.ue(mbs_h - 1)
    sps.u(1, 1)  # frame_mbs_only_flag
    sps.u(1, 1)  # direct_8x8_inference_flag
    crop_bottom = (mbs_h * 16 - _VIDEO_H) // 2
    sps.u(1, 1 if crop_bottom else 0)
    if crop_bottom:
        sps.ue(0)
        sps.ue(0)
        sps.ue(0)
        sps.ue(crop_bottom)
    sps.u(1, 0)  # vui_parameters_present_flag
    pps = _Bits()
    pps.ue(0)
    pps.ue(0)
    pps.u(1, 0)  # entropy_coding_mode_flag: CAVLC
    pps.u(1, 0)
    pps.ue(0)  # num_slice_groups_minus1
    pps.ue(0)
    pps.ue(0)
    pps.u(1, 0)  # weighted_pred_flag
    pps.u(2, 0)  # weighted_bipred_idc
    pps.se(0)
    pps.se(0)
    pps.se(0)
    pps.u(1, 1)  # deblocking_filter_control_present_flag
    pps.u(1, 0)
    pps.u(1, 0)
    digest = hashlib.sha256(task_id.encode()).digest()
    idr = _Bits()
    idr.ue(0)  # first_mb_in_slice
    idr.ue(7)  # slice_type: I (all)
    idr.ue(0)  # pic_parameter_set_id
    idr.u(4, 0)  # frame_num
    idr.ue(0)  # idr_pic_id
    idr.u(1, 0)  # no_output_of_prior_pics_flag
    idr.u(1, 0)  # long_term_reference_flag
    idr.se(0)  # slice_qp_delta
    idr.ue(1)  # disable_deblocking_filter_idc
    for mb in range(mbs_w * mbs_h):
        idr.ue(25)  # mb_type: I_PCM
        idr.align()
        base = 32 + digest[mb % 32] % 160
        idr.raw(bytes(min(235, base + (i % 16) * 2 + (i // 16)) for i in range(256)))
        idr.raw(bytes([16 + digest[(mb + 7) % 32] % 200]) * 64)
        idr.raw(bytes([16 + digest[(mb + 13) % 32] % 200]) * 64)
    frames = [_nal(0x65, idr.trailing())]
    for n in range(1, n_frames):
        p = _Bits()
        p.ue(0)
        p.ue(5)  # slice_type: P (all)
        p.ue(0)
        p.u(4, n % 16)  # frame_num
        p.u(1, 0)  # num_ref_idx_active_override_flag
        p.u(1, 0)  # ref_pic_list_modification_flag_l0
        p.u(1, 0)  # adaptive_ref_pic_marking_mode_flag
        p.se(0)
        p.ue(1)
        p.ue(mbs_w * mbs_h)  # mb_skip_run: every macroblock skipped
        frames.append(_nal(0x41, p.trailing()))
    return _nal(0x67, sps.trailing()), _nal(0x68, pps.trailing()), frames


def make_mp4(task_id: str, duration_s: int = 5, target_bytes: int = 0) -> bytes:
    """A small valid H.264 MP4 (ftyp, moov, mdat, optional free padding), deterministic per task id."""
    n_frames = max(1, duration_s * 24)
    sps, pps, nals = _h264_stream(task_id, n_frames)
    samples = [struct.pack(">I", len(n)) + n for n in nals]
    mdat_payload = b"".join(samples)
    w, h = _VIDEO_W, _VIDEO_H
    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 512), b"isomiso2avc1mp41")

    def moov(mdat_offset: int) -> bytes:
        dur_ms = n_frames * 1000 // 24
        mvhd = _full_box(
            b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, 1000, dur_ms), struct.pack(">IH", 0x00010000, 0x0100),
            bytes(10), _MATRIX, bytes(24), struct.pack(">I", 2),
        )  # fmt: skip
        tkhd = _full_box(
            b"tkhd", 0, 3, struct.pack(">IIII", 0, 0, 1, 0), struct.pack(">I", dur_ms), bytes(8),
            struct.pack(">hhhH", 0, 0, 0, 0), _MATRIX, struct.pack(">II", w << 16, h << 16),
        )  # fmt: skip
        mdhd = _full_box(
            b"mdhd", 0, 0, struct.pack(">IIII", 0, 0, 24, n_frames), struct.pack(">HH", 0x55C4, 0)
        )
        hdlr = _full_box(b"hdlr", 0, 0, bytes(4), b"vide", bytes(12), b"VideoHandler\x00")
        vmhd = _full_box(b"vmhd", 0, 1, bytes(8))
        dinf = _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1)))
        avcc = _box(
            b"avcC", bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]), struct.pack(">H", len(sps)), sps,
            bytes([1]), struct.pack(">H", len(pps)), pps,
        )  # fmt: skip
        avc1 = _box(
            b"avc1", bytes(6), struct.pack(">H", 1), bytes(16), struct.pack(">HH", w, h),
            struct.pack(">II", 0x00480000, 0x00480000), bytes(4), struct.pack(">H", 1),
            bytes([11]) + b"seedancesim" + bytes(20), struct.pack(">Hh", 0x18, -1), avcc,
        )  # fmt: skip
        stsd = _full_box(b"stsd", 0, 0, struct.pack(">I", 1), avc1)
        stts = _full_box(b"stts", 0, 0, struct.pack(">III", 1, n_frames, 1))
        stss = _full_box(b"stss", 0, 0, struct.pack(">II", 1, 1))
        stsc = _full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, n_frames, 1))
        stsz = _full_box(
            b"stsz",
            0,
            0,
            struct.pack(">II", 0, n_frames),
            b"".join(struct.pack(">I", len(s)) for s in samples),
        )
        stco = _full_box(b"stco", 0, 0, struct.pack(">II", 1, mdat_offset))
        stbl = _box(b"stbl", stsd, stts, stss, stsc, stsz, stco)
        minf = _box(b"minf", vmhd, dinf, stbl)
        trak = _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, minf))
        return _box(b"moov", mvhd, trak)

    head_len = len(ftyp) + len(moov(0))
    out = ftyp + moov(head_len + 8) + _box(b"mdat", mdat_payload)
    pad = target_bytes - len(out) - 8
    if pad >= 0:
        rng = random.Random(int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "big"))
        out += _box(b"free", rng.randbytes(pad))
    return out


def make_png(task_id: str, width: int = _VIDEO_W, height: int = _VIDEO_H) -> bytes:
    """A small valid RGB PNG whose colour is derived from the task id."""
    d = hashlib.sha256(task_id.encode()).digest()
    row = b"\x00" + bytes(d[0:3]) * width
    raw = row * height

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def _rate_limited(retry_after_s: int, fault: str) -> _ApiError:
    return _ApiError(
        429,
        "RateLimitExceeded.EndpointRPMExceeded",
        _RPM_MESSAGE,
        headers=[("Retry-After", str(int(retry_after_s)))],
        fault=fault,
    )


def _tos_error(code: str, message: str, rid: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>{rid}</RequestId>"
        f"<HostId>tos-ap-southeast-1.simulator</HostId><EC>0003-00000001</EC></Error>"
    ).encode()


# --------------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True
    allow_reuse_address = True
    sim: Simulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (a timeout, a closed 403) is normal here, not worth a traceback.
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 300
    server: _Server
    server_version = "SeedanceSimulator/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def setup(self) -> None:
        super().setup()
        self.server.sim._conn_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sim._conn_closed(self.connection)

    def do_GET(self) -> None:
        self.server.sim._handle(self, "GET")

    def do_HEAD(self) -> None:
        self.server.sim._handle(self, "HEAD")

    def do_POST(self) -> None:
        self.server.sim._handle(self, "POST")

    def do_DELETE(self) -> None:
        self.server.sim._handle(self, "DELETE")

    def do_PUT(self) -> None:
        self.server.sim._handle(self, "PUT")

    def do_PATCH(self) -> None:
        self.server.sim._handle(self, "PATCH")


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if "chunked" in h.headers.get("Transfer-Encoding", "").lower():
        parts: list[bytes] = []
        total = 0
        while True:
            line = h.rfile.readline(1024)
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > _MAX_BODY:
                raise ValueError("body too large")
            parts.append(h.rfile.read(size))
            h.rfile.readline(16)
    length = int(h.headers.get("Content-Length") or 0)
    if length < 0 or length > _MAX_BODY:
        raise ValueError("bad Content-Length")
    return h.rfile.read(length) if length else b""


def _route(method: str, path: str) -> tuple[RequestKind, str | None]:
    if path.startswith(FILES_PREFIX):
        name = urllib.parse.unquote(path[len(FILES_PREFIX) :])
        for ext in (".mp4", ".png"):
            if name.endswith(ext):
                return "file", name[: -len(ext)]
        return "other", None
    p = path.rstrip("/")
    if p == TASKS_PATH:
        if method == "POST":
            return "create", None
        if method == "GET":
            return "list", None
        return "other", None
    if p.startswith(TASKS_PATH + "/"):
        tid = urllib.parse.unquote(p[len(TASKS_PATH) + 1 :])
        if "/" not in tid:
            if method == "GET":
                return "get", tid
            if method == "DELETE":
                return "delete", tid
            return "other", tid
    return "other", None


# --------------------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------------------


class Simulator:
    """The Ark task API on a real socket.  See the module docstring."""

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
        self._config = dataclasses.replace(config) if config is not None else SimConfig()
        self._clock: Callable[[], float] = clock or time.time
        self._lock = threading.Lock()
        self._tasks: dict[str, _Task] = {}
        self._active: dict[str, _Task] = {}
        self._deleted: dict[str, _Task] = {}
        self._seq = 0
        self._rng = random.Random(self._config.seed)
        self._id_rng = random.Random(None if self._config.seed is None else self._config.seed + 1)
        self._log: collections.deque[RequestRecord] = collections.deque(maxlen=self._config.max_log_records)
        self._callbacks: list[CallbackRecord] = []
        self._cb_queues: dict[str, collections.deque[_CallbackJob]] = {}
        self._tokens = self._bucket_size(self._config)
        self._tokens_at = time.monotonic()
        self._burst_until = 0.0
        self._burst_retry_after = 1
        self._task_limits: dict[str, tuple[float, int]] = {}
        self._last_purge = -math.inf
        self._next_due = -math.inf
        self._file_cache: dict[tuple[str, int], bytes] = {}
        self._conns: set[socket.socket] = set()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    # ---- life cycle ------------------------------------------------------------------------------

    def start(self) -> Simulator:
        if self._server is not None:
            return self
        server_cls = _Server
        if ":" in self.host:

            class _Server6(_Server):
                address_family = socket.AF_INET6

            server_cls = _Server6
        server = server_cls((self.host, self._requested_port), _Handler)
        server.sim = self
        self._server = server
        self._stop.clear()
        serve = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="seedance-sim-http", daemon=True
        )
        ticker = threading.Thread(target=self._ticker, name="seedance-sim-ticker", daemon=True)
        self._threads = [serve, ticker]
        serve.start()
        ticker.start()
        return self

    def stop(self) -> None:
        server = self._server
        if server is None:
            return
        self._stop.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
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
        return dataclasses.replace(self._config)

    def configure(self, **kw: Any) -> SimConfig:
        """Change configuration fields at runtime (thread-safe); returns the new configuration."""
        names = {f.name for f in dataclasses.fields(SimConfig)}
        unknown = set(kw) - names
        if unknown:
            raise TypeError(f"unknown SimConfig fields: {sorted(unknown)}")
        with self._lock:
            new = dataclasses.replace(self._config, **kw)
            if "seed" in kw:
                self._rng = random.Random(new.seed)
            if "rps_limit" in kw or "rps_burst" in kw:
                self._tokens = self._bucket_size(new)
                self._tokens_at = time.monotonic()
            if "max_log_records" in kw:
                self._log = collections.deque(self._log, maxlen=new.max_log_records)
            self._config = new
            self._next_due = -math.inf
            return dataclasses.replace(new)

    def burst_429(self, duration_s: float, retry_after_s: int = 1) -> None:
        """Answer every task-API request with 429 + ``Retry-After`` for ``duration_s`` seconds."""
        with self._lock:
            self._burst_until = time.monotonic() + duration_s
            self._burst_retry_after = int(retry_after_s)

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
            end = now_mono + (until - self._clock())
        elif duration_s is not None:
            end = now_mono + duration_s
        else:
            end = math.inf
        with self._lock:
            self._task_limits[task_id] = (end, int(retry_after_s))

    def clear_rate_limits(self) -> None:
        with self._lock:
            self._task_limits.clear()
            self._burst_until = 0.0

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
        cfg = self._config
        script = list(status_script) if status_script else None
        if script is None:
            f = fate or cfg.default_fate
            script = [("queued", cfg.queued_s), ("running", cfg.running_s), (f, None)]
        req = {k: v for k, v in fields.items() if v is not None}
        req["model"] = model
        req["content"] = content or [{"type": "text", "text": "simulated task"}]
        if callback_url:
            req["callback_url"] = callback_url
        if return_last_frame:
            req["return_last_frame"] = True
        overrides: dict[str, Any] = {}
        for key, val in (
            ("video_content_type", video_content_type),
            ("video_body", video_body),
            ("video_bytes", video_bytes),
            ("drop_connection_after_bytes", drop_connection_after_bytes),
        ):
            if val is not None:
                overrides[key] = val
        final = script[-1][0]
        jobs: list[_CallbackJob] = []
        try:
            with self._lock:
                now = self._clock()
                self._advance_all_locked(now, jobs)
                task = self._new_task_locked(
                    now,
                    req,
                    script,
                    fate=final,
                    usage_tokens=usage_tokens,
                    error_code=error_code,
                    error_message=error_message,
                    task_id=task_id,
                    overrides=overrides,
                    response_extra=dict(response_extra or {}),
                    jobs=jobs,
                )
                return task.id
        finally:
            self._dispatch(jobs)

    def task(self, task_id: str) -> dict[str, Any] | None:
        """Internal state of one task (also of deleted ones, with ``deleted_at`` set), or None."""
        jobs: list[_CallbackJob] = []
        try:
            with self._lock:
                self._advance_all_locked(self._clock(), jobs)
                t = self._tasks.get(task_id) or self._deleted.get(task_id)
                return None if t is None else self._state_locked(t)
        finally:
            self._dispatch(jobs)

    def tasks(self) -> list[dict[str, Any]]:
        """Internal state of every live task, oldest first."""
        jobs: list[_CallbackJob] = []
        try:
            with self._lock:
                self._advance_all_locked(self._clock(), jobs)
                return [self._state_locked(t) for t in self._tasks.values()]
        finally:
            self._dispatch(jobs)

    def tick(self) -> None:
        """Evaluate due transitions now (useful with an injected clock)."""
        jobs: list[_CallbackJob] = []
        try:
            with self._lock:
                now = self._clock()
                self._advance_all_locked(now, jobs)
                self._purge_locked(now, force=True)
        finally:
            self._dispatch(jobs)

    def file_bytes(self, task_id: str, kind: Literal["video", "last_frame"] = "video") -> bytes:
        """The exact bytes the file endpoint serves for a task (for sha256 comparisons)."""
        with self._lock:
            t = self._tasks.get(task_id) or self._deleted.get(task_id)
            if t is None:
                raise KeyError(task_id)
        return self._file_body(t, kind)[0]

    # ---- logs ------------------------------------------------------------------------------------

    def requests(self, kind: RequestKind | None = None, task_id: str | None = None) -> list[RequestRecord]:
        with self._lock:
            records = list(self._log)
        return [
            r
            for r in records
            if (kind is None or r.kind == kind) and (task_id is None or r.task_id == task_id)
        ]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()
            self._callbacks.clear()

    @property
    def callbacks_sent(self) -> list[CallbackRecord]:
        with self._lock:
            return list(self._callbacks)

    # ---- state machine ---------------------------------------------------------------------------

    def _new_task_locked(
        self,
        now: float,
        req: dict[str, Any],
        script: list[tuple[str, float | None]],
        *,
        fate: str,
        usage_tokens: int | None,
        error_code: str | None,
        error_message: str | None,
        task_id: str | None,
        overrides: dict[str, Any],
        response_extra: dict[str, Any],
        jobs: list[_CallbackJob],
    ) -> _Task:
        cfg = self._config
        if task_id is None:
            prefix = "cgt-batch-" if req.get("service_tier") == "flex" else "cgt-"
            stamp = datetime.fromtimestamp(now, _UTC8).strftime("%Y%m%d%H%M%S")
            while True:
                suffix = "".join(self._id_rng.choice(_ID_ALPHABET) for _ in range(5))
                task_id = f"{prefix}{stamp}-{suffix}"
                if task_id not in self._tasks and task_id not in self._deleted:
                    break
        model = str(req["model"])
        echo, tokens = _echo_fields(task_id, model, req)
        self._seq += 1
        task = _Task(
            id=task_id,
            seq=self._seq,
            model=model,
            request=req,
            echo=echo,
            script=script,
            fate=fate,
            created_at=now,
            usage_tokens=tokens if usage_tokens is None else usage_tokens,
            callback_url=req.get("callback_url"),
            return_last_frame=bool(req.get("return_last_frame")),
            error_code=error_code or cfg.fail_code,
            error_message=error_message or cfg.fail_message,
            overrides=overrides,
            response_extra=response_extra,
        )
        self._deleted.pop(task_id, None)
        self._tasks[task_id] = task
        task.stage_started = now
        self._transition_locked(task, 0, script[0][0], now, jobs)
        if task.status not in TERMINAL_STATUSES:
            self._active[task_id] = task
        self._next_due = min(
            self._next_due, self._advance_locked(task, now, jobs, self._running_counter_locked())
        )
        return task

    def _deadline(self, t: _Task) -> float:
        eea = t.request.get("execution_expires_after", 172800)
        if not _is_int(eea):
            eea = 172800
        return t.created_at + float(eea) * self._config.time_scale

    def _transition_locked(
        self, t: _Task, stage: int, status: str, at: float, jobs: list[_CallbackJob]
    ) -> None:
        t.stage = stage
        t.stage_started = at
        t.status = status
        t.updated_at = at
        t.history.append((status, at))
        if status == "failed" and t.error is None:
            t.error = {"code": t.error_code, "message": f"{t.error_message} Request id: {_new_request_id()}"}
        if status == "succeeded" and not t.urls:
            self._issue_urls_locked(t, at)
        if status in TERMINAL_STATUSES:
            t.terminal_at = at
            self._active.pop(t.id, None)
        if t.callback_url and status != "cancelled":
            jobs.append(
                _CallbackJob(
                    url=t.callback_url,
                    task_id=t.id,
                    status=status,
                    body=_dumps(self._body_locked(t, at, for_callback=True)),
                    retry=status in ("succeeded", "failed"),
                )
            )

    def _advance_locked(
        self, t: _Task, now: float, jobs: list[_CallbackJob], running: list[int] | None
    ) -> float:
        """Apply every transition due by ``now``; return when this task next needs a look."""
        cfg = self._config
        deadline = self._deadline(t)
        while not t.frozen:
            dur = t.script[t.stage][1] if t.stage + 1 < len(t.script) else None
            next_at = math.inf if dur is None else t.stage_started + dur
            if t.status not in TERMINAL_STATUSES and deadline <= now and deadline <= next_at:
                if running is not None and t.status == "running":
                    running[0] -= 1
                t.frozen = True
                self._transition_locked(t, t.stage, "expired", max(deadline, t.stage_started), jobs)
                break
            if next_at > now:
                break
            nxt = t.script[t.stage + 1][0]
            if (
                running is not None
                and cfg.max_running is not None
                and nxt == "running"
                and t.status != "running"
            ):
                if running[0] >= cfg.max_running:
                    t.waiting_slot = True
                    return -math.inf  # re-check on every evaluation until a slot frees
                running[0] += 1
                if t.waiting_slot:
                    next_at = now
                    t.waiting_slot = False
            elif running is not None and t.status == "running" and nxt != "running":
                running[0] -= 1
            self._transition_locked(t, t.stage + 1, nxt, next_at, jobs)
        if t.frozen or t.status in TERMINAL_STATUSES:
            return math.inf
        dur = t.script[t.stage][1] if t.stage + 1 < len(t.script) else None
        return min(deadline, math.inf if dur is None else t.stage_started + dur)

    def _running_counter_locked(self) -> list[int] | None:
        if self._config.max_running is None:
            return None
        return [sum(1 for t in self._active.values() if t.status == "running")]

    def _advance_all_locked(self, now: float, jobs: list[_CallbackJob]) -> None:
        # Cheap when nothing is due: most requests skip the walk over active tasks entirely.
        if not self._active or now < self._next_due:
            return
        running = self._running_counter_locked()
        next_due = math.inf
        for t in list(self._active.values()):
            next_due = min(next_due, self._advance_locked(t, now, jobs, running))
        self._next_due = next_due

    def _purge_locked(self, now: float, force: bool = False) -> None:
        if not force and now - self._last_purge < 1.0:
            return
        self._last_purge = now
        cfg = self._config
        for store in (self._tasks, self._deleted):
            gone = [
                tid
                for tid, t in store.items()
                if now >= t.created_at + cfg.retention_s
                or (t.status == "cancelled" and now >= t.updated_at + cfg.cancelled_retention_s)
            ]
            for tid in gone:
                store.pop(tid, None)
                self._active.pop(tid, None)
                self._task_limits.pop(tid, None)
                for key in [k for k in self._file_cache if k[0] == tid]:
                    self._file_cache.pop(key, None)

    def _ticker(self) -> None:
        while not self._stop.wait(self._config.ticker_interval_s):
            jobs: list[_CallbackJob] = []
            try:
                with self._lock:
                    now = self._clock()
                    self._advance_all_locked(now, jobs)
                    self._purge_locked(now)
            finally:
                self._dispatch(jobs)

    def _run(self, fn: Callable[[float, list[_CallbackJob]], _T]) -> _T:
        jobs: list[_CallbackJob] = []
        try:
            with self._lock:
                now = self._clock()
                self._advance_all_locked(now, jobs)
                self._purge_locked(now)
                return fn(now, jobs)
        finally:
            self._dispatch(jobs)

    # ---- bodies and urls -------------------------------------------------------------------------

    def _sign(self, path: str, at: float, gen: int) -> str:
        date = datetime.fromtimestamp(at, UTC)
        params = {
            "X-Tos-Algorithm": "TOS4-HMAC-SHA256",
            "X-Tos-Credential": f"AKLTSIM{gen:04d}/{date:%Y%m%d}/ap-southeast-1/tos/request",
            "X-Tos-Date": f"{date:%Y%m%dT%H%M%SZ}",
            "X-Tos-Expires": str(int(self._config.url_ttl_s)),
            "X-Tos-SignedHeaders": "host",
        }
        params["X-Tos-Signature"] = self._signature(path, params)
        base = self._config.public_url or (self.url if self._server is not None else "http://127.0.0.1:0")
        return f"{base.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"

    def _signature(self, path: str, params: Mapping[str, str]) -> str:
        canonical = (
            path + "?" + "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "X-Tos-Signature")
        )
        return hmac.new(self._config.url_secret.encode(), canonical.encode(), hashlib.sha256).hexdigest()

    def _issue_urls_locked(self, t: _Task, at: float) -> None:
        t.url_gen += 1
        t.urls["video"] = self._sign(f"{FILES_PREFIX}{t.id}.mp4", at, t.url_gen)
        if t.return_last_frame:
            t.urls["last_frame"] = self._sign(f"{FILES_PREFIX}{t.id}.png", at, t.url_gen)
        t.needs_fresh_urls = False

    def _body_locked(self, t: _Task, now: float, for_callback: bool = False) -> dict[str, Any]:
        if t.needs_fresh_urls and not for_callback:
            self._issue_urls_locked(t, now)
        fam = _family(t.model)
        req = t.request
        b: dict[str, Any] = {"id": t.id, "model": t.model, "status": t.status}
        if t.status == "failed" and t.error is not None:
            b["error"] = dict(t.error)
        if t.status == "succeeded":
            content = {"video_url": t.urls.get("video", "")}
            if "last_frame" in t.urls:
                content["last_frame_url"] = t.urls["last_frame"]
            b["content"] = content
            b["usage"] = {"completion_tokens": t.usage_tokens, "total_tokens": t.usage_tokens}
        b["created_at"] = int(t.created_at)
        b["updated_at"] = int(t.updated_at)
        if t.status == "succeeded":
            b.update(copy.deepcopy(t.echo))
        if "safety_identifier" in req:
            b["safety_identifier"] = req["safety_identifier"]
        if "priority" in req or fam in ("2.0", "2.5"):
            b["priority"] = req.get("priority", 0)
        for item in req.get("content") or []:
            if isinstance(item, dict) and item.get("type") == "draft_task" and t.status == "succeeded":
                b["draft_task_id"] = item["draft_task"]["id"]
        b["service_tier"] = req.get("service_tier", "default")
        b["execution_expires_after"] = req.get("execution_expires_after", 172800)
        if t.response_extra:
            b.update(copy.deepcopy(t.response_extra))
        return b

    def _state_locked(self, t: _Task) -> dict[str, Any]:
        return copy.deepcopy(
            {
                "id": t.id,
                "status": t.status,
                "fate": t.fate,
                "model": t.model,
                "script": list(t.script),
                "history": list(t.history),
                "created_at": t.created_at,
                "updated_at": t.updated_at,
                "terminal_at": t.terminal_at,
                "deleted_at": t.deleted_at,
                "request": t.request,
                "callback_url": t.callback_url,
                "usage_tokens": t.usage_tokens,
                "error": t.error,
                "urls": dict(t.urls),
                "url_generation": t.url_gen,
                "overrides": {k: v for k, v in t.overrides.items() if k != "video_body"},
                "body": self._body_locked(t, self._clock(), for_callback=True),
            }
        )

    # ---- callbacks -------------------------------------------------------------------------------

    def _dispatch(self, jobs: Iterable[_CallbackJob]) -> None:
        start: list[str] = []
        with self._lock:
            for job in jobs:
                q = self._cb_queues.get(job.task_id)
                if q is None:
                    q = self._cb_queues[job.task_id] = collections.deque()
                    start.append(job.task_id)
                q.append(job)
        for tid in start:
            threading.Thread(
                target=self._drain, args=(tid,), name=f"seedance-sim-cb-{tid}", daemon=True
            ).start()

    def _drain(self, task_id: str) -> None:
        # One thread per task with pending callbacks keeps each task's posts in order.
        while True:
            with self._lock:
                q = self._cb_queues.get(task_id)
                if not q or self._stop.is_set():
                    self._cb_queues.pop(task_id, None)
                    return
                job = q.popleft()
            self._deliver(job)

    def _deliver(self, job: _CallbackJob) -> None:
        cfg = self._config
        attempts = 1 + (max(0, cfg.callback_retries) if job.retry else 0)
        for attempt in range(1, attempts + 1):
            code: int | None = None
            error: str | None = None
            req = urllib.request.Request(
                job.url,
                data=job.body,
                method="POST",
                headers={"Content-Type": "application/json", "User-Agent": "ModelArk-Callback/simulator"},
            )
            try:
                with urllib.request.urlopen(req, timeout=cfg.callback_timeout_s) as resp:
                    code = int(resp.status)
                    resp.read()
            except urllib.error.HTTPError as e:
                code = int(e.code)
                e.close()
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
            with self._lock:
                self._callbacks.append(
                    CallbackRecord(job.url, job.task_id, job.status, attempt, code, error, time.time())
                )
            if code is not None and 200 <= code < 300:
                return
            if attempt < attempts and self._stop.wait(cfg.callback_retry_interval_s):
                return

    # ---- request handling ------------------------------------------------------------------------

    def _conn_opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)

    def _conn_closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _handle(self, h: _Handler, method: str) -> None:
        started = time.monotonic()
        ts = time.time()
        rid = _new_request_id()
        split = urllib.parse.urlsplit(h.path)
        path = split.path
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        kind, task_id = _route(method, path)
        headers = {k: v for k, v in h.headers.items() if k.lower() != "authorization"}
        auth = h.headers.get("Authorization")
        parsed_body: Any = None
        cfg = self._config
        try:
            raw = _read_body(h)
        except (ValueError, OSError):
            resp = self._error(400, "InvalidParameter", "The request body could not be read.", "", rid)
            resp.close = True
        else:
            if kind == "create":
                try:
                    parsed_body = json.loads(raw) if raw else None
                except ValueError:
                    parsed_body = None
            try:
                if kind == "file":
                    resp = self._file(method, task_id or "", path, query, h.headers.get("Range"), rid, cfg)
                elif kind == "other":
                    allowed = (kind == "other" and task_id is not None) or path.rstrip("/") == TASKS_PATH
                    status = 405 if allowed else 404
                    code = "MethodNotAllowed" if allowed else "NotFound"
                    resp = self._error(status, code, f"{method} {path} is not supported.", "", rid)
                else:
                    resp = self._api(kind, method, task_id, query, raw, parsed_body, auth, rid, cfg)
            except _ApiError as e:
                resp = self._error(e.status, e.code, e.message, e.param, rid, e.headers, e.fault)
            except Exception as e:
                resp = self._error(
                    500, "InternalServiceError", f"simulator error: {type(e).__name__}: {e}", "", rid
                )
        if resp.task_id is None:
            resp.task_id = task_id
        # Logged before the answer goes out, so a client that has its response also sees the record.
        record = RequestRecord(
            ts=ts,
            method=method,
            path=path,
            task_id=resp.task_id,
            status=resp.status,
            request_id=rid,
            kind=kind,
            fault=resp.fault,
            headers=headers,
            query=query,
            auth_present=bool(auth),
            body=parsed_body,
            duration_s=time.monotonic() - started,
        )
        with self._lock:
            self._log.append(record)
        self._write(h, method, resp, rid)

    def _write(self, h: _Handler, method: str, resp: _Resp, rid: str) -> None:
        try:
            h.send_response(resp.status)
            h.send_header("Content-Type", resp.content_type)
            length = resp.content_length if resp.content_length is not None else len(resp.body)
            h.send_header("Content-Length", str(length))
            h.send_header("X-Request-Id", rid)
            client_rid = h.headers.get("X-Client-Request-Id")
            if client_rid:
                h.send_header("X-Client-Request-Id", client_rid)
            for k, v in resp.headers:
                h.send_header(k, v)
            if resp.close or resp.drop_after is not None:
                h.send_header("Connection", "close")
                h.close_connection = True
            h.end_headers()
            if method != "HEAD":
                if resp.drop_after is not None:
                    h.wfile.write(resp.body[: resp.drop_after])
                    h.wfile.flush()
                    h.connection.shutdown(socket.SHUT_RDWR)
                else:
                    h.wfile.write(resp.body)
        except OSError:
            h.close_connection = True

    def _error(
        self,
        status: int,
        code: str,
        message: str,
        param: str,
        rid: str,
        headers: Sequence[tuple[str, str]] = (),
        fault: str | None = None,
    ) -> _Resp:
        err = {
            "code": code,
            "message": f"{message} Request id: {rid}",
            "param": param,
            "type": _ERROR_TYPES.get(status, "BadRequest"),
        }
        return _Resp(status, _dumps({"error": err}), headers=list(headers), fault=fault)

    def _bucket_size(self, cfg: SimConfig) -> float:
        if cfg.rps_limit is None:
            return 0.0
        return cfg.rps_burst if cfg.rps_burst is not None else max(1.0, cfg.rps_limit)

    def _fault_locked(self, kind: RequestKind, task_id: str | None, cfg: SimConfig) -> str | None:
        """Raise the 429s/500s due for this request; return "timeout"/"malformed" or None."""
        mono = time.monotonic()
        if mono < self._burst_until:
            ra = self._burst_retry_after
            raise _rate_limited(ra, "429_burst")
        if task_id is not None and task_id in self._task_limits:
            end, ra = self._task_limits[task_id]
            if mono < end:
                raise _rate_limited(ra, "429_task")
            del self._task_limits[task_id]
        if cfg.rps_limit is not None and cfg.rps_limit > 0:
            size = self._bucket_size(cfg)
            self._tokens = min(size, self._tokens + (mono - self._tokens_at) * cfg.rps_limit)
            self._tokens_at = mono
            if self._tokens < 1.0:
                wait = max(1, math.ceil((1.0 - self._tokens) / cfg.rps_limit))
                raise _rate_limited(wait, "rps_limit")
            self._tokens -= 1.0
        if cfg.timeout_rate > 0 and self._rng.random() < cfg.timeout_rate:
            return "timeout"
        if cfg.error_rate_5xx > 0 and self._rng.random() < cfg.error_rate_5xx:
            raise _ApiError(
                500,
                "InternalServiceError",
                "The service encountered an unexpected internal error.",
                fault="5xx",
            )
        if cfg.rate_429 > 0 and self._rng.random() < cfg.rate_429:
            raise _rate_limited(int(cfg.retry_after_s), "429")
        if cfg.malformed_rate > 0 and self._rng.random() < cfg.malformed_rate:
            return "malformed"
        return None

    def _api(
        self,
        kind: RequestKind,
        method: str,
        task_id: str | None,
        query: dict[str, list[str]],
        raw: bytes,
        parsed: Any,
        auth: str | None,
        rid: str,
        cfg: SimConfig,
    ) -> _Resp:
        if cfg.latency_s > 0:
            time.sleep(cfg.latency_s)
        key = ""
        if auth and auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
        if not key or (cfg.api_keys is not None and key not in cfg.api_keys):
            raise _ApiError(
                401, "AuthenticationError", "The API key or AK/SK in the request is missing or invalid."
            )
        with self._lock:
            fault = self._fault_locked(kind, task_id, cfg)
        if fault == "timeout":
            time.sleep(cfg.timeout_sleep_s)
        try:
            if kind == "create":
                status, body, tid = self._create(raw, parsed, cfg)
            elif kind == "get":
                status, body, tid = self._get(task_id or "", cfg)
            elif kind == "list":
                status, body = self._list(query)
                tid = None
            else:
                status, body, tid = self._delete(task_id or "", cfg)
        except _ApiError as e:
            if e.fault is None:
                e.fault = fault
            raise
        data = _dumps(body)
        if fault == "malformed":
            data = data[: max(1, len(data) // 2)]
        return _Resp(status, data, fault=fault, task_id=tid)

    def _create(self, raw: bytes, parsed: Any, cfg: SimConfig) -> tuple[int, Any, str]:
        if parsed is None:
            if not raw.strip():
                raise _ApiError(400, "MissingParameter", "The request body is empty.", "")
            raise _ApiError(400, "InvalidParameter", "The request body is not valid JSON.", "")
        req = _validate_create(parsed, cfg.strict_model_fields)
        text = " ".join(
            str(c.get("text") or "")
            for c in req["content"]
            if isinstance(c, dict) and c.get("type") == "text"
        )
        fate, code, slow = _parse_markers(text, cfg)
        q, r = cfg.queued_s, cfg.running_s
        if slow:
            q, r = q * cfg.slow_factor, r * cfg.slow_factor
        script: list[tuple[str, float | None]] = [("queued", q), ("running", r), (fate, None)]

        def op(now: float, jobs: list[_CallbackJob]) -> _Task:
            if cfg.max_queued is not None:
                queued = sum(1 for t in self._active.values() if t.status == "queued")
                if queued >= cfg.max_queued:
                    raise _ApiError(
                        429,
                        "QuotaExceeded",
                        f"The number of queued tasks has reached the limit of {cfg.max_queued}.",
                        "",
                        [("Retry-After", str(int(cfg.retry_after_s)))],
                    )
            return self._new_task_locked(
                now, req, script, fate=fate, usage_tokens=None, error_code=code, error_message=None,
                task_id=None, overrides={}, response_extra={}, jobs=jobs,
            )  # fmt: skip

        task = self._run(op)
        return 200, {"id": task.id}, task.id

    def _not_found(self, task_id: str, cfg: SimConfig) -> _ApiError:
        return _ApiError(404, cfg.not_found_code, f"The specified task {task_id} is not found.", "id")

    def _get(self, task_id: str, cfg: SimConfig) -> tuple[int, Any, str]:
        def op(now: float, jobs: list[_CallbackJob]) -> dict[str, Any]:
            t = self._tasks.get(task_id)
            if t is None:
                raise self._not_found(task_id, cfg)
            return self._body_locked(t, now)

        return 200, self._run(op), task_id

    def _list(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        def last(name: str) -> str | None:
            vals = [v for v in query.get(name, []) if v != ""]
            return vals[-1] if vals else None

        def int_param(name: str, default: int) -> int:
            v = last(name)
            if v is None:
                return default
            try:
                n = int(v)
            except ValueError:
                raise _invalid(name, "must be an integer") from None
            if not 1 <= n <= 500:
                raise _invalid(name, "value must be in [1, 500]")
            return n

        page_num = int_param("page_num", 1)
        page_size = int_param("page_size", 10)
        statuses = {v for v in query.get("filter.status", []) if v}
        for s in statuses:
            if s not in LIST_STATUSES:
                raise _invalid("filter.status", f"unknown status {s!r}")
        ids = {i for v in query.get("filter.task_ids", []) for i in v.split(",") if i}
        model = last("filter.model")
        tier = last("filter.service_tier") or "default"
        if tier not in ("default", "flex"):
            raise _invalid("filter.service_tier", "must be one of default, flex")

        def op(now: float, jobs: list[_CallbackJob]) -> dict[str, Any]:
            matches = [
                t
                for t in self._tasks.values()
                if (not statuses or t.status in statuses)
                and (not ids or t.id in ids)
                and (model is None or t.model == model)
                and t.request.get("service_tier", "default") == tier
            ]
            matches.sort(key=lambda t: (t.created_at, t.seq), reverse=True)
            page = matches[(page_num - 1) * page_size : page_num * page_size]
            return {"items": [self._body_locked(t, now) for t in page], "total": len(matches)}

        return 200, self._run(op)

    def _delete(self, task_id: str, cfg: SimConfig) -> tuple[int, Any, str]:
        def op(now: float, jobs: list[_CallbackJob]) -> None:
            t = self._tasks.get(task_id)
            if t is None:
                raise self._not_found(task_id, cfg)
            if t.status == "queued":
                t.frozen = True
                self._transition_locked(t, t.stage, "cancelled", now, jobs)
            elif t.status in ("succeeded", "failed", "expired"):
                t.deleted_at = now
                del self._tasks[task_id]
                self._active.pop(task_id, None)
                self._deleted[task_id] = t
            else:
                raise _ApiError(
                    403,
                    "OperationDenied.InvalidState",
                    f"The operation is denied because the task {task_id} is in `{t.status}` status "
                    "and can be neither cancelled nor deleted.",
                    "id",
                )

        self._run(op)
        return 200, {}, task_id

    # ---- files -----------------------------------------------------------------------------------

    def _file_body(self, t: _Task, kind: str) -> tuple[bytes, str]:
        if kind == "last_frame":
            return make_png(t.id), "image/png"
        cfg = self._config
        ctype = str(t.overrides.get("video_content_type", cfg.video_content_type))
        body = t.overrides.get("video_body")
        if isinstance(body, bytes):
            return body, ctype
        if ctype.startswith("text/html"):
            return (
                b"<!DOCTYPE html><html><body><h1>403 Forbidden</h1><p>Access denied.</p></body></html>",
                ctype,
            )
        size = int(t.overrides.get("video_bytes", cfg.video_bytes))
        key = (t.id, size)
        cached = self._file_cache.get(key)
        if cached is None:
            duration = t.echo.get("duration", 5)
            if "frames" in t.echo:
                duration = max(1, int(t.echo["frames"]) // 24)
            cached = make_mp4(t.id, int(duration), size)
            if len(cached) <= _CACHE_LIMIT:
                self._file_cache[key] = cached
        return cached, ctype

    def _file(
        self,
        method: str,
        task_id: str,
        path: str,
        query: dict[str, list[str]],
        range_header: str | None,
        rid: str,
        cfg: SimConfig,
    ) -> _Resp:
        kind = "last_frame" if path.endswith(".png") else "video"
        fault: str | None = None
        if cfg.faults_apply_to_files:
            if cfg.latency_s > 0:
                time.sleep(cfg.latency_s)
            with self._lock:
                fault = self._fault_locked("file", task_id, cfg)
            if fault == "timeout":
                time.sleep(cfg.timeout_sleep_s)

        def tos(status: int, code: str, message: str, fault: str | None = None) -> _Resp:
            return _Resp(
                status, _tos_error(code, message, rid), "application/xml", fault=fault, task_id=task_id
            )

        params = {k: v[-1] for k, v in query.items() if v}
        sig = params.get("X-Tos-Signature", "")
        with self._lock:
            t = self._tasks.get(task_id) or self._deleted.get(task_id)
            if t is None or not t.urls:
                return tos(404, "NoSuchKey", "The specified key does not exist.", fault)
            if not sig or not hmac.compare_digest(sig, self._signature(path, params)):
                return tos(
                    403, "SignatureDoesNotMatch", "The request signature we calculated does not match.", fault
                )
            try:
                date = datetime.strptime(params.get("X-Tos-Date", ""), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
                expires = int(params.get("X-Tos-Expires", "0"))
            except ValueError:
                return tos(403, "AccessDenied", "Request has expired", fault)
            if sig in t.revoked or self._clock() > date.timestamp() + expires:
                return tos(403, "AccessDenied", "Request has expired", fault or "expired_url")
            if cfg.expire_first_download and kind not in t.downloaded:
                t.downloaded.add(kind)
                t.revoked.add(sig)
                t.needs_fresh_urls = True
                return tos(403, "AccessDenied", "Request has expired", "expire_first_download")
            t.downloaded.add(kind)
            drop = t.overrides.get("drop_connection_after_bytes", cfg.drop_connection_after_bytes)
            if drop is not None and method != "HEAD":
                n = t.drops.get(kind, 0)
                if cfg.drop_connection_max is not None and n >= cfg.drop_connection_max:
                    drop = None
                else:
                    t.drops[kind] = n + 1
        body, ctype = self._file_body(t, kind)
        total = len(body)
        etag = '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'
        headers = [("Accept-Ranges", "bytes"), ("ETag", etag), ("x-tos-request-id", rid)]
        status = 200
        rng = _parse_range(range_header, total)
        if isinstance(rng, str):
            return _Resp(416, b"", ctype, [("Content-Range", f"bytes */{total}")], fault, task_id)
        if rng is not None:
            start, end = rng
            body = body[start : end + 1]
            headers.append(("Content-Range", f"bytes {start}-{end}/{total}"))
            status = 206
        resp = _Resp(status, body, ctype, headers, fault, task_id)
        if method == "HEAD":
            resp.content_length = len(body)
            resp.body = b""
        if drop is not None:
            resp.drop_after = int(drop)
            resp.fault = resp.fault or "drop"
        return resp


def _parse_range(header: str | None, total: int) -> tuple[int, int] | str | None:
    """``(start, end)`` inclusive, ``"invalid"`` (416) or None (serve everything)."""
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    if m.group(1) == "":
        n = int(m.group(2))
        if n == 0:
            return "invalid"
        return max(0, total - n), total - 1
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else total - 1
    if start >= total or end < start:
        return "invalid"
    return start, min(end, total - 1)


def serve_forever_cli(host: str, port: int, config: SimConfig | None = None) -> None:
    """Run the simulator until SIGINT/SIGTERM (``seedance-worker simulate``)."""
    sim = Simulator(host, port, config).start()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    shown = f"[{host}]" if ":" in host else host
    print(f"simulator listening on http://{shown}:{sim.port}{API_PREFIX}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
        for s, h in previous.items():
            signal.signal(s, h)
