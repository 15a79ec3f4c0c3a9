"""Parsing the API's bodies (tolerant where the API drifts) and validating create requests."""

from __future__ import annotations

import json
import logging

import pytest
from pydantic import ValidationError

from seedance_worker.models import (
    EXTRAS_MAX_BYTES,
    TEXT_MAX_CHARS,
    CreateRequest,
    Outcome,
    Status,
    TaskList,
    TaskSnapshot,
    bounded_snapshot,
)

QUEUED = {
    "id": "cgt-20260805143012-k7q2m", "model": "dreamina-seedance-2-0-260128", "status": "queued",
    "created_at": 1785911412, "updated_at": 1785911412,
    "service_tier": "default", "execution_expires_after": 172800, "priority": 0,
}  # fmt: skip
RUNNING = {**QUEUED, "status": "running", "updated_at": 1785911414}
SUCCEEDED = {
    "id": "cgt-20260805143012-k7q2m", "model": "dreamina-seedance-2-0-260128", "status": "succeeded",
    "content": {
        "video_url": "https://ark-content-generation-v2-ap-southeast-1.tos-ap-southeast-1.volces.com/"
        "seedance/x.mp4?X-Tos-Algorithm=TOS4-HMAC-SHA256&X-Tos-Expires=86400&X-Tos-Signature=abc",
        "last_frame_url": "https://ark-content-generation-v2-ap-southeast-1.tos-ap-southeast-1.volces.com/"
        "seedance/x.png?X-Tos-Expires=86400",
    },
    "usage": {"completion_tokens": 108900, "total_tokens": 108900},
    "created_at": 1785911412, "updated_at": 1785911507,
    "seed": 78674, "resolution": "720p", "ratio": "16:9", "duration": 5, "framespersecond": 24,
    "generate_audio": True, "safety_identifier": "u_5f2c9a", "priority": 0,
    "service_tier": "default", "execution_expires_after": 172800,
}  # fmt: skip
FAILED = {
    "id": "cgt-20260805150102-p3xzt", "model": "seedance-1-5-pro-251215", "status": "failed",
    "error": {"code": "OutputVideoSensitiveContentDetected",
              "message": "The request failed because the output video may contain sensitive information. "
                         "Request id: 02178591346223100000000000000000000000000000000a1b2c3"},
    "created_at": 1785913262, "updated_at": 1785913331,
    "service_tier": "default", "execution_expires_after": 172800,
}  # fmt: skip
EXPIRED = {
    "id": "cgt-batch-20260805150102-r9d4w", "model": "seedance-1-0-pro-250528", "status": "expired",
    "created_at": 1785913262, "updated_at": 1785916862,
    "service_tier": "flex", "execution_expires_after": 3600,
}  # fmt: skip
CANCELLED = {
    "id": "cgt-20260805151530-a0m7c", "model": "dreamina-seedance-2-0-fast-260128", "status": "cancelled",
    "created_at": 1785914130, "updated_at": 1785914190,
    "service_tier": "default", "execution_expires_after": 172800, "priority": 0,
}  # fmt: skip


def test_queued_and_running_examples_parse_as_not_terminal() -> None:
    """The queued/running bodies of section 8 give their values and are not terminal."""
    q = TaskSnapshot.model_validate(QUEUED)
    r = TaskSnapshot.model_validate(RUNNING)
    assert q.status is Status.QUEUED and not q.is_terminal
    assert r.status is Status.RUNNING and not r.is_terminal
    assert q.created_at == 1785911412 and q.execution_expires_after == 172800 and q.priority == 0
    assert q.content is None and q.error is None and q.usage is None
    assert q.deadline() == 1785911412 + 172800


def test_succeeded_example_gives_every_field() -> None:
    """The succeeded body: urls, usage, seed, resolution, ratio, duration, fps, audio, safety id."""
    s = TaskSnapshot.model_validate(SUCCEEDED)
    assert s.status is Status.SUCCEEDED and s.is_terminal
    assert s.content is not None and s.content.video_url is not None
    assert s.content.video_url.startswith("https://ark-content-generation-v2")
    assert s.content.last_frame_url is not None and s.content.last_frame_url.endswith("X-Tos-Expires=86400")
    assert s.usage is not None and s.usage.completion_tokens == 108900 and s.usage.total_tokens == 108900
    assert (s.seed, s.resolution, s.ratio, s.duration, s.framespersecond) == (78674, "720p", "16:9", 5, 24)
    assert s.generate_audio is True and s.safety_identifier == "u_5f2c9a"
    assert s.service_tier == "default" and s.updated_at == 1785911507


