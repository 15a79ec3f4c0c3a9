"""The callback intake under hostile peers, over real sockets: idle and slow connections, a flood of
connections, callbacks made to force GETs or fill Redis, deep JSON, and values that forge log lines."""

from __future__ import annotations

import json
import logging
import re
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

import seedance_worker
from seedance_worker import intake
from seedance_worker.engine.store import JobRecord, get_store
from seedance_worker.settings import get_settings
from seedance_worker.testing.simulator import SimConfig, Simulator
from tests.e2e.test_intake import post
from tests.support.env import clean_redis, reset_caches
from tests.support.workers import Workers

TOKEN = "intake-hardening-token-5e4d3c2b1a09"
UNTRACKED = "cgt-20990101000000-abcde"
GUARD_S = 15.0  # how long a client here waits for the server before calling it a hang


@contextmanager
def serving(env: pytest.MonkeyPatch, redis_url: str, **settings: object) -> Iterator[tuple[str, int]]:
    """The intake on a free port in this process, with ``SEEDANCE_<NAME>`` set from ``settings``."""
    env.setenv("SEEDANCE_INTAKE_TOKEN", TOKEN)
    for name, value in settings.items():
        env.setenv(f"SEEDANCE_{name.upper()}", str(value))
    reset_caches()
    clean_redis(redis_url)
    server = intake.make_intake_server("127.0.0.1", 0, get_settings())
    port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/callbacks/{TOKEN}", port
    finally:
        server.shutdown()
        server.server_close()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=GUARD_S)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; fails if it keeps the connection open."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {GUARD_S} s (got {data[:80]!r})")
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return data


def raw_post(port: int, path: str, body: bytes) -> bytes | None:
    """A whole POST on a fresh connection: the response, or None when the server reset it."""
    sock = connect(port)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    try:
        sock.sendall(head.encode() + body)
        return read_until_closed(sock)
    except (ConnectionResetError, BrokenPipeError):
        return None


class ThreadPeak:
    """The most threads this process had while sampling (the intake serves from its threads)."""

    def __init__(self) -> None:
        self.peak = threading.active_count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, threading.active_count())

    def __enter__(self) -> ThreadPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def code(answer: bytes | None) -> int | None:
    """The status code of a raw HTTP response (None: the connection was reset)."""
    return int(answer.split(b" ", 2)[1]) if answer else None


def callback(task_id: str, status: str = "running", updated_at: object = 1700000000) -> bytes:
    return json.dumps({"id": task_id, "status": status, "updated_at": updated_at}).encode()


# --- connections: timeouts and a cap --------------------------------------------------------------


def test_idle_connections_hold_at_most_the_cap_and_are_closed_after_the_header_timeout(
    env: pytest.MonkeyPatch, redis_url: str, sim: Simulator
) -> None:
    """12 idle connections (no token needed) against a cap of 4: 8 are answered 503 at once without a
    thread, 4 hold a thread until the header timeout closes them (408); a callback meanwhile is
    refused at once rather than queued, and gets through once the idle ones are gone."""
    tid = sim.add_task([("queued", 60.0), ("succeeded", None)])
    with serving(env, redis_url, intake_header_timeout_s=3, intake_body_timeout_s=3,
                 intake_max_connections=4) as (url, port):  # fmt: skip
        seedance_worker.track(tid)
        path = url.split(str(port), 1)[1]
        before = threading.active_count()
        with ThreadPeak() as threads:
            idle = [connect(port) for _ in range(12)]
            refused = raw_post(port, path, callback(tid))  # the slots are all held by idle peers
            answers = [read_until_closed(s) for s in idle]
        assert code(refused) in (None, 503), refused
        assert [code(a) for a in answers].count(503) == 8, answers
        assert [code(a) for a in answers].count(408) == 4, answers
        assert threads.peak - before <= 4 + 1, (before, threads.peak)  # the 4 slots (+ the sampler)
        assert post(url, callback(tid)) == (202, {"result": "accepted"})


