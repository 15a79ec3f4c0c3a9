"""One task's record (``Task``) and how it is shown: the fields a create echoes back, the API's task
object (``render``) and the test-facing snapshot (``snapshot``).  Pure: no lock, no clock.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from seedance_worker.testing.simulator.validate import family, is_int
from seedance_worker.tokens import sizes_for, video_tokens


@dataclass
class Task:
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


def echo_fields(task_id: str, model: str, req: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """The fields a succeeded task reports (actual values) and the deterministic token count."""
    fam = family(model)
    digest = hashlib.sha256(task_id.encode()).digest()
    seed = req.get("seed")
    if not is_int(seed) or seed == -1:
        seed = int.from_bytes(digest[:4], "big") % 100000
    resolution = str(req.get("resolution") or ("1080p" if fam == "1.0" else "720p")).lower()
    if req.get("draft"):
        resolution = "480p"
    ratio = req.get("ratio") or "16:9"
    if ratio == "adaptive":
        ratio = "16:9"
    echo: dict[str, Any] = {"seed": seed, "resolution": resolution, "ratio": ratio}
    frames: Any = req.get("frames")
    if is_int(frames):
        echo["frames"] = frames
        n_frames = int(frames)
    else:
        duration: Any = req.get("duration")
        if not is_int(duration) or duration < 1:
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
    # Ark's formula (tokens.py), on the size the model renders at this resolution and ratio.
    sizes = sizes_for(model)
    width, height = sizes.get(resolution, sizes["720p"]).get(ratio, sizes["720p"]["16:9"])
    return echo, video_tokens(n_frames, width, height)


def render(t: Task) -> dict[str, Any]:
    """The task object of GET, list items and callback posts, as the task stands now."""
    fam = family(t.model)
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


def snapshot(t: Task) -> dict[str, Any]:
    """The internal state ``Simulator.task()`` returns: a deep copy, safe to keep."""
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
            "body": render(t),
        }
    )
