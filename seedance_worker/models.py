"""Typed shapes of the Ark task API and of the Outcome handed down the chain.

Parsing is tolerant where the API drifts (absent and ``null`` alike, integers sent as strings,
unknown fields kept, undocumented statuses kept as strings) and strict where we send (the create
request is validated against the documented create parameters before anything goes out).

Tolerant is not unbounded: an integer outside 64 bits (``"inf"``, ``"1e400"``, 400 digits), a
status or a short field longer than makes sense, or a URL over 16 KiB fails validation (the
client turns that into ``BadResponse``, which the poll backs off on). What of a snapshot is kept
in the Outcome is bounded too (``bounded_snapshot``).
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

log = logging.getLogger(__name__)


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.EXPIRED, Status.CANCELLED})
# Words gateways (new-api and its kin) report for Ark's states. Read as the state they stand for,
# so the schedule polls a "processing" job as running; the snapshot keeps the word it was given
# (``TaskSnapshot.reported_status``).
STATUS_ALIASES: dict[str, Status] = {"processing": Status.RUNNING, "pending": Status.QUEUED}
_warned_statuses: set[str] = set()


MAX_STATUS_CHARS = 64
MAX_SHORT_CHARS = 256  # model names, resolutions, tiers, ids, error codes
MAX_URL_CHARS = 16_384  # signed TOS URLs are 1-3 KB
INT64 = 2**63


def _status(value: Any) -> Any:
    if isinstance(value, Status) or value is None:
        return value
    text = str(value).strip().lower()
    if len(text) > MAX_STATUS_CHARS:
        raise ValueError(f"status longer than {MAX_STATUS_CHARS} characters")
    alias = STATUS_ALIASES.get(text)
    if alias is not None:
        return alias
    try:
        return Status(text)
    except ValueError:
        # An undocumented status must not crash the poller: keep it, treat it as "not terminal".
        if text not in _warned_statuses:
            _warned_statuses.add(text)
            log.warning("undocumented task status %r: treated as not terminal", text)
        return text


def _int_or_none(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return None
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return int(float(text))
        except OverflowError:  # "inf", "1e400": pydantic only turns ValueError into a validation error
            raise ValueError("not a finite integer") from None
    return value


def _int64(value: int | None) -> int | None:
    # Timestamps and counts: anything wider is garbage, and would overflow float arithmetic later.
    if value is not None and not -INT64 <= value < INT64:
        raise ValueError("integer outside the 64-bit range")
    return value


LooseInt = Annotated[int | None, BeforeValidator(_int_or_none), AfterValidator(_int64)]
ShortStr = Annotated[str, StringConstraints(max_length=MAX_SHORT_CHARS)]
UrlStr = Annotated[str, StringConstraints(max_length=MAX_URL_CHARS)]
StatusValue = Annotated[Status | str, BeforeValidator(_status)]


def is_terminal(status: Status | str | None) -> bool:
    return isinstance(status, Status) and status.is_terminal


class _Open(BaseModel):
    """Keeps fields we do not know yet: the API adds fields faster than we release."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class TaskError(_Open):
    code: ShortStr | None = None
    message: str | None = None


class TaskContent(_Open):
    video_url: UrlStr | None = None
    last_frame_url: UrlStr | None = None
    file_url: UrlStr | None = None


class Usage(_Open):
    completion_tokens: LooseInt = None
    total_tokens: LooseInt = None


