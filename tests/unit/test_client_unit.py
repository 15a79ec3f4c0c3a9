"""Pure unit tests of the HTTP client's mapping (responses mocks; the socket tests use the simulator)."""

from __future__ import annotations

import pytest
import requests
import responses

from seedance_worker import errors
from seedance_worker.client import ArkClient, parse_retry_after, validate_task_id

BASE = "https://ark.example.test/api/v3"
KEY = "sk-unit-secret-key-987654321"
TID = "cgt-20260805143012-k7q2m"
URL = f"{BASE}/contents/generations/tasks/{TID}"


def client() -> ArkClient:
    return ArkClient(BASE, KEY, connect_timeout_s=1, read_timeout_s=1)


def envelope(code: str, message: str = "nope") -> dict[str, object]:
    return {"error": {"code": code, "message": message, "param": "", "type": "X"}}


@responses.activate
def test_get_sends_bearer_user_agent_and_timeouts() -> None:
    """GET carries the Bearer key and a User-Agent naming the project."""
    responses.get(URL, json={"id": TID, "status": "queued"},
                  match=[responses.matchers.header_matcher({"Authorization": f"Bearer {KEY}"})])  # fmt: skip
    snap = client().get_task(TID)
    assert snap.status == "queued"
    assert responses.calls[0].request.headers["User-Agent"].startswith("seedance-worker/")


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "InvalidParameter", errors.InvalidRequest),
        (422, "InvalidParameter", errors.InvalidRequest),
        (401, "AuthenticationError", errors.AuthenticationFailed),
        (403, "AccessDenied", errors.PermissionDenied),
        (404, "ResourceNotFound", errors.TaskNotFound),
        (429, "RateLimitExceeded.EndpointRPMExceeded", errors.RateLimited),
        (500, "InternalServiceError", errors.ServerError),
        (503, "ServerOverloaded", errors.ServerError),
        (418, "Teapot", errors.UnexpectedStatus),
    ],
)
@responses.activate
def test_status_codes_map_to_the_error_tree(status: int, code: str, cls: type[Exception]) -> None:
    """Each non-2xx becomes its class with status, code and X-Request-Id; never the key."""
    responses.get(URL, json=envelope(code, "bad Request id: 0212"), status=status,
                  headers={"X-Request-Id": "021abc"})  # fmt: skip
    with pytest.raises(cls) as info:
        client().get_task(TID)
    exc = info.value
    assert isinstance(exc, errors.ApiError)
    assert (exc.status, exc.code, exc.request_id) == (status, code, "021abc")
    assert KEY not in str(exc) and KEY not in repr(exc) and KEY not in repr(exc.args)
    retryable = status in (429, 500, 503)
    assert isinstance(exc, errors.RetryableError) is retryable
    assert isinstance(exc, errors.TerminalError) is (not retryable)


@responses.activate
def test_retry_after_seconds_and_http_date() -> None:
    """Retry-After as delta-seconds and as an HTTP-date both parse."""
    responses.get(URL, json=envelope("RateLimitExceeded"), status=429, headers={"Retry-After": "7"})
    with pytest.raises(errors.RateLimited) as info:
        client().get_task(TID)
    assert info.value.retry_after_s == 7
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480 - 10) == pytest.approx(10)
    assert parse_retry_after("garbage") is None and parse_retry_after(None) is None


@responses.activate
def test_transport_failures_are_retryable() -> None:
    """Timeouts, refused connections and malformed bodies are retryable classes."""
    responses.get(URL, body=requests.exceptions.ReadTimeout())
    with pytest.raises(errors.RequestTimeout):
        client().get_task(TID)
    responses.replace(responses.GET, URL, body=requests.exceptions.ConnectionError("refused"))
    with pytest.raises(errors.ConnectionFailed):
        client().get_task(TID)
    responses.replace(responses.GET, URL, body='{"id": "cgt-', status=200)
    with pytest.raises(errors.BadResponse):
        client().get_task(TID)
    responses.replace(responses.GET, URL, json={"id": TID}, status=200)  # no status field
    with pytest.raises(errors.BadResponse):
        client().get_task(TID)
    responses.replace(responses.GET, URL, json={"id": "cgt-other", "status": "queued"}, status=200)
    with pytest.raises(errors.BadResponse):
        client().get_task(TID)


@responses.activate
def test_create_is_never_retried_after_an_ambiguous_failure() -> None:
    """A timeout or 5xx on create raises SubmitAmbiguous after exactly one POST."""
    post_url = f"{BASE}/contents/generations/tasks"
    responses.post(post_url, body=requests.exceptions.ReadTimeout())
    body = {"model": "m", "content": [{"type": "text", "text": "cat"}]}
    with pytest.raises(errors.SubmitAmbiguous):
        client().create_task(body)
    responses.replace(responses.POST, post_url, json=envelope("InternalServiceError"), status=500)
    with pytest.raises(errors.SubmitAmbiguous):
        client().create_task(body)
    assert len(responses.calls) == 2
    responses.replace(responses.POST, post_url, json=envelope("RateLimitExceeded"), status=429)
    with pytest.raises(errors.RateLimited):  # nothing was made: safe to retry later
        client().create_task(body)