def test_a_peer_sending_headers_a_byte_at_a_time_is_cut_off_at_the_header_deadline(
    env: pytest.MonkeyPatch, redis_url: str
) -> None:
    """A per-read timeout alone would let a byte every 0.05 s keep a thread forever: the header
    phase has one deadline, and the connection is answered 408 and closed when it passes."""
    with serving(env, redis_url, intake_header_timeout_s=1) as (_, port):
        sock = connect(port)
        request = b"POST /callbacks/x HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 400 + b"\r\n\r\n"
        sent = 0
        for byte in request:  # 400+ bytes at 0.05 s: 20 s unless cut off
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered (and is closing)
            try:
                sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            time.sleep(0.05)
        answer = read_until_closed(sock)
        assert sent < len(request)
        assert code(answer) == 408, answer


def test_a_body_that_never_arrives_is_answered_408_at_the_body_deadline(
    env: pytest.MonkeyPatch, redis_url: str
) -> None:
    with serving(env, redis_url, intake_body_timeout_s=1) as (url, port):
        sock = connect(port)
        path = url.split(str(port), 1)[1]
        sock.sendall(f'POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{"id":'.encode())
        answer = read_until_closed(sock)
        assert code(answer) == 408, answer
        assert b"body not received in time" in answer


# --- callbacks: nothing written for untracked ids, validated fields, a floor on early polls ------


def test_callbacks_for_untracked_ids_write_nothing(env: pytest.MonkeyPatch, redis_url: str) -> None:
    """Before: each (id, status, updated_at) was a Redis key kept 24 h, whatever the id and however
    long updated_at was. Now the job is looked up first, and an untracked id writes nothing."""
    with serving(env, redis_url) as (url, _):
        r = redis.Redis.from_url(redis_url)
        keys_before = set(r.keys("*"))
        for i in range(20):
            tid = f"cgt-20990101000000-{i:05d}"
            assert post(url, callback(tid, "succeeded", 1700000000 + i)) == (202, {"result": "ignored"})
        assert post(url, callback(UNTRACKED, "succeeded", "9" * 30000))[0] == 400
        assert set(r.keys("*")) == keys_before


@pytest.mark.parametrize(
    "status, updated_at",
    [
        ("RUNNING", 1700000000),
        ("running\nintake cgt-x status=succeeded: accepted", 1700000000),
        ("x" * 1000, 1700000000),
        (["running"], 1700000000),
        ("running", "1700000000 or so"),
        ("running", -1),
        ("running", 1.5),
        ("running", True),
        ("running", 10**400),
        ("running", {"t": 1}),
    ],
)
def test_a_status_or_updated_at_no_task_has_is_400(
    env: pytest.MonkeyPatch, redis_url: str, sim: Simulator, status: object, updated_at: object
) -> None:
    tid = sim.add_task([("queued", 60.0), ("succeeded", None)])
    with serving(env, redis_url) as (url, _):
        seedance_worker.track(tid)
        answer = post(url, json.dumps({"id": tid, "status": status, "updated_at": updated_at}).encode())
        assert answer[0] == 400, answer
        assert post(url, callback(tid, "running", 1700000000)) == (202, {"result": "accepted"})