class TaskSnapshot(_Open):
    """One GET of ``/contents/generations/tasks/{id}`` (Ark's task object)."""

    id: ShortStr
    model: ShortStr | None = None
    status: StatusValue
    error: TaskError | None = None
    created_at: LooseInt = None
    updated_at: LooseInt = None
    content: TaskContent | None = None
    seed: LooseInt = None
    resolution: ShortStr | None = None
    ratio: ShortStr | None = None
    duration: LooseInt = None
    frames: LooseInt = None
    framespersecond: LooseInt = None
    generate_audio: bool | None = None
    tools: list[Any] | None = None
    safety_identifier: ShortStr | None = None
    priority: LooseInt = None
    draft: bool | None = None
    draft_task_id: ShortStr | None = None
    service_tier: ShortStr | None = None
    execution_expires_after: LooseInt = None
    usage: Usage | None = None
    revised_prompt: str | None = None
    output_format: ShortStr | None = None
    # Set when the API said another word for ``status`` (``processing``, ``pending``): that word.
    reported_status: ShortStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _keep_the_reported_word(cls, data: Any) -> Any:
        raw = data.get("status") if isinstance(data, dict) else None
        if isinstance(raw, str) and "reported_status" not in data:
            word = raw.strip()
            if word.lower() in STATUS_ALIASES:
                return {**data, "reported_status": word[:MAX_STATUS_CHARS]}
        return data

    @property
    def is_terminal(self) -> bool:
        return is_terminal(self.status)

    @property
    def status_text(self) -> str:
        """The state as the engine reads it (``running`` for a gateway's ``processing``)."""
        return str(self.status.value if isinstance(self.status, Status) else self.status)

    @property
    def video_url(self) -> str | None:
        return self.content.video_url if self.content else None

    def deadline(self, default_expires_after_s: int = 172_800) -> float | None:
        """When the server should have ended the task at the latest (created_at + expiry window)."""
        if self.created_at is None:
            return None
        return float(self.created_at + (self.execution_expires_after or default_expires_after_s))


class TaskList(_Open):
    items: list[TaskSnapshot] = Field(default_factory=list)
    total: LooseInt = 0


# --- what of a snapshot is kept (Outcome, job record, webhook) ------------------------------------

EXTRA_FIELD_MAX_BYTES = 2048  # one unknown field (or `tools`), as JSON
EXTRAS_MAX_BYTES = 8192  # all unknown fields of one snapshot together
TEXT_MAX_CHARS = 4096  # revised_prompt, error.message
DROPPED_FIELDS = "dropped_fields"


def bounded_snapshot(snap: TaskSnapshot) -> dict[str, Any]:
    """The snapshot as the Outcome keeps it: documented fields whole (they are bounded at parse),
    free text cut at ``TEXT_MAX_CHARS``, and unknown fields (at the top and inside ``content``,
    ``usage``, ``error``) and ``tools`` kept only while each stays under ``EXTRA_FIELD_MAX_BYTES``
    and all of them under ``EXTRAS_MAX_BYTES``; the names of the dropped ones are listed under
    ``dropped_fields``. The Outcome is copied into Redis several times and into the webhook."""
    data = snap.model_dump(mode="json", exclude_none=True)
    budget = [EXTRAS_MAX_BYTES]
    dropped: list[str] = []
    extras = [(data, "", [*(snap.model_extra or {}), "tools"])]
    for name in ("content", "usage", "error"):
        part = getattr(snap, name)
        if part is not None and isinstance(data.get(name), dict):
            extras.append((data[name], name + ".", list((part.model_extra or {}).keys())))
    for holder, prefix, names in extras:
        for key in names:
            if key in holder and not _fits(holder[key], budget):
                del holder[key]
                dropped.append(prefix + key)
    _cut_text(data, "revised_prompt")
    if isinstance(data.get("error"), dict):
        _cut_text(data["error"], "message")
    if dropped:
        data[DROPPED_FIELDS] = dropped
    return data


def _fits(value: Any, budget: list[int]) -> bool:
    size = len(json.dumps(value, ensure_ascii=False).encode())
    if size > EXTRA_FIELD_MAX_BYTES or size > budget[0]:
        return False
    budget[0] -= size
    return True


def _cut_text(holder: dict[str, Any], key: str) -> None:
    text = holder.get(key)
    if isinstance(text, str) and len(text) > TEXT_MAX_CHARS:
        holder[key] = f"{text[:TEXT_MAX_CHARS]}... [cut {len(text) - TEXT_MAX_CHARS} characters]"


# --- the create request (POST /contents/generations/tasks) ------------------------------------

ImageRole = Literal["first_frame", "last_frame", "reference_image"]


class _Url(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1)


class TextItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"] = "text"
    text: str = Field(min_length=1)


class ImageItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["image_url"] = "image_url"
    image_url: _Url
    role: ImageRole | None = None


class VideoItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["video_url"] = "video_url"
    video_url: _Url
    role: Literal["reference_video"] = "reference_video"


class AudioItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["audio_url"] = "audio_url"
    audio_url: _Url
    role: Literal["reference_audio"] = "reference_audio"


class _DraftRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)


class DraftTaskItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["draft_task"] = "draft_task"
    draft_task: _DraftRef


ContentItem = Annotated[
    TextItem | ImageItem | VideoItem | AudioItem | DraftTaskItem, Field(discriminator="type")
]


