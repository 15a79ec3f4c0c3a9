"""Tests of the local Ark task API simulator, over a real socket with ``requests``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests

from seedance_worker.testing.simulator import SimConfig, Simulator, make_mp4
from seedance_worker.testing.webhooks import WebhookReceiver
from tests.support.waiting import wait_for

TASKS = "/contents/generations/tasks"
MODEL_20 = "dreamina-seedance-2-0-260128"
MODEL_15 = "seedance-1-5-pro-251215"
RID_RE = re.compile(r"^02\d{13}[0-9a-f]{38}$")
ID_RE = re.compile(r"^cgt-\d{14}-[a-z0-9]{5}$")


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """A simulator with short timings."""
    with Simulator(config=SimConfig(queued_s=0.1, running_s=0.15, callback_retry_interval_s=0.05)) as s:
        yield s


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A keep-alive session carrying a bearer key."""
    with requests.Session() as s:
        s.headers["Authorization"] = "Bearer test-key"
        yield s


def create(http: requests.Session, sim: Simulator, text: str = "a cat", **fields: Any) -> requests.Response:
    body = {"model": fields.pop("model", MODEL_20), "content": [{"type": "text", "text": text}], **fields}
    return http.post(sim.base_url + TASKS, json=body)


def get(http: requests.Session, sim: Simulator, task_id: str) -> requests.Response:
    return http.get(f"{sim.base_url}{TASKS}/{task_id}")