def test_varying_updated_at_cannot_force_more_gets_than_the_floor_allows(
    env: pytest.MonkeyPatch, redis_url: str, sim: Simulator, tmp_path: Path
) -> None:
    """100 callbacks for one job, each with a new updated_at (before: each a GET of the task). Now
    one early poll is granted per generation, and not sooner than the floor after the last poll:
    the 100 make one GET, spaced from the scheduled one by at least the floor."""
    floor_s = 3.0
    for name, value in {
        "SEEDANCE_POLL_FIRST_DELAY_S": "0.2", "SEEDANCE_POLL_MIN_INTERVAL_S": str(floor_s),
        "SEEDANCE_POLL_QUEUED_INTERVAL_S": "30", "SEEDANCE_POLL_RUNNING_INTERVAL_S": "30",
        "SEEDANCE_POLL_MAX_INTERVAL_S": "30", "SEEDANCE_POLL_COUNTDOWN_CAP_S": "30",
        "SEEDANCE_VISIBILITY_TIMEOUT_S": "120", "SEEDANCE_POLL_PARK_AFTER_S": "0",
    }.items():  # fmt: skip
        env.setenv(name, value)
    tid = sim.add_task([("queued", 120.0), ("succeeded", None)])
    with serving(env, redis_url) as (url, _), Workers(tmp_path, n=1, concurrency=2):
        seedance_worker.track(tid)
        store = get_store()
        deadline = time.monotonic() + GUARD_S
        while (store.get(tid) or JobRecord(tid)).polls < 1:  # the scheduled first poll is done
            assert time.monotonic() < deadline, "the scheduled first poll never came"
            time.sleep(0.05)
        results = Counter(
            post(url, callback(tid, "running", 1700000000 + i))[1]["result"] for i in range(100)
        )
        assert results == {"accepted": 1, "pending": 99}, results
        deadline = time.monotonic() + GUARD_S
        while len(sim.requests(kind="get", task_id=tid)) < 2:
            assert time.monotonic() < deadline, "the early poll never came"
            time.sleep(0.05)
        time.sleep(0.5)  # room for any further GET the callbacks could have caused
        gets = sim.requests(kind="get", task_id=tid)
        assert len(gets) == 2, [g.ts for g in gets]
        assert gets[1].ts - gets[0].ts >= floor_s - 0.1  # 0.1: the countdown's own rounding


# --- bodies and logs --------------------------------------------------------------------------------


def test_deep_or_large_json_is_refused_without_a_traceback(
    env: pytest.MonkeyPatch,
    redis_url: str,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: 100k-deep JSON raised RecursionError inside the app (500, traceback on stderr)."""
    caplog.set_level(logging.DEBUG, logger="seedance_worker")
    with serving(env, redis_url) as (url, _):
        assert post(url, b"[" * 100_000 + b"]" * 100_000)[0] in (400, 413)
        assert post(url, b"[" * 30_000)[0] == 400
        deep = b'{"id": "' + UNTRACKED.encode() + b'", "x": ' + b"[" * 40 + b"]" * 40 + b"}"
        assert post(url, deep)[0] == 400
        assert post(url, b'{"id": "' + UNTRACKED.encode() + b'", "x": "' + b"\\" * 30_000)[0] == 400
        assert post(url, b'{"id": "' + UNTRACKED.encode() + b'", "x": "' + b"a" * 70_000 + b'"}')[0] == 413
        assert post(url, callback(UNTRACKED, "succeeded"))[0] == 202  # still serving
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


def test_request_values_reach_the_log_escaped(
    env: pytest.MonkeyPatch, redis_url: str, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A newline in a callback field or an escape sequence in the request line cannot forge or
    garble a log line: what reaches a record is escaped (and the token stays hidden)."""
    caplog.set_level(logging.DEBUG, logger="seedance_worker")
    tid = sim.add_task([("queued", 60.0), ("succeeded", None)])
    with serving(env, redis_url) as (url, port):
        seedance_worker.track(tid)
        forged = "running\nintake cgt-forged status=succeeded updated_at=1: accepted"
        assert post(url, callback(tid, forged))[0] == 400
        sock = connect(port)
        sock.sendall(b"GET /\x1b[2Jcleared\r HTTP/1.0\r\n\r\n")
        assert code(read_until_closed(sock)) == 404
        assert post(url, callback(tid))[0] == 202
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("seedance_worker.intake")]
    assert any("\\x1b[2Jcleared" in m for m in messages), messages
    assert any(f"intake {tid} status=running" in m for m in messages), messages
    for m in messages:
        assert m.isprintable(), repr(m)
        assert TOKEN not in m


