"""Reading a create body: the 400s the live service answers for bad fields or a model that lacks
them (``validate_create``), the model family, and the prompt markers that pick a task's fate.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from seedance_worker.testing.simulator.config import SimConfig
from seedance_worker.testing.simulator.wire import ApiError
from seedance_worker.tokens import model_family

_RESOLUTIONS = frozenset({"480p", "720p", "1080p", "4k"})
_RATIOS = frozenset({"16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive"})
_MARKER_RE = re.compile(r"\[(fail(?::([A-Za-z0-9_.\-]+))?|expire|succeed|slow)\]", re.IGNORECASE)
# Fields only some families accept (checked with strict_model_fields).
_PER_FAMILY = {
    "draft": ("1.5",),
    "frames": ("1.0",),
    "seed": ("1.5", "1.0"),
    "camera_fixed": ("1.5", "1.0"),
    "output_format": ("2.5",),
    "omni_reference_task_type": ("2.5",),
    "generate_audio": ("2.5", "2.0", "1.5"),
    "priority": ("2.5", "2.0"),
}


def family(model: str) -> str | None:
    return model_family(model)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def invalid(param: str, why: str) -> ApiError:
    return ApiError(
        400,
        "InvalidParameter",
        f"The parameter `{param}` specified in the request is not valid: {why}.",
        param,
    )


def _missing(param: str) -> ApiError:
    return ApiError(
        400,
        "MissingParameter",
        "The request failed because it is missing one or multiple required parameters. "
        f"Request parameter `{param}` is missing.",
        param,
    )


def _unsupported(param: str, model: str) -> ApiError:
    return ApiError(
        400,
        "InvalidParameter",
        f"The specified parameter `{param}` is not supported for model {model}, must be empty.",
        param,
    )


def _bad_role(kind: str, p: str) -> ApiError:
    return ApiError(400, "InvalidParameter", f"invalid role specified for {kind} content", f"{p}.role")


def _check_url(param: str, obj: Any, kinds: tuple[str, ...]) -> None:
    if obj is None:
        raise _missing(param)
    if not isinstance(obj, dict):
        raise invalid(param, "must be an object")
    url = obj.get("url")
    if url is None or url == "":
        raise _missing(f"{param}.url")
    if not isinstance(url, str) or not url.startswith(kinds):
        raise invalid(f"{param}.url", "unsupported url")


def _content_item(p: str, item: Any) -> str | None:
    """Check one content item; return the role it counts as (None for text and draft_task)."""
    if not isinstance(item, dict):
        raise invalid(p, "must be an object")
    typ = item.get("type")
    role = item.get("role")
    if typ is None:
        raise _missing(f"{p}.type")
    if typ == "text":
        text = item.get("text")
        if text is None:
            raise _missing(f"{p}.text")
        if not isinstance(text, str):
            raise invalid(f"{p}.text", "must be a string")
        return None
    if typ == "image_url":
        _check_url(
            f"{p}.image_url", item.get("image_url"), ("http://", "https://", "data:image/", "asset://")
        )
        if role is None or role == "first_frame":
            return "first_frame"
        if role == "last_frame" or role == "reference_image":
            return str(role)
        raise _bad_role("image", p)
    if typ == "video_url":
        _check_url(f"{p}.video_url", item.get("video_url"), ("http://", "https://", "asset://"))
        if role != "reference_video":
            raise _bad_role("video", p)
        return "reference_video"
    if typ == "audio_url":
        _check_url(
            f"{p}.audio_url", item.get("audio_url"), ("http://", "https://", "data:audio/", "asset://")
        )
        if role != "reference_audio":
            raise _bad_role("audio", p)
        return "reference_audio"
    if typ == "draft_task":
        draft = item.get("draft_task")
        if not isinstance(draft, dict) or not isinstance(draft.get("id"), str) or not draft.get("id"):
            raise _missing(f"{p}.draft_task.id")
        return None
    raise invalid(f"{p}.type", f"unknown content type {typ!r}")


def _check_mix(roles: list[str], model: str, fam: str | None, strict: bool) -> None:
    """The rules over the whole content list: how many of each role, and which may go together."""
    first, last = roles.count("first_frame"), roles.count("last_frame")
    ref_img, ref_vid = roles.count("reference_image"), roles.count("reference_video")
    ref_aud = roles.count("reference_audio")
    if first > 1 or last > 1:
        raise invalid("content", "at most one first_frame and one last_frame image are allowed")
    if (first or last) and (ref_img or ref_vid or ref_aud):
        raise ApiError(
            400,
            "InvalidParameter",
            "first/last frame content cannot be mixed with reference media content",
            "content",
        )
    if last and not first:
        raise invalid("content", "a last_frame image requires a first_frame image")
    if ref_aud and not (ref_img or ref_vid) and fam != "2.5":
        raise ApiError(
            400, "InvalidParameter", "reference_audio cannot be the only reference input", "content"
        )
    if ref_img > (30 if fam == "2.5" else 9):
        raise invalid("content", "too many reference images")
    if ref_vid > (10 if fam == "2.5" else 3) or ref_aud > 3:
        raise invalid("content", "too many reference videos or audios")
    if strict and fam in ("1.0", "1.5") and (ref_vid or ref_aud):
        raise invalid("content", f"reference video/audio is not supported for model {model}")


def _validate_content(content: Any, model: str, fam: str | None, strict: bool) -> None:
    if content is None or content == []:
        raise _missing("content")
    if not isinstance(content, list):
        raise invalid("content", "must be an array")
    roles = [r for i, item in enumerate(content) if (r := _content_item(f"content[{i}]", item)) is not None]
    _check_mix(roles, model, fam, strict)


def _check(req: dict[str, Any], name: str, ok: Callable[[Any], bool], why: str) -> None:
    if name in req and not ok(req[name]):
        raise invalid(name, why)


def _check_fields(req: dict[str, Any], fam: str | None) -> None:
    """Each optional field on its own: type and range."""
    for name in ("return_last_frame", "generate_audio", "draft", "camera_fixed", "watermark"):
        _check(req, name, lambda v: isinstance(v, bool), "must be a boolean")
    _check(
        req,
        "callback_url",
        lambda v: isinstance(v, str) and v.startswith(("http://", "https://")),
        "must be an http(s) url",
    )
    _check(req, "service_tier", lambda v: v in ("default", "flex"), "must be one of default, flex")
    _check(
        req,
        "execution_expires_after",
        lambda v: is_int(v) and 3600 <= v <= 259200,
        "value must be an integer in [3600, 259200]",
    )
    _check(
        req,
        "safety_identifier",
        lambda v: isinstance(v, str) and len(v) <= 64,
        "must be a string of <= 64 chars",
    )
    _check(req, "priority", lambda v: is_int(v) and 0 <= v <= 9, "value must be an integer in [0, 9]")
    _check(
        req,
        "resolution",
        lambda v: isinstance(v, str) and v.lower() in _RESOLUTIONS,
        "unsupported resolution",
    )
    _check(req, "ratio", lambda v: v in _RATIOS, "unsupported ratio")
    lo, hi = {"2.5": (4, 30), "2.0": (4, 15), "1.5": (4, 12), "1.0": (2, 12)}.get(fam or "", (2, 30))
    _check(
        req,
        "duration",
        lambda v: is_int(v) and (v == -1 or lo <= v <= hi),
        f"value must be -1 or in [{lo}, {hi}]",
    )
    _check(
        req,
        "frames",
        lambda v: is_int(v) and 29 <= v <= 289 and (v - 25) % 4 == 0,
        "must be 25+4n in [29, 289]",
    )
    _check(req, "seed", lambda v: is_int(v) and -1 <= v <= 2147483647, "value must be in [-1, 2147483647]")
    _check(req, "output_format", lambda v: v in ("mp4", "mov"), "must be one of mp4, mov")
    _check(
        req,
        "omni_reference_task_type",
        lambda v: v in ("auto", "edit", "extend", "reference"),
        "must be one of auto, edit, extend",
    )
    _check(
        req,
        "tools",
        lambda v: isinstance(v, list) and all(isinstance(t, dict) for t in v),
        "must be an array",
    )


def _check_family(req: dict[str, Any], model: str, fam: str) -> None:
    """What the recognised model family does not support."""
    for name, fams in _PER_FAMILY.items():
        if name in req and fam not in fams:
            raise _unsupported(name, model)
    if req.get("service_tier") == "flex" and fam in ("2.0", "2.5"):
        raise invalid("service_tier", f"flex is not supported for model {model}")
    res = str(req.get("resolution", "")).lower()
    if res == "4k" and "seedance-2-0-260128" not in model.lower():
        raise invalid("resolution", f"4k is not supported for model {model}")
    if res == "1080p" and (fam == "2.5" or "2-0-fast" in model or "2-0-mini" in model):
        raise invalid("resolution", f"1080p is not supported for model {model}")


def validate_create(payload: Any, strict: bool) -> dict[str, Any]:
    """Return the non-null create fields, or raise ``ApiError`` (400)."""
    if not isinstance(payload, dict):
        raise ApiError(400, "InvalidParameter", "The request body must be a JSON object.", "")
    model = payload.get("model")
    if model is None or model == "":
        raise _missing("model")
    if not isinstance(model, str):
        raise invalid("model", "must be a string")
    fam = family(model)
    _validate_content(payload.get("content"), model, fam, strict)
    req = {k: v for k, v in payload.items() if v is not None}
    _check_fields(req, fam)
    if req.get("draft") and req.get("return_last_frame"):
        raise invalid("return_last_frame", "not supported together with draft")
    if req.get("draft") and req.get("service_tier") == "flex":
        raise invalid("service_tier", "flex is not supported together with draft")
    if strict and fam is not None:
        _check_family(req, model, fam)
    return req


def parse_markers(text: str, cfg: SimConfig) -> tuple[str, str | None, bool]:
    """(fate, error code or None, slow) from the ``[fail]``/``[fail:Code]``/``[expire]``/``[succeed]``/
    ``[slow]`` markers of a prompt; the last fate marker wins."""
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