def test_failed_expired_cancelled_examples() -> None:
    """failed carries error code and message; expired and cancelled are terminal without one."""
    f = TaskSnapshot.model_validate(FAILED)
    assert f.status is Status.FAILED and f.is_terminal
    assert f.error is not None and f.error.code == "OutputVideoSensitiveContentDetected"
    assert f.error.message is not None and "Request id: 0217859134622" in f.error.message
    e = TaskSnapshot.model_validate(EXPIRED)
    assert e.status is Status.EXPIRED and e.is_terminal and e.execution_expires_after == 3600
    assert e.id.startswith("cgt-batch-") and e.service_tier == "flex"
    c = TaskSnapshot.model_validate(CANCELLED)
    assert c.status is Status.CANCELLED and c.is_terminal and c.error is None


def test_list_example() -> None:
    """The list body parses into items and total."""
    body = {"total": 2, "items": [SUCCEEDED, CANCELLED]}
    lst = TaskList.model_validate(body)
    assert lst.total == 2 and [i.status for i in lst.items] == [Status.SUCCEEDED, Status.CANCELLED]


def test_unknown_status_and_fields_survive(caplog: pytest.LogCaptureFixture) -> None:
    """An undocumented status is kept as a string, not terminal, logged once; unknown fields stay."""
    body = {
        **RUNNING,
        "status": "preprocessing_v9",
        "progress": 0.4,
        "usage": {"tool_usage": {"web_search": 2}},
    }
    with caplog.at_level(logging.WARNING):
        s = TaskSnapshot.model_validate(body)
        TaskSnapshot.model_validate(body)
    assert s.status == "preprocessing_v9" and not s.is_terminal
    assert sum("preprocessing_v9" in r.getMessage() for r in caplog.records) == 1
    dumped = s.model_dump(mode="json")
    assert dumped["progress"] == 0.4
    assert dumped["usage"]["tool_usage"] == {"web_search": 2}
    assert json.loads(s.model_dump_json())["status"] == "preprocessing_v9"


def test_null_absent_and_string_integers() -> None:
    """null and absent read the same; integers sent as strings are accepted."""
    body = {
        **QUEUED,
        "error": None,
        "content": None,
        "seed": None,
        "duration": "5",
        "usage": {"completion_tokens": "108900", "total_tokens": None},
    }
    s = TaskSnapshot.model_validate(body)
    assert s.error is None and s.content is None and s.seed is None
    assert s.duration == 5 and s.usage is not None and s.usage.completion_tokens == 108900
    assert s.usage.total_tokens is None


def test_status_case_insensitive() -> None:
    """A status in another case still maps to the enum."""
    assert TaskSnapshot.model_validate({**QUEUED, "status": "SUCCEEDED"}).status is Status.SUCCEEDED


def test_create_request_valid_and_body_has_no_nulls() -> None:
    """A valid request validates and serialises without null fields."""
    req = CreateRequest.model_validate({
        "model": "seedance-1-5-pro-251215",
        "content": [{"type": "text", "text": "a cat"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}, "role": "first_frame"}],
        "resolution": "720P", "duration": 5, "execution_expires_after": 3600,
    })  # fmt: skip
    body = req.to_body()
    assert body["resolution"] == "720p" and "seed" not in body and body["content"][1]["role"] == "first_frame"


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"execution_expires_after": 100}, "execution_expires_after"),
        ({"execution_expires_after": 300000}, "execution_expires_after"),
        ({"priority": 10}, "priority"),
        ({"seed": -2}, "seed"),
        ({"duration": 99}, "duration"),
        ({"frames": 30}, "frames"),
        ({"resolution": "8k"}, "resolution"),
        ({"ratio": "2:1"}, "ratio"),
        ({"safety_identifier": "x" * 65}, "safety_identifier"),
        ({"content": []}, "content"),
        ({"content": [{"type": "image_url", "image_url": {"url": "u"}, "role": "hero"}]}, "role"),
        ({"content": [{"type": "video_url", "video_url": {"url": "u"}, "role": "reference_video"},
                      {"type": "image_url", "image_url": {"url": "u"}, "role": "first_frame"}]}, "mixed"),
        ({"content": [{"type": "image_url", "image_url": {"url": "u"}, "role": "last_frame"}]}, "first_frame"),
        ({"bogus": 1}, "bogus"),
    ],
)  # fmt: skip
def test_create_request_refuses_out_of_range(change: dict[str, object], needle: str) -> None:
    """Each documented range and mode rule is checked before anything is sent."""
    base: dict[str, object] = {"model": "m", "content": [{"type": "text", "text": "x"}]}
    with pytest.raises(ValidationError) as info:
        CreateRequest.model_validate({**base, **change})
    assert needle in str(info.value)