def test_create_validates_before_sending() -> None:
    """An invalid request never reaches the network."""
    with responses.RequestsMock() as mock, pytest.raises(Exception, match="execution_expires_after"):
        client().create_task({"model": "m", "content": [{"type": "text", "text": "x"}],
                              "execution_expires_after": 5})  # fmt: skip
    assert len(mock.calls) == 0


@pytest.mark.parametrize("bad", ["../../etc/passwd", "a/b", "", "x" * 200, "id with space", "%2e%2e"])
def test_malformed_task_ids_are_refused(bad: str) -> None:
    """Ids that could escape a path are refused before any request."""
    with pytest.raises(errors.InvalidRequest, match="malformed task id"):
        validate_task_id(bad)


def test_client_repr_hides_the_key() -> None:
    """The client's repr shows the base URL, not the key."""
    assert KEY not in repr(client()) and BASE in repr(client())


# --- issue 14: hostile numbers, nesting, echoed keys, the requests floor ----------------------------


@pytest.mark.parametrize(
    "body",
    [
        f'{{"id": "{TID}", "status": "running", "created_at": "inf"}}',
        f'{{"id": "{TID}", "status": "running", "created_at": 1785911412, "execution_expires_after": "1e400"}}',
        f'{{"id": "{TID}", "status": "running", "created_at": {"9" * 400}}}',
        f'{{"id": "{TID}", "status": "running", "usage": {{"completion_tokens": "{"1" * 5000}"}}}}',
        f'{{"id": "{TID}", "status": "{"x" * 500}"}}',
    ],
    ids=["created_at-inf", "expires-1e400", "created_at-400-digits", "tokens-5000-digits", "status-500-chars"],
)
@responses.activate
def test_absurd_numbers_and_fields_are_a_bad_response_not_a_crash(body: str) -> None:
    """A number no timestamp or count can be (or a status no API sends) is BadResponse (retryable,
    backed off by the poll), never an OverflowError escaping the client."""
    responses.get(URL, body=body, status=200, content_type="application/json")
    with pytest.raises(errors.BadResponse) as info:
        client().get_task(TID)
    assert str(info.value).startswith(f"unexpected response body for {TID}: ")
    assert isinstance(info.value, errors.RetryableError)


@responses.activate
def test_json_nested_a_hundred_thousand_deep_is_a_bad_response() -> None:
    """json's RecursionError is a bad body like any other, not an exception past the client."""
    responses.get(URL, body="[" * 100_000, status=200, content_type="application/json")
    with pytest.raises(errors.BadResponse, match="body is not JSON"):
        client().get_task(TID)


@responses.activate
def test_an_api_key_echoed_in_an_error_body_is_redacted() -> None:
    """A server that repeats the key in its error message does not get it into the exception (and so
    not into last_error, `seedance-worker jobs` or a log line)."""
    echo = f"API key {KEY} is not valid for this endpoint"
    responses.get(URL, json=envelope("AuthenticationError", echo), status=401)
    with pytest.raises(errors.AuthenticationFailed) as info:
        client().get_task(TID)
    assert "API key [redacted] is not valid" in str(info.value)
    assert KEY not in f"{info.value} {info.value!r} {info.value.args!r}"
    responses.replace(responses.GET, URL, json={"id": TID, "status": "failed", "note": f"k={KEY}",
                                                "error": {"code": "X", "message": echo}})  # fmt: skip
    snap = client().get_task(TID)
    assert KEY not in snap.model_dump_json() and snap.error is not None
    assert snap.error.message == "API key [redacted] is not valid for this endpoint"


@responses.activate
def test_a_huge_error_message_is_cut() -> None:
    """An error message is kept to a few hundred characters in the exception (it lands in Redis)."""
    responses.get(URL, json=envelope("InternalServiceError", "x" * 100_000), status=500)
    with pytest.raises(errors.ServerError) as info:
        client().get_task(TID)
    assert len(str(info.value)) < 500


def test_requests_floor_excludes_the_vulnerable_releases() -> None:
    """pyproject's requests floor admits no release with CVE-2024-35195 or CVE-2024-47081 (<2.32.4)."""
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    (req,) = [Requirement(d) for d in deps if Requirement(d).name == "requests"]
    assert not req.specifier.contains("2.32.3") and not req.specifier.contains("2.31.0")
    assert req.specifier.contains("2.32.4")
    assert req.specifier.contains(requests.__version__)  # and the installed one meets it