class CreateRequest(BaseModel):
    """Body of ``POST /contents/generations/tasks``; validated before anything is sent."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    content: list[ContentItem] = Field(min_length=1)
    callback_url: str | None = None
    return_last_frame: bool | None = None
    service_tier: Literal["default", "flex"] | None = None
    execution_expires_after: int | None = Field(None, ge=3600, le=259_200)
    generate_audio: bool | None = None
    draft: bool | None = None
    safety_identifier: str | None = Field(None, max_length=64)
    priority: int | None = Field(None, ge=0, le=9)
    resolution: Literal["480p", "720p", "1080p", "4k"] | None = None
    ratio: Literal["16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive"] | None = None
    duration: int | None = None
    frames: int | None = None
    seed: int | None = Field(None, ge=-1, le=2_147_483_647)
    camera_fixed: bool | None = None
    watermark: bool | None = None
    output_format: Literal["mp4", "mov"] | None = None
    omni_reference_task_type: str | None = None
    tools: list[dict[str, Any]] | None = None

    @field_validator("resolution", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: int | None) -> int | None:
        if value is not None and value != -1 and not 2 <= value <= 30:
            raise ValueError("duration must be -1 (model chooses) or between 2 and 30 seconds")
        return value

    @field_validator("frames")
    @classmethod
    def _frames(cls, value: int | None) -> int | None:
        if value is not None and (not 29 <= value <= 289 or (value - 25) % 4):
            raise ValueError("frames must be 25+4n within [29, 289]")
        return value

    @model_validator(mode="after")
    def _modes(self) -> CreateRequest:
        roles = [i.role for i in self.content if isinstance(i, ImageItem)]
        refs = any(isinstance(i, VideoItem | AudioItem) for i in self.content) or "reference_image" in roles
        frames = any(r in ("first_frame", "last_frame", None) for r in roles)
        if refs and frames:
            raise ValueError("first/last frame content cannot be mixed with reference media content")
        if "last_frame" in roles and not any(r in ("first_frame", None) for r in roles):
            raise ValueError("a last_frame image needs a first_frame image")
        if roles.count("first_frame") + roles.count(None) > 1 or roles.count("last_frame") > 1:
            raise ValueError("at most one first_frame and one last_frame image")
        if sum(isinstance(i, TextItem) for i in self.content) > 1:
            raise ValueError("at most one text prompt")
        if self.draft and self.return_last_frame:
            raise ValueError("return_last_frame is not available with draft")
        if self.draft and self.service_tier == "flex":
            raise ValueError("draft is not available with service_tier flex")
        return self

    def to_body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# --- what flows down the chain --------------------------------------------------------------------

OutcomeStatus = Literal["succeeded", "failed", "expired", "cancelled", "not_found"]


class VideoFile(BaseModel):
    uri: str
    sha256: str
    bytes: int
    content_type: str
    last_frame_uri: str | None = None


class Charge(BaseModel):
    completion_tokens: int | None = None
    total_tokens: int | None = None
    model: str | None = None
    service_tier: str | None = None
    amount: str | None = None
    currency: str | None = None
    entry_id: str | None = None
    price_rule: str | None = None  # the price table path that priced it (pricing.py)
    price_per_million: str | None = None


class Notification(BaseModel):
    webhook_id: str | None = None
    status_code: int | None = None
    attempts: int = 0
    delivered: bool = False
    error: str | None = None


class Outcome(BaseModel):
    """The terminal result of one remote task, handed to every downstream task (README: Outcome)."""

    model_config = ConfigDict(extra="allow")

    task_id: str
    status: OutcomeStatus
    snapshot: dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    polls: int = 0
    tracked_at: float | None = None
    terminal_at: float | None = None
    video: VideoFile | None = None
    charge: Charge | None = None
    notification: Notification | None = None
    error: dict[str, Any] | None = None
    step_errors: dict[str, dict[str, Any]] = Field(default_factory=dict)
    account: str | None = None  # the name of the account the task was made and polled with; None: default
    # What the task was created with that prices depend on and the GET does not return (model,
    # service_tier, resolution, ratio, duration or frames, has_video_input), and the estimate made
    # at submit under "estimate"; None for a task tracked without them.
    submitted: dict[str, Any] | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    def snapshot_model(self) -> TaskSnapshot | None:
        return TaskSnapshot.model_validate(self.snapshot) if self.snapshot else None

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