def test_outcome_round_trips_as_json() -> None:
    """The Outcome is a JSON dict on the wire and comes back equal."""
    o = Outcome(task_id="cgt-1", status="succeeded", snapshot=SUCCEEDED, metadata={"user": "u1"}, polls=3)
    again = Outcome.model_validate(json.loads(json.dumps(o.wire())))
    assert again == o and again.succeeded


# --- issue 14: bounded parsing, bounded Outcome snapshots ------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"created_at": "inf"},
        {"created_at": "-Infinity"},
        {"created_at": "1e400"},
        {"execution_expires_after": "1e400"},
        {"created_at": 10**400},
        {"created_at": "9" * 400},
        {"updated_at": 2**63},
        {"usage": {"completion_tokens": "1" * 5000}},
        {"status": "s" * 65},
        {"model": "m" * 257},
        {"content": {"video_url": "https://x/" + "v" * 20_000}},
    ],
    ids=["inf", "-inf", "1e400", "expires-1e400", "int-400-digits", "str-400-digits", "2**63",
         "tokens-5000-digits", "status-65", "model-257", "url-20k"],
)  # fmt: skip
def test_absurd_values_fail_validation_not_arithmetic(change: dict[str, object]) -> None:
    """Each is a ValidationError (the client's BadResponse), never an OverflowError at parse or
    later in the deadline arithmetic."""
    with pytest.raises(ValidationError):
        TaskSnapshot.model_validate({**RUNNING, **change})


def test_the_widest_accepted_integers_still_do_arithmetic() -> None:
    """At the edge of the accepted range the deadline is still a float, not an overflow."""
    s = TaskSnapshot.model_validate({**RUNNING, "created_at": 2**63 - 1, "execution_expires_after": -(2**63)})
    assert isinstance(s.deadline(), float)


def test_bounded_snapshot_keeps_documented_fields_and_drops_large_unknown_ones() -> None:
    """Documented fields stay whole; an unknown field over 2 KiB (at the top or inside content /
    usage / error) is dropped and named; small unknown fields stay; free text is cut at 4096."""
    body = {
        **SUCCEEDED,
        "progress": 1.0,
        "debug_trace": "t" * 60_000,
        "content": {**SUCCEEDED["content"], "thumbnails": ["x" * 3000]},  # type: ignore[dict-item]
        "usage": {**SUCCEEDED["usage"], "tool_usage": {"web_search": 2}},  # type: ignore[dict-item]
        "revised_prompt": "p" * 10_000,
        "error": {"code": "X", "message": "m" * 10_000, "detail": {"k": "v" * 5000}},
        "tools": [{"type": "web_search", "blob": "b" * 5000}],
    }
    kept = bounded_snapshot(TaskSnapshot.model_validate(body))
    assert kept["content"]["video_url"] == SUCCEEDED["content"]["video_url"]  # type: ignore[index]
    assert kept["usage"] == {"completion_tokens": 108900, "total_tokens": 108900, "tool_usage": {"web_search": 2}}
    assert kept["progress"] == 1.0 and kept["seed"] == 78674
    assert sorted(kept["dropped_fields"]) == ["content.thumbnails", "debug_trace", "error.detail", "tools"]
    assert "debug_trace" not in kept and "thumbnails" not in kept["content"] and "tools" not in kept
    assert kept["revised_prompt"] == "p" * TEXT_MAX_CHARS + "... [cut 5904 characters]"
    assert kept["error"]["message"].startswith("m" * TEXT_MAX_CHARS + "... [cut ")
    assert len(json.dumps(kept)) < 16_000
    again = Outcome(task_id="cgt-1", status="succeeded", snapshot=kept).snapshot_model()
    assert again is not None and again.video_url == SUCCEEDED["content"]["video_url"]  # type: ignore[index]


def test_bounded_snapshot_budget_for_all_unknown_fields_together() -> None:
    """Many small unknown fields fit one by one but not all together: the total stays within 8 KiB."""
    body = {**RUNNING, **{f"f{i:03d}": "z" * 1000 for i in range(100)}}
    kept = bounded_snapshot(TaskSnapshot.model_validate(body))
    extras = {k: v for k, v in kept.items() if k.startswith("f")}
    assert len(extras) > 0 and sum(len(json.dumps(v)) for v in extras.values()) <= EXTRAS_MAX_BYTES
    assert len(kept["dropped_fields"]) == 100 - len(extras)


def test_bounded_snapshot_of_a_plain_body_is_its_dump() -> None:
    """Nothing is dropped or marked when nothing is large."""
    s = TaskSnapshot.model_validate(SUCCEEDED)
    assert bounded_snapshot(s) == s.model_dump(mode="json", exclude_none=True)
