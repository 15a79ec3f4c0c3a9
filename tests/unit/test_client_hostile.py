"""The client against a hostile API over a real socket (tests/support/hostile_api_server.py): gzip
bombs and oversized bodies, redirects (to another host, and of a create), an echoed intake token."""

from __future__ import annotations

import gzip
import re
import tracemalloc
from collections.abc import Iterator

import pytest

from seedance_worker import errors
from seedance_worker.client import ArkClient, get_client
from seedance_worker.settings import get_settings, load_settings
from seedance_worker.submit import submit
from tests.support.env import reset_caches
from tests.support.hostile_api_server import (
    TASKS,
    HostileApi,
    Reply,
    gzip_reply,
    json_reply,
    redirect,
    task_path,
)

KEY = "sk-hostile-SECRET-5e6f7a8b9c"
TID = "cgt-20260805143012-hstl1"
MODEL = "seedance-1-5-pro-251215"
CONTENT = [{"type": "text", "text": "a fox"}]
BODY = {"model": MODEL, "content": CONTENT}
MIB = 1024 * 1024


@pytest.fixture
def api() -> Iterator[HostileApi]:
    with HostileApi() as a:
        yield a


@pytest.fixture
def other() -> Iterator[HostileApi]:
    """A second origin (another port): where a redirect would send the key and the body."""
    with HostileApi() as a:
        yield a


def mk(api: HostileApi) -> ArkClient:
    return ArkClient(api.base_url, KEY, connect_timeout_s=2, read_timeout_s=5)


def running(pad: str = "", **extra: object) -> dict[str, object]:
    return {"id": TID, "status": "running", "created_at": 1785911412, **({"pad": pad} if pad else {}), **extra}


# --- item 6: body cap, decoded with a limit -------------------------------------------------------


def test_a_gzip_bomb_is_refused_at_the_cap_without_decoding_it_all(api: HostileApi) -> None:
    """32 MiB of JSON in ~32 KiB of gzip: refused as BadResponse once 1 MiB is decoded, and the
    client's allocations stay within a few MiB (the old client decoded all of it)."""
    api.answer("GET", task_path(TID), gzip_reply(running(pad="a" * (32 * MIB))))
    c = mk(api)
    tracemalloc.start()
    try:
        with pytest.raises(errors.BadResponse) as info:
            c.get_task(TID)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(info.value).startswith(
        f"GET /contents/generations/tasks/{TID}: body over SEEDANCE_API_MAX_BODY_BYTES=1048576"
    )
    assert peak < 8 * MIB, f"peak {peak / MIB:.1f} MiB while refusing a bomb"


def test_a_plain_body_over_the_cap_is_refused_and_one_under_it_parses(api: HostileApi) -> None:
    """2 MiB plain is refused (retryable); 900 KB plain and a gzip body under the cap parse whole."""
    api.answer("GET", task_path(TID), json_reply(running(pad="b" * (2 * MIB))))
    with pytest.raises(errors.BadResponse, match="body over SEEDANCE_API_MAX_BODY_BYTES=1048576"):
        mk(api).get_task(TID)
    api.answer("GET", task_path(TID), json_reply(running(pad="c" * 900_000)))
    assert (mk(api).get_task(TID).model_extra or {})["pad"] == "c" * 900_000
    api.answer("GET", task_path(TID), gzip_reply(running(pad="d" * 500_000)))
    assert (mk(api).get_task(TID).model_extra or {})["pad"] == "d" * 500_000


def test_the_cap_is_a_setting(api: HostileApi) -> None:
    """SEEDANCE_API_MAX_BODY_BYTES sets the cap (here 64 KiB: a 100 KB body is refused)."""
    settings = load_settings({"SEEDANCE_API_BASE_URL": api.base_url, "SEEDANCE_API_KEY": KEY,
                              "SEEDANCE_API_MAX_BODY_BYTES": "65536"})  # fmt: skip
    api.answer("GET", task_path(TID), json_reply(running(pad="e" * 100_000)))
    with pytest.raises(errors.BadResponse, match="SEEDANCE_API_MAX_BODY_BYTES=65536"):
        ArkClient.from_settings(settings).get_task(TID)


def test_a_capped_read_still_reuses_the_pooled_connection(api: HostileApi) -> None:
    """Reading the body ourselves (to cap it) does not cost keep-alive: ten GETs, plain and gzip, one
    TCP connection. A refused body drops its connection instead (the rest of it is never read)."""
    c = mk(api)
    api.answer("GET", task_path(TID), gzip_reply(running()))
    for _ in range(5):
        c.get_task(TID)
    api.answer("GET", task_path(TID), json_reply(running()))
    for _ in range(5):
        c.get_task(TID)
    assert len({s.client_port for s in api.seen("GET")}) == 1
    api.answer("GET", task_path(TID), json_reply(running(pad="f" * (2 * MIB))))
    with pytest.raises(errors.BadResponse):
        c.get_task(TID)
    api.answer("GET", task_path(TID), json_reply(running()))
    c.get_task(TID)
    assert len({s.client_port for s in api.seen("GET")}) == 2