def assert_error(resp: requests.Response, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err: dict[str, Any] = resp.json()["error"]
    assert err["code"] == code
    assert set(err) == {"code", "message", "param", "type"}
    rid = resp.headers["X-Request-Id"]
    assert err["message"].endswith(f" Request id: {rid}")
    if param is not None:
        assert err["param"] == param
    return err


# ---- create / get ----------------------------------------------------------------------------------


def test_create_returns_only_an_id_and_queued_body_omits_late_fields(
    sim: Simulator, http: requests.Session
) -> None:
    """Create answers {"id"}; a queued GET carries only the fields that apply yet."""
    r = create(http, sim, safety_identifier="u_1")
    assert r.status_code == 200
    assert list(r.json()) == ["id"]
    task_id = r.json()["id"]
    assert ID_RE.match(task_id)
    assert RID_RE.match(r.headers["X-Request-Id"])
    body = get(http, sim, task_id).json()
    assert body["status"] == "queued"
    assert set(body) == {
        "id", "model", "status", "created_at", "updated_at", "service_tier",
        "execution_expires_after", "priority", "safety_identifier",
    }  # fmt: skip
    assert body["execution_expires_after"] == 172800
    assert body["service_tier"] == "default"
    assert isinstance(body["created_at"], int)


def test_http_task_walks_to_succeeded_with_echoed_fields(sim: Simulator, http: requests.Session) -> None:
    """An HTTP-created task becomes running then succeeded, echoing actual parameters and usage."""
    task_id = create(http, sim, ratio="adaptive", return_last_frame=True, generate_audio=False).json()["id"]
    wait_for(lambda: get(http, sim, task_id).json()["status"] == "running")
    body = wait_for(lambda: (b := get(http, sim, task_id).json())["status"] == "succeeded" and b)
    assert body["usage"] == {"completion_tokens": 108900, "total_tokens": 108900}
    assert body["ratio"] == "16:9" and body["resolution"] == "720p" and body["duration"] == 5
    assert body["framespersecond"] == 24 and body["generate_audio"] is False
    assert isinstance(body["seed"], int)
    assert body["content"]["video_url"].startswith(sim.url + "/files/")
    assert "X-Tos-Signature=" in body["content"]["video_url"]
    assert body["content"]["last_frame_url"].split("?")[0].endswith(".png")
    assert "error" not in body
    state = sim.task(task_id)
    assert state is not None
    assert [s for s, _ in state["history"]] == ["queued", "running", "succeeded"]
    assert state["terminal_at"] == state["history"][-1][1]


def test_scripted_task_fields_at_each_stage(sim: Simulator, http: requests.Session) -> None:
    """add_task follows its script; fields appear only once they apply."""
    task_id = sim.add_task(
        [("queued", 0.15), ("running", 0.15), ("succeeded", None)],
        model=MODEL_15,
        usage_tokens=4321,
        resolution="1080p",
        duration=10,
        seed=7,
    )
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 3
    while "succeeded" not in seen and time.monotonic() < deadline:
        b = get(http, sim, task_id).json()
        seen.setdefault(b["status"], b)
        time.sleep(0.02)
    assert list(seen) == ["queued", "running", "succeeded"]
    for status in ("queued", "running"):
        assert "content" not in seen[status] and "usage" not in seen[status] and "seed" not in seen[status]
    done = seen["succeeded"]
    assert done["usage"]["completion_tokens"] == 4321
    assert (done["resolution"], done["duration"], done["seed"]) == ("1080p", 10, 7)
    assert "last_frame_url" not in done["content"]
    assert done["updated_at"] >= done["created_at"]


def test_failed_task_has_error_and_markers_pick_fates(sim: Simulator, http: requests.Session) -> None:
    """[fail], [fail:Code] and [expire] prompt markers pick the fate; failed carries error."""
    a = create(http, sim, "a cat [fail]").json()["id"]
    b = create(http, sim, "a dog [fail:InputTextSensitiveContentDetected]").json()["id"]
    c = create(http, sim, "a cow [expire]").json()["id"]
    d = sim.add_task([("queued", 0.05), ("failed", None)], error_code="QuotaExceeded", error_message="quota.")
    fa = wait_for(lambda: (x := get(http, sim, a).json())["status"] == "failed" and x)
    assert fa["error"]["code"] == "OutputVideoSensitiveContentDetected"
    assert "Request id: 02" in fa["error"]["message"]
    assert "content" not in fa and "usage" not in fa
    fb = wait_for(lambda: (x := get(http, sim, b).json())["status"] == "failed" and x)
    assert fb["error"]["code"] == "InputTextSensitiveContentDetected"
    fc = wait_for(lambda: (x := get(http, sim, c).json())["status"] == "expired" and x)
    assert "error" not in fc
    fd = wait_for(lambda: (x := get(http, sim, d).json())["status"] == "failed" and x)
    assert fd["error"]["code"] == "QuotaExceeded" and fd["error"]["message"].startswith("quota.")
    assert sim.task(c)["fate"] == "expired"  # type: ignore[index]


def test_undocumented_status_is_served_verbatim(sim: Simulator, http: requests.Session) -> None:
    """Statuses outside the documented set are returned as-is."""
    task_id = sim.add_task([("preprocessing", 0.1), ("running", None)])
    assert get(http, sim, task_id).json()["status"] == "preprocessing"
    wait_for(lambda: get(http, sim, task_id).json()["status"] == "running")


def test_execution_expires_after_expires_a_stuck_task(http: requests.Session) -> None:
    """A task stuck before a terminal state expires at created_at + execution_expires_after * time_scale."""
    with Simulator(config=SimConfig(time_scale=0.0001)) as sim:
        task_id = sim.add_task([("queued", None)], execution_expires_after=3600)
        body = wait_for(lambda: (x := get(http, sim, task_id).json())["status"] == "expired" and x, timeout_s=3)
        state = sim.task(task_id)
        assert state is not None and state["history"][-1][0] == "expired"
        assert body["execution_expires_after"] == 3600


def test_injected_clock_drives_transitions(http: requests.Session) -> None:
    """With an injected clock nothing moves until the clock does."""
    now = [1_800_000_000.0]
    with Simulator(config=SimConfig(queued_s=10, running_s=20), clock=lambda: now[0]) as sim:
        task_id = create(http, sim).json()["id"]
        assert get(http, sim, task_id).json()["status"] == "queued"
        now[0] += 10
        assert get(http, sim, task_id).json()["status"] == "running"
        now[0] += 20
        body = get(http, sim, task_id).json()
        assert body["status"] == "succeeded"
        assert body["updated_at"] == 1_800_000_030
        assert task_id.startswith("cgt-20270115")  # UTC+8 wall time of created_at
        now[0] += 8 * 86400  # past the 7-day retention
        sim.tick()
        assert get(http, sim, task_id).status_code == 404


def test_max_running_gates_queued_tasks(http: requests.Session) -> None:
    """With max_running=1 a second task waits in queued until the first finishes."""
    with Simulator(config=SimConfig(queued_s=0.0, running_s=0.3, max_running=1)) as sim:
        a = create(http, sim).json()["id"]
        b = create(http, sim).json()["id"]
        wait_for(lambda: get(http, sim, a).json()["status"] == "running")
        assert get(http, sim, b).json()["status"] == "queued"
        wait_for(lambda: get(http, sim, b).json()["status"] == "running")
        assert get(http, sim, a).json()["status"] == "succeeded"


# ---- list -------------------------------------------------------------------------------------------


def test_list_filters_paging_and_hidden_flex(sim: Simulator, http: requests.Session) -> None:
    """List pages newest first, filters by ids/status/model and hides flex unless asked."""
    ids = [sim.add_task([("succeeded", None)], model=MODEL_20) for _ in range(3)]
    ids += [sim.add_task([("queued", None)], model=MODEL_15) for _ in range(2)]
    flex = create(http, sim, model=MODEL_15, service_tier="flex").json()["id"]
    assert flex.startswith("cgt-batch-")
    url = sim.base_url + TASKS
    everything = http.get(url, params={"page_size": 500}).json()
    assert everything["total"] == 5
    assert [t["id"] for t in everything["items"]] == ids[::-1]
    pages = [http.get(url, params={"page_size": 2, "page_num": n}).json() for n in (1, 2, 3)]
    assert [len(p["items"]) for p in pages] == [2, 2, 1] and all(p["total"] == 5 for p in pages)
    assert [t["id"] for p in pages for t in p["items"]] == ids[::-1]
    assert http.get(url).json()["total"] == 5  # default page_size 10
    r = http.get(
        url, params=[("filter.task_ids", ids[0]), ("filter.task_ids", ids[4]), ("filter.task_ids", flex)]
    )
    assert {t["id"] for t in r.json()["items"]} == {ids[0], ids[4]}
    r = http.get(url, params={"filter.status": "succeeded"}).json()
    assert r["total"] == 3 and all(t["status"] == "succeeded" and "content" in t for t in r["items"])
    assert http.get(url, params={"filter.model": MODEL_15}).json()["total"] == 2
    r = http.get(url, params={"filter.service_tier": "flex"}).json()
    assert [t["id"] for t in r["items"]] == [flex] and r["items"][0]["service_tier"] == "flex"
    for bad in ({"page_size": 0}, {"page_size": 501}, {"page_num": 0}, {"page_num": "x"}):
        name = next(iter(bad))
        assert_error(http.get(url, params=bad), 400, "InvalidParameter", name)


# ---- delete -----------------------------------------------------------------------------------------


def test_delete_semantics(sim: Simulator, http: requests.Session) -> None:
    """queued -> cancelled, terminal -> gone, running/cancelled -> 403, unknown -> 404."""
    url = sim.base_url + TASKS
    queued = sim.add_task([("queued", None)])
    running = sim.add_task([("running", None)])
    done = sim.add_task([("succeeded", None)])
    failed = sim.add_task([("failed", None)])
    r = http.delete(f"{url}/{queued}")
    assert (r.status_code, r.json()) == (200, {})
    assert get(http, sim, queued).json()["status"] == "cancelled"
    assert_error(http.delete(f"{url}/{queued}"), 403, "OperationDenied.InvalidState")
    assert_error(http.delete(f"{url}/{running}"), 403, "OperationDenied.InvalidState")
    for task_id in (done, failed):
        r = http.delete(f"{url}/{task_id}")
        assert (r.status_code, r.json()) == (200, {})
        assert_error(get(http, sim, task_id), 404, "ResourceNotFound")
    assert_error(http.delete(f"{url}/cgt-nope"), 404, "ResourceNotFound")
    state = sim.task(done)
    assert state is not None and state["deleted_at"] is not None


# ---- errors -----------------------------------------------------------------------------------------


def test_not_found_envelope_and_configurable_code(sim: Simulator, http: requests.Session) -> None:
    """Unknown ids give a 404 envelope whose message ends with the X-Request-Id."""
    r = get(http, sim, "cgt-20250101000000-zzzzz")
    err = assert_error(r, 404, "ResourceNotFound")
    assert err["type"] == "NotFound"
    assert RID_RE.match(r.headers["X-Request-Id"])
    sim.configure(not_found_code="NotFound.TaskId")
    assert_error(get(http, sim, "cgt-x"), 404, "NotFound.TaskId")


def test_auth_with_configured_keys(http: requests.Session) -> None:
    """Configured api_keys reject other keys with 401 AuthenticationError; no key is always 401."""
    with Simulator(config=SimConfig(api_keys=frozenset({"good"}))) as sim:
        r = http.get(sim.base_url + TASKS)
        err = assert_error(r, 401, "AuthenticationError")
        assert err["type"] == "Unauthorized"
        assert requests.get(sim.base_url + TASKS, headers={"Authorization": "Bearer good"}).status_code == 200
    with Simulator() as sim:
        assert_error(requests.get(sim.base_url + TASKS), 401, "AuthenticationError")
        assert http.get(sim.base_url + TASKS).status_code == 200


def test_create_validation(sim: Simulator, http: requests.Session) -> None:
    """Bad create bodies get 400 InvalidParameter/MissingParameter with the offending param."""
    url = sim.base_url + TASKS
    text = {"type": "text", "text": "x"}
    img = {"type": "image_url", "image_url": {"url": "https://e.x/a.png"}}
    err = assert_error(create(http, sim, execution_expires_after=100), 400, "InvalidParameter")
    assert err["param"] == "execution_expires_after" and err["type"] == "BadRequest"
    assert_error(
        create(http, sim, execution_expires_after=259201), 400, "InvalidParameter", "execution_expires_after"
    )
    bad_role = {"model": MODEL_20, "content": [text, {**img, "role": "middle_frame"}]}
    err = assert_error(http.post(url, json=bad_role), 400, "InvalidParameter", "content[1].role")
    assert "invalid role specified for image content" in err["message"]
    mixed = {
        "model": MODEL_20,
        "content": [text, {**img, "role": "first_frame"}, {**img, "role": "reference_image"}],
    }
    err = assert_error(http.post(url, json=mixed), 400, "InvalidParameter", "content")
    assert "cannot be mixed with reference media" in err["message"]
    assert_error(http.post(url, json={"content": [text]}), 400, "MissingParameter", "model")
    assert_error(http.post(url, json={"model": MODEL_20}), 400, "MissingParameter", "content")
    assert_error(
        http.post(url, json={"model": MODEL_20, "content": [{"type": "gif"}]}), 400, "InvalidParameter"
    )
    assert_error(
        http.post(url, data=b"{not json", headers={"Content-Type": "application/json"}),
        400,
        "InvalidParameter",
    )
    assert_error(create(http, sim, draft=True), 400, "InvalidParameter", "draft")  # 2.0 has no draft
    assert_error(create(http, sim, model=MODEL_15, priority=3), 400, "InvalidParameter", "priority")
    assert_error(create(http, sim, service_tier="flex"), 400, "InvalidParameter", "service_tier")
    # explicit nulls everywhere (what the official SDK sends) are fine
    names = "callback_url return_last_frame service_tier execution_expires_after priority seed resolution"
    nulls = dict.fromkeys([*names.split(), "ratio", "duration", "frames", "draft", "safety_identifier"])
    assert create(http, sim, **nulls).status_code == 200
    ok = {"model": MODEL_20, "content": [text, {**img, "role": "first_frame"}, {**img, "role": "last_frame"}]}
    assert http.post(url, json=ok).status_code == 200


# ---- faults -----------------------------------------------------------------------------------------


def test_burst_429_and_per_task_rate_limit(sim: Simulator, http: requests.Session) -> None:
    """burst_429 and rate_limit_task answer 429 with the requested Retry-After for a while."""
    task_id = sim.add_task([("queued", None)])
    other = sim.add_task([("queued", None)])
    sim.rate_limit_task(task_id, retry_after_s=7, duration_s=0.3)
    r = get(http, sim, task_id)
    err = assert_error(r, 429, "RateLimitExceeded.EndpointRPMExceeded")
    assert r.headers["Retry-After"] == "7" and err["type"] == "TooManyRequests"
    assert get(http, sim, other).status_code == 200
    time.sleep(0.35)
    assert get(http, sim, task_id).status_code == 200
    sim.burst_429(0.3, retry_after_s=7)
    for r in (get(http, sim, other), http.get(sim.base_url + TASKS), create(http, sim)):
        assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    time.sleep(0.35)
    assert get(http, sim, other).status_code == 200
    faults = [rec.fault for rec in sim.requests() if rec.status == 429]
    assert faults == ["429_task", "429_burst", "429_burst", "429_burst"]


def test_random_faults(sim: Simulator, http: requests.Session) -> None:
    """error_rate_5xx, rate_429 and malformed_rate at 1.0 always fire; configure() switches them."""
    sim.configure(error_rate_5xx=1.0)
    err = assert_error(http.get(sim.base_url + TASKS), 500, "InternalServiceError")
    assert err["type"] == "InternalServerError"
    sim.configure(error_rate_5xx=0.0, rate_429=1.0, retry_after_s=2)
    r = http.get(sim.base_url + TASKS)
    assert r.status_code == 429 and r.headers["Retry-After"] == "2"
    sim.configure(rate_429=0.0, malformed_rate=1.0)
    r = create(http, sim)
    assert r.status_code == 200
    with pytest.raises(ValueError):
        json.loads(r.text)
    sim.configure(malformed_rate=0.0)
    assert [rec.fault for rec in sim.requests()] == ["5xx", "429", "malformed"]
    with pytest.raises(TypeError):
        sim.configure(no_such_option=1)


def test_timeout_fault_makes_client_time_out(sim: Simulator, http: requests.Session) -> None:
    """timeout_rate sleeps before answering, so a short client read timeout fires."""
    sim.configure(timeout_rate=1.0, timeout_sleep_s=0.6)
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.get(sim.base_url + TASKS, timeout=(1, 0.2))


def test_rps_limit_token_bucket(http: requests.Session) -> None:
    """rps_limit answers 429 RateLimitExceeded.EndpointRPMExceeded once the bucket is empty."""
    with Simulator(config=SimConfig(rps_limit=2.0, rps_burst=2.0)) as sim:
        codes = [http.get(sim.base_url + TASKS).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        time.sleep(0.6)
        assert http.get(sim.base_url + TASKS).status_code == 200


def test_queue_cap(http: requests.Session) -> None:
    """max_queued turns excess creates into 429 QuotaExceeded."""
    with Simulator(config=SimConfig(queued_s=60, max_queued=1)) as sim:
        assert create(http, sim).status_code == 200
        assert_error(create(http, sim), 429, "QuotaExceeded")


def test_response_observer_sees_each_answer_and_a_429s_retry_after(
    sim: Simulator, http: requests.Session
) -> None:
    """add_response_observer gets (request id, status, headers) of every response before it goes out."""
    seen: list[tuple[str, int, dict[str, str]]] = []

    def observe(rid: str, status: int, headers: Mapping[str, str]) -> None:
        seen.append((rid, status, dict(headers)))

    sim.add_response_observer(observe)
    task_id = sim.add_task([("queued", None)])
    sim.rate_limit_task(task_id, retry_after_s=7)
    limited = get(http, sim, task_id)
    sim.clear_rate_limits()
    ok = get(http, sim, task_id)
    assert limited.status_code == 429 and ok.status_code == 200
    # Already there when the client has its answer: the observer runs before the write.
    assert [(rid, status) for rid, status, _ in seen] == [
        (limited.headers["X-Request-Id"], 429),
        (ok.headers["X-Request-Id"], 200),
    ]
    assert seen[0][2]["Retry-After"] == "7" and "Retry-After" not in seen[1][2]
    assert seen[0][2]["Content-Type"] == "application/json"
    assert [r.request_id for r in sim.requests()] == [rid for rid, _, _ in seen]
    sim.remove_response_observer(observe)
    get(http, sim, task_id)
    assert len(seen) == 2


# ---- files ------------------------------------------------------------------------------------------


def succeeded(sim: Simulator, http: requests.Session, **kw: Any) -> dict[str, Any]:
    task_id = sim.add_task([("succeeded", None)], **kw)
    body: dict[str, Any] = get(http, sim, task_id).json()
    return body


def test_download_valid_deterministic_mp4_and_png(sim: Simulator, http: requests.Session) -> None:
    """video_url serves a deterministic ISO-BMFF MP4; last_frame_url a PNG."""
    body = succeeded(sim, http, return_last_frame=True)
    r = requests.get(body["content"]["video_url"])
    assert r.status_code == 200 and r.headers["Content-Type"] == "video/mp4"
    data = r.content
    assert int(r.headers["Content-Length"]) == len(data) == sim.config.video_bytes
    assert data[4:8] == b"ftyp" and b"moov" in data[:4096] and b"mdat" in data
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(sim.file_bytes(body["id"])).hexdigest()
    assert make_mp4(body["id"], 5, len(data)) == data  # deterministic per task id
    png = requests.get(body["content"]["last_frame_url"])
    assert png.headers["Content-Type"] == "image/png" and png.content.startswith(b"\x89PNG\r\n\x1a\n")
    small = succeeded(sim, http, video_bytes=1)
    assert 2_000 < len(requests.get(small["content"]["video_url"]).content) < 32 * 1024


def test_range_resume_after_dropped_connection(sim: Simulator, http: requests.Session) -> None:
    """A download cut after N bytes can be resumed with Range: bytes=N- (206 + Content-Range)."""
    sim.configure(drop_connection_after_bytes=5000, drop_connection_max=1)
    body = succeeded(sim, http)
    url = body["content"]["video_url"]
    got = b""
    with pytest.raises(requests.exceptions.RequestException), requests.get(url, stream=True) as r:
        assert r.status_code == 200
        for chunk in r.iter_content(1000):  # 5000 is a multiple: no partial chunk is lost
            got += chunk
    assert len(got) == 5000
    r = requests.get(url, headers={"Range": f"bytes={len(got)}-"})
    assert r.status_code == 206
    total = len(sim.file_bytes(body["id"]))
    assert r.headers["Content-Range"] == f"bytes 5000-{total - 1}/{total}"
    assert got + r.content == sim.file_bytes(body["id"])
    assert requests.get(url, headers={"Range": f"bytes={total}-"}).status_code == 416
    assert [rec.fault for rec in sim.requests(kind="file")] == ["drop", None, None]


def test_expire_first_download_then_fresh_url(sim: Simulator, http: requests.Session) -> None:
    """In expire_first_download mode the first GET is 403 and a re-GET of the task gives a new URL."""
    sim.configure(expire_first_download=True)
    body = succeeded(sim, http)
    old = body["content"]["video_url"]
    r = requests.get(old)
    assert r.status_code == 403 and b"<Code>AccessDenied</Code>" in r.content
    assert "X-Request-Id" in r.headers
    assert requests.get(old).status_code == 403  # that signature stays expired
    new = get(http, sim, body["id"]).json()["content"]["video_url"]
    assert new != old
    r = requests.get(new)
    assert r.status_code == 200 and r.content[4:8] == b"ftyp"
    assert get(http, sim, body["id"]).json()["content"]["video_url"] == new


def test_url_expiry_and_bad_signature(http: requests.Session) -> None:
    """Signed URLs expire after url_ttl_s on the simulator clock; tampered signatures are refused."""
    now = [1_800_000_000.0]
    with Simulator(config=SimConfig(url_ttl_s=60), clock=lambda: now[0]) as sim:
        body = succeeded(sim, http)
        url = body["content"]["video_url"]
        assert "X-Tos-Expires=60" in url
        assert requests.get(url).status_code == 200
        bad = requests.get(url[:-4] + "0000")
        assert bad.status_code == 403 and b"SignatureDoesNotMatch" in bad.content
        now[0] += 61
        r = requests.get(url)
        assert r.status_code == 403 and b"Request has expired" in r.content
        assert requests.get(f"{sim.url}/files/cgt-unknown.mp4").status_code == 404


def test_wrong_content_type_and_oversized_overrides(sim: Simulator, http: requests.Session) -> None:
    """Per-task overrides serve an HTML body or a bigger file."""
    html = succeeded(sim, http, video_content_type="text/html")
    r = requests.get(html["content"]["video_url"])
    assert r.headers["Content-Type"] == "text/html" and r.content.startswith(b"<!DOCTYPE html>")
    big = succeeded(sim, http, video_bytes=300_000)
    r = requests.get(big["content"]["video_url"])
    assert len(r.content) == 300_000 and r.content[4:8] == b"ftyp"
    raw = succeeded(sim, http, video_body=b"hello", video_content_type="application/octet-stream")
    assert requests.get(raw["content"]["video_url"]).content == b"hello"


# ---- callbacks --------------------------------------------------------------------------------------


def test_callbacks_for_each_transition_without_polling(sim: Simulator, http: requests.Session) -> None:
    """callback_url gets the GET body for queued, running and succeeded, even when nobody polls."""
    with WebhookReceiver() as rx:
        task_id = create(http, sim, callback_url=rx.url).json()["id"]
        wait_for(lambda: len(rx.payloads()) >= 3)
        assert [p["status"] for p in rx.payloads()] == ["queued", "running", "succeeded"]
        assert all(p["id"] == task_id for p in rx.payloads())
        last = rx.payloads()[-1]
        assert last["content"]["video_url"] and last["usage"]["total_tokens"] == 108900
        assert last == get(http, sim, task_id).json()
        assert len(sim.requests(kind="get")) == 1  # the callbacks did not need polls
        sim.configure(queued_s=30)
        cancelled = create(http, sim, callback_url=rx.url).json()["id"]
        wait_for(lambda: any(p["id"] == cancelled for p in rx.payloads()))
        assert http.delete(f"{sim.base_url}{TASKS}/{cancelled}").status_code == 200
        time.sleep(0.3)
        assert [p["status"] for p in rx.payloads() if p["id"] == cancelled] == ["queued"]
        assert all(c.ok for c in sim.callbacks_sent)


def test_callback_retries_for_terminal_status(sim: Simulator) -> None:
    """A failed delivery of a terminal status is retried up to 3 more times; others are not."""
    with WebhookReceiver() as rx:
        rx.plan([500] * 5)
        task_id = sim.add_task([("running", 0.05), ("failed", None)], callback_url=rx.url)
        wait_for(lambda: len(rx.payloads()) >= 5)
        time.sleep(0.2)
        assert [p["status"] for p in rx.payloads()] == ["running", "failed", "failed", "failed", "failed"]
        sent = sim.callbacks_sent
        expected = [("running", 1, 500)] + [("failed", n, 500) for n in (1, 2, 3, 4)]
        assert [(c.status, c.attempt, c.status_code) for c in sent] == expected
        assert all(c.task_id == task_id for c in sent)


# ---- request log, CLI, throughput -------------------------------------------------------------------


def test_request_log_never_stores_the_key(sim: Simulator, http: requests.Session) -> None:
    """Every request is logged with kind, status, query and headers, but without the Authorization value."""
    task_id = create(http, sim).json()["id"]
    get(http, sim, task_id)
    http.get(sim.base_url + TASKS, params=[("filter.task_ids", task_id), ("filter.task_ids", "b")])
    requests.get(sim.url + "/nowhere")
    log = sim.requests()
    assert [r.kind for r in log] == ["create", "get", "list", "other"]
    assert [r.status for r in log] == [200, 200, 200, 404]
    assert log[0].task_id == task_id and log[0].body["model"] == MODEL_20
    assert log[2].query == {"filter.task_ids": [task_id, "b"]}
    assert all(RID_RE.match(r.request_id) for r in log)
    assert log[0].auth_present and not log[3].auth_present
    assert "test-key" not in repr(log)
    assert all(k.lower() != "authorization" for r in log for k in r.headers)
    assert [r.kind for r in sim.requests(task_id=task_id)] == ["create", "get"]
    sim.clear_log()
    assert sim.requests() == []


def test_keep_alive_throughput(sim: Simulator, http: requests.Session) -> None:
    """Keep-alive GETs are not stalled by Nagle: 300 polls take well under a few seconds."""
    task_id = sim.add_task([("queued", None)])
    started = time.monotonic()
    for _ in range(300):
        assert get(http, sim, task_id).status_code == 200
    assert time.monotonic() - started < 3.0


def test_serve_forever_cli_prints_and_stops_on_sigterm() -> None:
    """serve_forever_cli prints the listening line and exits cleanly on SIGTERM."""
    code = (
        "from seedance_worker.testing.simulator import SimConfig, serve_forever_cli;"
        "serve_forever_cli('127.0.0.1', 0, SimConfig())"
    )
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        m = re.fullmatch(r"simulator listening on (http://127\.0\.0\.1:\d+/api/v3)", line)
        assert m, line
        r = requests.get(m.group(1) + TASKS, headers={"Authorization": "Bearer k"}, timeout=5)
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