# --- per-task callback URLs -------------------------------------------------------------------------

JOB_URL = re.compile(r"/callbacks/j/[0-9a-f]{32}\.[A-Za-z0-9_-]{43}$")


@pytest.fixture
def slow_sim(env: pytest.MonkeyPatch) -> Iterator[Simulator]:
    """A simulator whose tasks stay queued for the whole test (its own callbacks stay quiet)."""
    s = Simulator(config=SimConfig(queued_s=120, running_s=120)).start()
    env.setenv("SEEDANCE_API_BASE_URL", s.base_url)
    reset_caches()
    try:
        yield s
    finally:
        s.stop()


def _submitted_urls(env: pytest.MonkeyPatch, sim: Simulator, base: str, n: int) -> list[tuple[str, str]]:
    env.setenv("SEEDANCE_INTAKE_URL", base)
    reset_caches()
    ids = [seedance_worker.submit("seedance-1-5-pro-251215", [{"type": "text", "text": f"a fox {i}"}],
                                  idempotency_key=f"fox-{i}")[0] for i in range(n)]  # fmt: skip
    urls = [r.body["callback_url"] for r in sim.requests(kind="create")]
    return list(zip(ids, urls, strict=True))


def test_submit_gives_each_task_its_own_callback_url_that_opens_only_that_job(
    env: pytest.MonkeyPatch, redis_url: str, slow_sim: Simulator
) -> None:
    """The URL given to Ark carries no shared token: a per-task nonce and its HMAC. It opens its own
    job only (another job's id in the body is 404 and writes nothing); a forged MAC is 404; a
    re-submit under the same idempotency key keeps the first URL working."""
    with serving(env, redis_url) as (url, _):
        base = url.split("/callbacks/", 1)[0]
        (a, url_a), (b, url_b) = _submitted_urls(env, slow_sim, base, 2)
        assert JOB_URL.search(url_a) and JOB_URL.search(url_b) and url_a != url_b, (url_a, url_b)
        assert TOKEN not in url_a + url_b
        store, r = get_store(), redis.Redis.from_url(redis_url)
        b_before = r.hgetall(f"seedance:job:{b}")
        assert post(url_a, callback(b, "running", 1)) == (404, {"error": "not found"})
        assert r.hgetall(f"seedance:job:{b}") == b_before
        forged = url_a[:-3] + ("AAA" if not url_a.endswith("AAA") else "BBB")
        assert post(forged, callback(a, "running", 2))[0] == 404
        assert post(url_a, callback(a, "running", 3)) == (202, {"result": "accepted"})
        # the same key again: found, not posted, so the URL Ark holds for it stays the bound one
        again = seedance_worker.submit("seedance-1-5-pro-251215", [{"type": "text", "text": "a fox 0"}],
                                       idempotency_key="fox-0")  # fmt: skip
        assert again[0] == a and len(slow_sim.requests(kind="create")) == 2
        assert post(url_a, callback(a, "succeeded", 4)) == (202, {"result": "pending"})
        assert (store.get(a) or JobRecord(a)).callback_nonce == url_a.rsplit("/", 1)[1].split(".")[0]
        # the shared path of earlier versions still works, for tasks created before the upgrade
        assert post(url, callback(b, "running", 5)) == (202, {"result": "accepted"})


def test_the_shared_path_can_be_closed(env: pytest.MonkeyPatch, redis_url: str, slow_sim: Simulator) -> None:
    with serving(env, redis_url, intake_shared_path="false") as (url, _):
        base = url.split("/callbacks/", 1)[0]
        [(a, url_a)] = _submitted_urls(env, slow_sim, base, 1)
        assert post(url, callback(a, "running", 1))[0] == 404
        assert post(url_a, callback(a, "running", 1)) == (202, {"result": "accepted"})