@pytest.mark.parametrize(
    ("encoding", "message"),
    [("br", "Content-Encoding 'br' refused (asked for gzip, deflate)"),
     ("gzip, gzip", "stacked Content-Encoding gzip, gzip refused")],
)  # fmt: skip
def test_codings_not_asked_for_are_refused(api: HostileApi, encoding: str, message: str) -> None:
    """Only gzip and deflate are decoded (the client asks for nothing else); a stacked coding,
    the way to multiply a bomb's ratio, is refused."""
    body = gzip.compress(gzip.compress(b'{"id": "x"}'))
    api.answer("GET", task_path(TID), Reply(200, body, {"Content-Encoding": encoding}))
    with pytest.raises(errors.BadResponse, match=re.escape(message)):
        mk(api).get_task(TID)
    assert api.seen("GET")[0].headers["Accept-Encoding"] == "gzip, deflate"


def test_an_error_body_over_the_cap_still_maps_its_status(api: HostileApi) -> None:
    """A 503 with a 2 MiB body is still ServerError (retryable), with no body text in it."""
    api.answer("GET", task_path(TID), Reply(503, b"x" * (2 * MIB)))
    with pytest.raises(errors.ServerError) as info:
        mk(api).get_task(TID)
    assert info.value.status == 503 and len(str(info.value)) < 200


# --- item 15: no redirect is followed ---------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_of_a_get_is_refused_and_the_other_host_sees_nothing(
    api: HostileApi, other: HostileApi, status: int
) -> None:
    """The key never travels to where Location points; the error names the target without its query."""
    api.answer("GET", task_path(TID), redirect(status, f"{other.base_url}/x?sig=SECRETSIG"))
    with pytest.raises(errors.RedirectRefused) as info:
        mk(api).get_task(TID)
    assert other.seen() == [] and len(api.seen("GET")) == 1
    assert str(info.value).startswith(
        f"GET /contents/generations/tasks/{TID}: answered {status} redirecting to "
        f"http://127.0.0.1:{other.port}/api/v3/x; redirects are not followed (check SEEDANCE_API_BASE_URL)"
    )
    assert "SECRETSIG" not in str(info.value)


@pytest.mark.parametrize("status", [303, 307, 308])
@pytest.mark.parametrize("where", ["same-origin", "other-host"])
def test_a_redirected_create_is_ambiguous_and_never_sent_twice(
    api: HostileApi, other: HostileApi, status: int, where: str
) -> None:
    """A 3xx to a create may follow a made task (303 is "created, see there"): SubmitAmbiguous after
    exactly one POST, and nothing is sent to the redirect target."""
    target = api if where == "same-origin" else other
    api.answer("POST", TASKS, redirect(status, f"{target.base_url}/contents/generations/tasks"))
    with pytest.raises(errors.SubmitAmbiguous) as info:
        mk(api).create_task(BODY)
    assert str(info.value).startswith(
        f"create request outcome unknown (RedirectRefused: POST /contents/generations/tasks: answered {status} "
    )
    assert len(api.seen("POST")) == 1 and api.seen("GET") == []
    assert other.seen() == []


def test_submit_keeps_a_redirected_create_ambiguous_under_its_key(
    api: HostileApi, env: pytest.MonkeyPatch, redis_url: str
) -> None:
    """Through submit(): the idempotency key stays `ambiguous`, so a retry with the same key is
    refused instead of posting (and paying) again."""
    env.setenv("SEEDANCE_API_BASE_URL", api.base_url)
    reset_caches()
    api.answer("POST", TASKS, redirect(307, f"{api.base_url}/contents/generations/tasks"))
    key = "hostile-redirect-create"
    with pytest.raises(errors.SubmitAmbiguous, match="RedirectRefused"):
        submit(MODEL, CONTENT, idempotency_key=key)
    api.answer("POST", TASKS, json_reply({"id": "cgt-20260805143012-made2"}))
    with pytest.raises(errors.SubmitAmbiguous, match="ended ambiguously"):
        submit(MODEL, CONTENT, idempotency_key=key)
    assert len(api.seen("POST")) == 1


# --- item 10: what a server echoes of our secrets is not kept ----------------------------------------


def test_the_intake_token_echoed_in_a_snapshot_is_scrubbed(api: HostileApi, env: pytest.MonkeyPatch) -> None:
    """The callback URL (intake token inside) of a create may come back in a task body: the client
    built from settings scrubs it, like the API key."""
    token = "intake-token-SECRET-0a1b2c3d4e"
    env.setenv("SEEDANCE_API_BASE_URL", api.base_url)
    env.setenv("SEEDANCE_INTAKE_TOKEN", token)
    env.setenv("SEEDANCE_INTAKE_URL", "https://intake.example.test")
    reset_caches()
    echoed = {**running(), "callback_url": f"https://intake.example.test/callbacks/{token}",
              "error": {"code": "X", "message": f"bad key {get_settings().api_key_value()}"}}
    api.answer("GET", task_path(TID), json_reply(echoed))
    snap = get_client().get_task(TID)
    dumped = snap.model_dump_json()
    assert token not in dumped and "test-key-not-a-secret" not in dumped
    assert (snap.model_extra or {})["callback_url"] == "https://intake.example.test/callbacks/[redacted]"
