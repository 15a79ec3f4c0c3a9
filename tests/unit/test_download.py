"""seedance.download_video against real sockets: a small stdlib file server and the simulator."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from seedance_worker.engine.store import get_store
from seedance_worker.errors import DownloadError, RateLimited
from seedance_worker.models import Outcome, TaskSnapshot, VideoFile
from seedance_worker.settings import get_settings, reset_settings_cache
from seedance_worker.steps import download as download_mod
from seedance_worker.steps import fetch as fetch_mod
from seedance_worker.steps.download import download_video, host_allowed, redact, video_key
from seedance_worker.steps.storage import LocalStorage, StorageBusy, file_name
from tests.support.file_server import PNG, VIDEO, FileServer, Route
from tests.support.ids import new_id


@pytest.fixture
def files() -> Iterator[FileServer]:
    server = FileServer()
    try:
        yield server
    finally:
        server.stop()


def make_outcome(
    task_id: str, video_url: str | None, *, last_frame_url: str | None = None, status: str = "succeeded"
) -> dict[str, Any]:
    content: dict[str, Any] = {"video_url": video_url}
    if last_frame_url:
        content["last_frame_url"] = last_frame_url
    snap = {
        "id": task_id,
        "model": "seedance-1-5-pro-251215",
        "status": status,
        "content": content,
        "usage": {"completion_tokens": 108900, "total_tokens": 108900},
    }
    return Outcome.model_validate(
        {"task_id": task_id, "status": status, "snapshot": snap, "metadata": {"user": "u1"}}
    ).wire()


def set_env(env: pytest.MonkeyPatch, **values: str) -> None:
    for k, v in values.items():
        env.setenv(f"SEEDANCE_{k.upper()}", v)
    reset_settings_cache()


def listing(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_download_stores_the_video_atomically(
    files: FileServer, download_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The video lands under <id>.mp4 with its sha256, size and type, and no partial file is left."""
    caplog.set_level(logging.DEBUG)
    tid = new_id()
    url = files.add(f"/files/{tid}.mp4")
    result = download_video(make_outcome(tid, url))
    video = VideoFile.model_validate(result["video"])
    path = download_dir / f"{tid}.mp4"
    assert path.read_bytes() == VIDEO
    assert video.uri == path.resolve().as_uri()
    assert video.uri.startswith("file:///")
    assert video.sha256 == hashlib.sha256(VIDEO).hexdigest()
    assert video.bytes == len(VIDEO)
    assert video.content_type == "video/mp4"
    assert video.last_frame_uri is None
    assert listing(download_dir) == [f"{tid}.mp4"]
    assert "download" not in result["step_errors"]
    assert result["metadata"] == {"user": "u1"}
    record = json.loads(get_store(get_settings()).r.get(video_key(tid)) or "{}")
    assert record["sha256"] == video.sha256 and record["bytes"] == len(VIDEO)
    assert "SECRET" not in caplog.text  # signed URLs are logged without their query string
    assert f"/files/{tid}.mp4" in caplog.text


def test_second_run_is_a_noop(files: FileServer, download_dir: Path) -> None:
    """A re-run returns the same VideoFile from the Redis record without fetching again."""
    tid = new_id()
    url = files.add(f"/files/{tid}.mp4")
    first = download_video(make_outcome(tid, url))
    second = download_video(make_outcome(tid, url))
    assert second["video"] == first["video"]
    assert len(files.hits(f"/files/{tid}.mp4")) == 1


def test_record_without_file_downloads_again(files: FileServer, download_dir: Path) -> None:
    """A record whose file vanished (or changed size) does not count as done."""
    tid = new_id()
    url = files.add(f"/files/{tid}.mp4")
    first = download_video(make_outcome(tid, url))
    (download_dir / f"{tid}.mp4").unlink()
    second = download_video(make_outcome(tid, url))
    assert second["video"] == first["video"]
    assert len(files.hits(f"/files/{tid}.mp4")) == 2


def test_last_frame_is_stored_too(files: FileServer, download_dir: Path) -> None:
    tid = new_id()
    url = files.add(f"/files/{tid}.mp4")
    frame = files.add(f"/files/{tid}.png", Route(body=PNG, content_type="image/png"))
    result = download_video(make_outcome(tid, url, last_frame_url=frame))
    video = VideoFile.model_validate(result["video"])
    png = download_dir / f"{tid}.last_frame.png"
    assert video.last_frame_uri == png.resolve().as_uri()
    assert png.read_bytes() == PNG
    assert listing(download_dir) == sorted([f"{tid}.mp4", f"{tid}.last_frame.png"])


def test_resume_after_a_dropped_connection(files: FileServer, download_dir: Path) -> None:
    """A body cut off mid-way is resumed with Range: bytes=N- and the hash covers the whole file."""
    tid = new_id()
    path = f"/files/{tid}.mp4"
    url = files.add(path, Route(drop_after=100_000, drops=1))
    result = download_video(make_outcome(tid, url))
    hits = files.hits(path)
    assert len(hits) == 2
    assert "Range" not in hits[0]
    assert hits[1]["Range"] == "bytes=100000-"  # every received byte is kept
    assert result["video"]["sha256"] == hashlib.sha256(VIDEO).hexdigest()
    assert (download_dir / f"{tid}.mp4").read_bytes() == VIDEO
    assert listing(download_dir) == [f"{tid}.mp4"]


def test_chunked_body_without_length(files: FileServer, download_dir: Path) -> None:
    tid = new_id()
    url = files.add(f"/files/{tid}.mp4", Route(chunked=True, content_type="application/octet-stream"))
    result = download_video(make_outcome(tid, url))
    assert result["video"]["sha256"] == hashlib.sha256(VIDEO).hexdigest()
    assert result["video"]["content_type"] == "application/octet-stream"


def test_server_ignoring_range_restarts_from_zero(files: FileServer, download_dir: Path) -> None:
    tid = new_id()
    path = f"/files/{tid}.mp4"
    url = files.add(path, Route(drop_after=50_000, drops=1, ranges=False))
    result = download_video(make_outcome(tid, url))
    assert len(files.hits(path)) == 2
    assert result["video"]["bytes"] == len(VIDEO)
    assert (download_dir / f"{tid}.mp4").read_bytes() == VIDEO


def test_expired_url_gets_a_fresh_one(
    files: FileServer, download_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """403 from storage: the task is fetched again and the fresh URL is used."""
    tid = new_id()
    stale = files.add(f"/old/{tid}.mp4", Route(statuses=[403] * 10))
    fresh = files.add(f"/new/{tid}.mp4")
    calls: list[str] = []

    class FakeClient:
        def get_task(self, task_id: str) -> TaskSnapshot:
            calls.append(task_id)
            return TaskSnapshot.model_validate(
                {"id": task_id, "status": "succeeded", "content": {"video_url": fresh}}
            )

    monkeypatch.setattr(download_mod, "get_client", lambda settings=None: FakeClient())
    result = download_video(make_outcome(tid, stale))
    assert calls == [tid]
    assert result["video"]["sha256"] == hashlib.sha256(VIDEO).hexdigest()
    assert len(files.hits(f"/old/{tid}.mp4")) == 1


def test_url_that_stays_expired_is_recorded(
    files: FileServer, download_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tid = new_id()
    stale = files.add(f"/old/{tid}.mp4", Route(statuses=[404] * 10))

    class FakeClient:
        def get_task(self, task_id: str) -> TaskSnapshot:
            return TaskSnapshot.model_validate(
                {"id": task_id, "status": "succeeded", "content": {"video_url": stale}}
            )

    monkeypatch.setattr(download_mod, "get_client", lambda settings=None: FakeClient())
    result = download_video(make_outcome(tid, stale))
    assert result["video"] is None
    assert result["step_errors"]["download"]["kind"] == "url_expired"
    assert len(files.hits(f"/old/{tid}.mp4")) == 3  # first URL + 2 refreshes
    assert listing(download_dir) == []


def test_expired_first_download_with_the_simulator(sim: Any, download_dir: Path) -> None:
    """Against the simulator: the first signed URL is refused, the re-fetched task's URL works."""
    from seedance_worker.client import get_client

    sim.configure(expire_first_download=True)
    tid = sim.add_task([("succeeded", None)], usage_tokens=108900)
    snap = get_client().get_task(tid)
    outcome = Outcome(task_id=tid, status="succeeded", snapshot=snap.model_dump(mode="json")).wire()
    result = download_video(outcome)
    assert result["step_errors"] == {}
    expected = sim.file_bytes(tid)
    assert result["video"]["sha256"] == hashlib.sha256(expected).hexdigest()
    assert (download_dir / f"{tid}.mp4").read_bytes() == expected
    downloads = [(r.status, r.fault) for r in sim.requests("file", tid)]
    assert downloads == [(403, "expire_first_download"), (200, None)]
    assert not any(r.auth_present for r in sim.requests("file", tid))  # the API key stays home


@pytest.mark.parametrize(
    ("route", "env_values", "kind"),
    [
        (Route(), {"download_allowed_hosts": "*.volces.com,*.bytepluses.com"}, "host_not_allowed"),
        (Route(), {"download_max_bytes": "1000"}, "too_large"),
        (Route(send_length=False), {"download_max_bytes": "100000"}, "too_large"),
        (Route(body=b"<!DOCTYPE html><html>denied</html>", content_type="text/html"), {}, "not_a_video"),
        (
            Route(body=b"<html><body>denied</body></html>", content_type="application/octet-stream"),
            {},
            "not_a_video",
        ),
        (Route(redirect="http://evil.example.com/x.mp4"), {}, "host_not_allowed"),
        (Route(statuses=[400]), {}, "http_error"),
    ],
    ids=["host", "too-large-by-length", "too-large-streaming", "html", "html-as-octet", "redirect", "400"],
)
def test_refusals_are_recorded_not_raised(
    files: FileServer,
    download_dir: Path,
    env: pytest.MonkeyPatch,
    route: Route,
    env_values: dict[str, str],
    kind: str,
) -> None:
    set_env(env, **env_values)
    tid = new_id()
    url = files.add(f"/files/{tid}.mp4", route)
    result = download_video(make_outcome(tid, url))
    assert result["video"] is None
    err = result["step_errors"]["download"]
    assert err["type"] == "DownloadError"
    assert err["kind"] == kind, err
    assert "SECRET" not in err["message"]
    assert listing(download_dir) == []  # neither the file nor a partial one
    assert get_store(get_settings()).r.get(video_key(tid)) is None
    if kind == "host_not_allowed" and not route.redirect:
        assert files.hits(f"/files/{tid}.mp4") == []


def test_5xx_is_retried_then_recorded(files: FileServer, download_dir: Path) -> None:
    """Storage 503s: self.retry up to 5 times (eager apply runs them at once), then a step error."""
    tid = new_id()
    url = files.add(f"/files/{tid}.mp4", Route(statuses=[503] * 20))
    result = download_video.apply(args=(make_outcome(tid, url),)).get()
    assert result["video"] is None
    err = result["step_errors"]["download"]
    assert err["kind"] == "http_error" and "503" in err["message"]
    assert listing(download_dir) == []
    assert len(files.hits(f"/files/{tid}.mp4")) == 1 + download_mod.MAX_RETRIES


def test_5xx_then_success_via_retry(files: FileServer, download_dir: Path) -> None:
    tid = new_id()
    url = files.add(f"/files/{tid}.mp4", Route(statuses=[503, 502]))
    result = download_video.apply(args=(make_outcome(tid, url),)).get()
    assert result["video"]["bytes"] == len(VIDEO)
    assert len(files.hits(f"/files/{tid}.mp4")) == 3


def test_short_body_every_time_ends_as_length_mismatch(files: FileServer, download_dir: Path) -> None:
    """A Content-Length the body never reaches: resumed, retried, then recorded as length_mismatch."""
    tid = new_id()
    url = files.add(f"/files/{tid}.mp4", Route(claim_length=len(VIDEO) + 1000, ranges=False))
    result = download_video.apply(args=(make_outcome(tid, url),)).get()
    assert result["video"] is None
    assert result["step_errors"]["download"]["kind"] == "length_mismatch"
    assert listing(download_dir) == []  # no final file, and the partial one is dropped on giving up


def test_direct_call_raises_retry_for_transient_errors(files: FileServer, download_dir: Path) -> None:
    from celery.exceptions import Retry

    tid = new_id()
    url = files.add(f"/files/{tid}.mp4", Route(statuses=[500]))
    with pytest.raises(Retry):
        download_video(make_outcome(tid, url))
    result = download_video(make_outcome(tid, url))  # the next run succeeds
    assert result["video"]["bytes"] == len(VIDEO)


@pytest.mark.parametrize("task_id", ["../../etc/passwd", "a/b", "/etc/passwd", "..", ".hidden", "a\x00b"])
def test_hostile_task_id_is_refused(
    files: FileServer, download_dir: Path, tmp_path: Path, task_id: str
) -> None:
    url = files.add("/files/x.mp4")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    result = download_video(make_outcome(task_id, url))
    assert result["video"] is None
    assert result["step_errors"]["download"]["kind"] == "bad_task_id"
    assert files.requests == []
    after = sorted(str(p) for p in tmp_path.rglob("*") if not str(p).startswith(str(download_dir)))
    assert after == [p for p in before if not p.startswith(str(download_dir))]
    assert listing(download_dir) == []


def test_not_succeeded_passes_through(files: FileServer, download_dir: Path) -> None:
    tid = new_id()
    outcome = make_outcome(tid, None, status="failed")
    assert download_video(outcome) == outcome
    assert files.requests == []


# --- storage and helpers --------------------------------------------------------------------------


def test_storage_refuses_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"x")
    (root / "cgt-1.mp4").symlink_to(outside)
    storage = LocalStorage(root)
    with pytest.raises(DownloadError) as err:
        storage.path("cgt-1.mp4")
    assert err.value.kind == "bad_task_id"
    for bad in ("../x.mp4", "/etc/passwd", ".x.part", "a/b"):
        with pytest.raises(DownloadError):
            storage.path(bad)
    with pytest.raises(DownloadError):
        file_name("../../etc/passwd", ".mp4")
    assert file_name("cgt-1:2", ".mp4") == ("cgt-1_2.mp4" if os.name == "nt" else "cgt-1:2.mp4")


def test_storage_partial_is_locked_and_committed_atomically(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    tmp = storage.open_partial("cgt-2.mp4")
    assert tmp.offset == 0
    with pytest.raises(StorageBusy):
        storage.open_partial("cgt-2.mp4")
    tmp.fh.write(b"abc")
    storage.release(tmp)  # kept for a resume
    again = storage.open_partial("cgt-2.mp4")
    assert again.offset == 3
    assert listing(tmp_path) == [".cgt-2.mp4.part"]
    uri = storage.commit("cgt-2.mp4", again)
    assert uri == (tmp_path / "cgt-2.mp4").resolve().as_uri()
    assert listing(tmp_path) == ["cgt-2.mp4"]
    assert storage.size("cgt-2.mp4") == 3


def test_partial_from_an_earlier_attempt_is_resumed(files: FileServer, download_dir: Path) -> None:
    """A retry finds the partial file an earlier attempt left (with the server's ETag beside it) and
    asks only for the rest, guarded by If-Range."""
    from celery.exceptions import Retry

    tid = new_id()
    path = f"/files/{tid}.mp4"
    url = files.add(path, Route(drop_after=70_000, drops=fetch_mod.MAX_RESUMES + 1))
    with pytest.raises(Retry):  # four drops in one attempt: the task retries, the partial file stays
        download_video(make_outcome(tid, url))
    kept = (download_dir / f".{tid}.mp4.part").stat().st_size
    assert kept == 70_000 * (fetch_mod.MAX_RESUMES + 1)
    result = download_video(make_outcome(tid, url))
    last = files.hits(path)[-1]
    assert last["Range"] == f"bytes={kept}-"
    assert "If-Range" not in files.hits(path)[0]
    assert last["If-Range"] == '"' + hashlib.md5(VIDEO).hexdigest() + '"'
    assert result["video"]["sha256"] == hashlib.sha256(VIDEO).hexdigest()
    assert listing(download_dir) == [f"{tid}.mp4"]  # neither the partial file nor its facts remain


def test_host_patterns() -> None:
    assert host_allowed("https://a.tos-ap-southeast-1.volces.com/x.mp4?sig=1", ["*.volces.com"])
    assert host_allowed("https://A.VOLCES.COM:8443/x", ["*.volces.com"])
    assert not host_allowed("https://volces.com.evil.io/x", ["*.volces.com"])
    assert not host_allowed("https://evil.io/x.volces.com", ["*.volces.com"])
    assert not host_allowed("ftp://a.volces.com/x", ["*"])
    assert not host_allowed("file:///etc/passwd", ["*"])
    assert host_allowed("http://10.0.0.1:9000/x", ["*"])  # the pattern only: the address is judged apart
    # urllib3 (which connects) ends the authority at the backslash: the host is 127.0.0.1
    assert not host_allowed("http://127.0.0.1:8000\\@x.volces.com/v.mp4", ["*.volces.com"])
    assert not host_allowed("http://u:p@x.volces.com/v.mp4", ["*.volces.com"])
    assert redact("https://h.volces.com/a/b.mp4?X-Tos-Signature=abc") == "https://h.volces.com/a/b.mp4"


# --- URLs judged by the parser that connects (issue 14, item 1) ----------------------------------


def test_parser_differential_url_is_refused_before_any_request(
    files: FileServer, download_dir: Path, env: pytest.MonkeyPatch
) -> None:
    """`http://127.0.0.1:PORT\\@x.volces.com/...` is host x.volces.com to urllib.parse but is fetched
    from 127.0.0.1 by requests: refused as invalid_url, and nothing reaches the loopback server."""
    set_env(env, download_allowed_hosts="*.volces.com")
    tid = new_id()
    files.add(f"/files/{tid}.mp4")
    url = f"http://127.0.0.1:{files.port}\\@x.volces.com/files/{tid}.mp4?X-Tos-Signature=SECRET"
    result = download_video(make_outcome(tid, url))
    assert result["video"] is None
    err = result["step_errors"]["download"]
    assert err["kind"] == "invalid_url", err
    assert "parsers read differently" in err["message"] and "SECRET" not in err["message"]
    assert files.requests == []
    assert listing(download_dir) == []


def test_redirect_to_a_parser_differential_url_is_refused(
    files: FileServer, download_dir: Path, env: pytest.MonkeyPatch
) -> None:
    """An allowed host (localhost) redirecting to `http://127.0.0.1:PORT\\@x.volces.com/...`: the hop
    is judged again and refused; the redirect target (on 127.0.0.1, not allowed) is never fetched."""
    set_env(env, download_allowed_hosts="localhost,*.volces.com")
    tid = new_id()
    files.add(f"/inner/{tid}.mp4")
    target = f"http://127.0.0.1:{files.port}\\@x.volces.com/inner/{tid}.mp4"
    files.add(f"/files/{tid}.mp4", Route(redirect=target))
    url = f"http://localhost:{files.port}/files/{tid}.mp4?X-Tos-Signature=SECRET"
    result = download_video(make_outcome(tid, url))
    assert result["step_errors"]["download"]["kind"] == "invalid_url"
    assert len(files.hits(f"/files/{tid}.mp4")) == 1
    assert files.hits(f"/inner/{tid}.mp4") == [] and files.hits(f"/%5C@x.volces.com/inner/{tid}.mp4") == []
    assert listing(download_dir) == []


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "2130706433", "0x7f000001", "127.1"], ids=lambda h: h
)
def test_private_addresses_are_refused_unless_opted_in(
    files: FileServer, download_dir: Path, env: pytest.MonkeyPatch, host: str
) -> None:
    """Without SEEDANCE_DOWNLOAD_ALLOW_PRIVATE_HOSTS, a host that resolves to a loopback address is
    refused (host_not_allowed) however it is spelt, even with the allow list at `*`."""
    env.delenv("SEEDANCE_DOWNLOAD_ALLOW_PRIVATE_HOSTS", raising=False)
    set_env(env, download_allowed_hosts="*")
    tid = new_id()
    files.add(f"/files/{tid}.mp4")
    result = download_video(make_outcome(tid, f"http://{host}:{files.port}/files/{tid}.mp4?sig=SECRET"))
    err = result["step_errors"]["download"]
    assert err["kind"] == "host_not_allowed", err
    expected = "is a loopback address" if host == "127.0.0.1" else "resolves to 127.0.0.1, a loopback address"
    assert f"{host} {expected}" in err["message"]
    assert "SEEDANCE_DOWNLOAD_ALLOW_PRIVATE_HOSTS=true" in err["message"]
    assert files.requests == []


def test_a_name_that_rebinds_to_loopback_is_refused_at_connect(
    files: FileServer, download_dir: Path, env: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the check before the request sees a public address, the connection reaches
    127.0.0.1; the connection itself is refused before a request is sent on it."""
    from seedance_worker.steps import urls

    env.delenv("SEEDANCE_DOWNLOAD_ALLOW_PRIVATE_HOSTS", raising=False)
    set_env(env, download_allowed_hosts="localhost")
    env.setattr(urls, "_resolve", lambda host, port: ["93.184.216.34"])
    tid = new_id()
    files.add(f"/files/{tid}.mp4")
    result = download_video(make_outcome(tid, f"http://localhost:{files.port}/files/{tid}.mp4"))
    err = result["step_errors"]["download"]
    assert err["kind"] == "host_not_allowed" and "loopback" in err["message"], err
    assert files.requests == []


# --- every failure reaches the chain's end (item 2) -----------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:99999/files/x.mp4?sig=SECRET",
        "http://127.0.0\t.1:{port}/files/x.mp4?sig=SECRET",
        "http://127.0.0.1:{port}/files/x\t.mp4?sig=SECRET",
        "http://127.0.0.1:{port}/files/x .mp4",
        "http://127.0.0.1:{port}/files/x.mp4\n",
        "http://[::1/files/x.mp4",
        "127.0.0.1/files/x.mp4",
    ],
    ids=["port-out-of-range", "tab-in-host", "tab-in-path", "space", "newline", "bad-ipv6", "no-scheme"],
)
def test_malformed_urls_are_recorded_as_invalid_url(files: FileServer, download_dir: Path, url: str) -> None:
    """A URL requests cannot parse (or that parsers read differently) is a typed step error, not a
    failed task: the chain goes on to charge and notify."""
    tid = new_id()
    files.add("/files/x.mp4")
    result = download_video(make_outcome(tid, url.format(port=files.port)))
    err = result["step_errors"]["download"]
    assert err["kind"] == "invalid_url", err
    assert err["type"] == "DownloadError" and "SECRET" not in err["message"]
    assert result["video"] is None and result["status"] == "succeeded"
    assert files.requests == []


class _FullDisk:
    """A partial file's handle whose writes fail with ``code`` while ``failures`` is above zero."""

    def __init__(self, fh: Any, state: dict[str, int], code: int) -> None:
        self._fh = fh
        self._state = state
        self._code = code

    def write(self, data: bytes) -> int:
        if self._state["failures"] > 0:
            self._state["failures"] -= 1
            raise OSError(self._code, os.strerror(self._code))
        return int(self._fh.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def _fill_the_disk(
    monkeypatch: pytest.MonkeyPatch, failures: int, code: int = errno.ENOSPC
) -> dict[str, int]:
    state = {"failures": failures}
    real = LocalStorage.open_partial

    def open_partial(self: LocalStorage, name: str) -> Any:
        tmp = real(self, name)
        tmp.fh = _FullDisk(tmp.fh, state, code)  # type: ignore[assignment]
        return tmp

    monkeypatch.setattr(LocalStorage, "open_partial", open_partial)
    return state


def test_a_full_disk_is_retried_and_the_video_then_stored(
    files: FileServer, download_dir: Path, env: pytest.MonkeyPatch
) -> None:
    """ENOSPC on the first two attempts: the task retries (storage_full is transient) and the third
    attempt stores the whole video."""
    state = _fill_the_disk(env, failures=2)
    tid = new_id()
    url = files.add(f"/files/{tid}.mp4")
    result = download_video.apply(args=(make_outcome(tid, url),)).get()
    assert state["failures"] == 0
    assert result["step_errors"] == {}
    assert (download_dir / f"{tid}.mp4").read_bytes() == VIDEO
    assert len(files.hits(f"/files/{tid}.mp4")) == 3


def test_waiting_out_the_apis_429_does_not_spend_the_downloads_retries(
    files: FileServer, download_dir: Path, env: pytest.MonkeyPatch
) -> None:
    """Seen in the fault storm: a disk full for a while and a 429 burst added up to 6 attempts and a
    recorded error. Six URL refreshes answered 429, then two attempts on a full disk: the ninth
    attempt stores the video (the 429 holds count apart, MAX_HOLDS of them)."""
    state = _fill_the_disk(env, failures=2)
    tid = new_id()
    stale = files.add(f"/old/{tid}.mp4", Route(statuses=[403] * 20))
    fresh = files.add(f"/new/{tid}.mp4")
    calls: list[str] = []

    class RateLimitedClient:
        def get_task(self, task_id: str) -> TaskSnapshot:
            calls.append(task_id)
            if len(calls) <= 6:
                raise RateLimited("GET: slow down", 429, "RateLimitExceeded", None, None, 0.001)
            return TaskSnapshot.model_validate(
                {"id": task_id, "status": "succeeded", "content": {"video_url": fresh}}
            )

    env.setattr(download_mod, "get_client", lambda settings=None: RateLimitedClient())
    result = download_video.apply(args=(make_outcome(tid, stale),)).get()
    assert result["step_errors"] == {}, result["step_errors"]
    assert (download_dir / f"{tid}.mp4").read_bytes() == VIDEO
    assert len(calls) == 9 and state["failures"] == 0
    assert len(files.hits(f"/old/{tid}.mp4")) == 9


def test_next_attempt_counts_429_holds_apart() -> None:
    from seedance_worker.steps.download import MAX_HOLDS, MAX_RETRIES, next_attempt
    from seedance_worker.steps.failures import Failure

    full = Failure("storage_full", "the download dir is full", transient=True)
    pause = Failure("url_expired", "the API asked for a pause (429)", transient=True, not_before_s=2.0)
    assert next_attempt(MAX_RETRIES, 0, full, 5.0) is None  # the 6th failure on its own: recorded
    countdown, holds = next_attempt(MAX_RETRIES + 2, 3, full, 5.0) or (0.0, -1)  # 3 of 7 were holds
    assert holds == 3 and 4.0 <= countdown <= 5.0
    countdown, holds = next_attempt(MAX_RETRIES, 0, pause, 300.0) or (0.0, -1)  # retries spent: still waits
    assert holds == 1 and countdown >= 2.1
    assert next_attempt(MAX_RETRIES + MAX_HOLDS, MAX_HOLDS, pause, 5.0) is None  # holds run out too
    assert next_attempt(0, 0, pause, 1.0) == (1.0, 1)  # never past the countdown cap


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG], ids=["ENOSPC", "EFBIG"])
def test_a_disk_that_stays_full_is_recorded_as_storage_full(
    files: FileServer, download_dir: Path, env: pytest.MonkeyPatch, code: int
) -> None:
    """A disk full on every attempt: retried MAX_RETRIES times, then recorded (kind storage_full)
    and the partial file dropped; the task itself succeeds, so the chain goes on."""
    _fill_the_disk(env, failures=1000, code=code)
    tid = new_id()
    url = files.add(f"/files/{tid}.mp4")
    result = download_video.apply(args=(make_outcome(tid, url),)).get()
    err = result["step_errors"]["download"]
    assert err["kind"] == "storage_full", err
    assert errno.errorcode[code] in err["message"] and "gave up after 6 attempts" in err["message"]
    assert result["video"] is None
    assert len(files.hits(f"/files/{tid}.mp4")) == 1 + download_mod.MAX_RETRIES
    assert listing(download_dir) == []


def test_an_unexpected_error_is_recorded_without_the_signed_query(
    files: FileServer, download_dir: Path, env: pytest.MonkeyPatch
) -> None:
    """Any other exception out of the download becomes step_errors.download (internal_error), its
    message without query strings, instead of failing the task."""

    def commit(self: LocalStorage, name: str, tmp: Any) -> str:
        raise RuntimeError("storage backend broke at https://h.example/x?X-Tos-Signature=SECRET")

    env.setattr(LocalStorage, "commit", commit)
    tid = new_id()
    url = files.add(f"/files/{tid}.mp4")
    result = download_video(make_outcome(tid, url))
    err = result["step_errors"]["download"]
    assert err["kind"] == "internal_error"
    assert err["message"] == "RuntimeError: storage backend broke at https://h.example/x"


def test_failure_decisions() -> None:
    """The pure decision: what is retried, and the kind recorded."""
    import requests

    from seedance_worker.steps.failures import classify
    from seedance_worker.steps.fetch import Transient

    assert classify(OSError(errno.ENOSPC, "No space left on device")).transient
    assert classify(OSError(errno.EFBIG, "File too large")).kind == "storage_full"
    assert classify(OSError(errno.EDQUOT, "Disk quota exceeded")).kind == "storage_full"
    assert not classify(OSError(errno.EIO, "Input/output error")).transient
    assert classify(OSError(errno.EIO, "Input/output error")).kind == "internal_error"
    assert classify(requests.exceptions.InvalidURL("bad")).kind == "invalid_url"
    assert classify(DownloadError("x", "too_large")).kind == "too_large"
    assert classify(Transient("x", "http_error", 3.0)).not_before_s == 3.0
    assert classify(ValueError("x")).step_error() == {
        "type": "DownloadError",
        "kind": "internal_error",
        "message": "ValueError: x",
    }


# --- slow bodies (item 7) -------------------------------------------------------------------------


SMALL_VIDEO = VIDEO[:4000]


def test_a_dripping_body_counts_as_a_drop_and_ends_as_too_slow(
    files: FileServer, download_dir: Path, env: pytest.MonkeyPatch
) -> None:
    """A body dripping ~10 bytes/s (never a read timeout) is below SEEDANCE_DOWNLOAD_MIN_BYTES_PER_S
    (default 1024) over a window: dropped and resumed (Range), then retried, then recorded as
    too_slow. (Before, it ran for as long as the drip lasted, extending its own lease.)"""
    set_env(env, download_timeout_s="0.5")
    tid = new_id()
    path = f"/files/{tid}.mp4"
    url = files.add(path, Route(body=SMALL_VIDEO * 10, drip_s=0.1))  # 4000 s to drip it all
    result = download_video.apply(args=(make_outcome(tid, url),)).get()
    err = result["step_errors"]["download"]
    assert err["kind"] == "too_slow", err
    assert "SEEDANCE_DOWNLOAD_MIN_BYTES_PER_S=1024" in err["message"]
    hits = files.hits(path)
    assert len(hits) == (1 + download_mod.MAX_RETRIES) * (1 + fetch_mod.MAX_RESUMES)
    assert any(h.get("Range") for h in hits)  # each drop resumed where the bytes stopped
    assert listing(download_dir) == []


def test_the_attempt_budget_ends_a_slow_but_steady_download(
    files: FileServer, download_dir: Path, env: pytest.MonkeyPatch
) -> None:
    """With the throughput floor off, a body that keeps trickling is cut at
    SEEDANCE_DOWNLOAD_ATTEMPT_BUDGET_S; every retry resumes the partial file from where it ended."""
    set_env(env, download_timeout_s="1", download_min_bytes_per_s="0", download_attempt_budget_s="1")
    tid = new_id()
    path = f"/files/{tid}.mp4"
    url = files.add(path, Route(body=SMALL_VIDEO, drip_s=0.02))
    result = download_video.apply(args=(make_outcome(tid, url),)).get()
    err = result["step_errors"]["download"]
    assert err["kind"] == "too_slow" and "SEEDANCE_DOWNLOAD_ATTEMPT_BUDGET_S=1" in err["message"], err
    hits = files.hits(path)
    assert len(hits) == 1 + download_mod.MAX_RETRIES
    starts = [int(h["Range"].split("=")[1].rstrip("-")) for h in hits[1:]]
    assert starts == sorted(starts) and starts[0] > 0  # resumed, never restarted
    assert listing(download_dir) == []


# --- resume only what the server vouches for (item 11) --------------------------------------------


VIDEO2 = b"\x00\x00\x00\x18ftypmp42" + bytes(reversed(range(256))) * 1300


def test_a_partial_file_without_saved_facts_starts_over(files: FileServer, download_dir: Path) -> None:
    """Foreign bytes at the partial file's name (no ETag saved beside them) are not spliced in: the
    download starts at byte 0 and stores exactly the server's file."""
    tid = new_id()
    path = f"/files/{tid}.mp4"
    url = files.add(path)
    (download_dir).mkdir(parents=True, exist_ok=True)
    (download_dir / f".{tid}.mp4.part").write_bytes(b"FOREIGN!" * 9000)
    result = download_video(make_outcome(tid, url))
    assert "Range" not in files.hits(path)[0]
    assert (download_dir / f"{tid}.mp4").read_bytes() == VIDEO
    assert result["video"]["sha256"] == hashlib.sha256(VIDEO).hexdigest()


@pytest.mark.parametrize(
    ("route", "ranges"),
    [
        (Route(drop_after=100_000, drops=1, next_body=VIDEO2), ["bytes=100000-"]),
        (Route(drop_after=100_000, drops=1, next_body=VIDEO2, honour_if_range=False),
         ["bytes=100000-", None]),
        (Route(drop_after=100_000, drops=1, next_body=VIDEO2, honour_if_range=False,
               etag=None, last_modified="Wed, 01 Jan 2025 00:00:00 GMT"),
         ["bytes=100000-", None]),
    ],
    ids=["if-range-200", "etag-differs-on-206", "size-differs-on-206"],
)  # fmt: skip
def test_a_file_replaced_mid_download_is_fetched_again_whole(
    files: FileServer, download_dir: Path, route: Route, ranges: list[str | None]
) -> None:
    """The file changes on the server between a drop and the resume: the server's 200 to If-Range,
    a 206 with another ETag, or a 206 of another total size (Last-Modified only) restarts from
    byte 0; the stored file is the new version, never a splice of both."""
    tid = new_id()
    path = f"/files/{tid}.mp4"
    url = files.add(path, route)
    result = download_video(make_outcome(tid, url))
    assert (download_dir / f"{tid}.mp4").read_bytes() == VIDEO2
    assert result["video"]["sha256"] == hashlib.sha256(VIDEO2).hexdigest()
    hits = files.hits(path)
    assert [h.get("Range") for h in hits] == [None, *ranges]
    assert hits[1]["If-Range"] == (route.last_modified or '"' + hashlib.md5(VIDEO).hexdigest() + '"')


def test_a_server_without_validators_restarts_after_a_drop(files: FileServer, download_dir: Path) -> None:
    """Neither ETag nor Last-Modified: nothing can vouch for a range, so a drop restarts at 0."""
    tid = new_id()
    path = f"/files/{tid}.mp4"
    url = files.add(path, Route(drop_after=100_000, drops=1, etag=None))
    result = download_video(make_outcome(tid, url))
    assert [h.get("Range") for h in files.hits(path)] == [None, None]
    assert result["video"]["sha256"] == hashlib.sha256(VIDEO).hexdigest()


# --- what sits at the partial file's name (item 12) -----------------------------------------------


def test_a_hard_link_at_the_partial_name_leaves_the_other_file_alone(
    files: FileServer, download_dir: Path, tmp_path: Path
) -> None:
    """A hard link planted at `.<id>.mp4.part` to a file outside the download dir: the name is
    removed and the partial file created afresh; the outside file keeps its bytes."""
    tid = new_id()
    url = files.add(f"/files/{tid}.mp4")
    outside = tmp_path / "precious.db"
    outside.write_bytes(b"precious bytes that must survive")
    download_dir.mkdir(parents=True, exist_ok=True)
    os.link(outside, download_dir / f".{tid}.mp4.part")
    result = download_video(make_outcome(tid, url))
    assert outside.read_bytes() == b"precious bytes that must survive"
    assert outside.stat().st_nlink == 1
    assert (download_dir / f"{tid}.mp4").read_bytes() == VIDEO
    assert result["step_errors"] == {}


@pytest.mark.parametrize("planted", ["symlink", "fifo", "directory"])
def test_other_things_at_the_partial_name_are_replaced(
    files: FileServer, download_dir: Path, tmp_path: Path, planted: str
) -> None:
    """A symlink (to a file elsewhere), a FIFO or an empty directory at the partial file's name is
    removed, not written through, and the download completes."""
    tid = new_id()
    url = files.add(f"/files/{tid}.mp4")
    outside = tmp_path / "target.txt"
    outside.write_bytes(b"keep")
    download_dir.mkdir(parents=True, exist_ok=True)
    part = download_dir / f".{tid}.mp4.part"
    {"symlink": lambda: part.symlink_to(outside), "fifo": lambda: os.mkfifo(part), "directory": part.mkdir}[
        planted
    ]()
    result = download_video(make_outcome(tid, url))
    assert result["step_errors"] == {}, result["step_errors"]
    assert (download_dir / f"{tid}.mp4").read_bytes() == VIDEO
    assert outside.read_bytes() == b"keep"


# --- what the bytes are (item 13) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"Code":"NoSuchKey","Message":"The specified key does not exist.","RequestId":"r1"}',
        b"Access Denied: the signature does not match\n",
        b"\x00\x00\x00\x18moovmp42" + bytes(2000),
    ],
    ids=["json", "text", "no-ftyp"],
)
def test_an_error_page_served_as_video_mp4_is_refused(
    files: FileServer, download_dir: Path, body: bytes
) -> None:
    """A body under Content-Type video/mp4 without an ISO-BMFF ftyp box at byte 4 is not_a_video
    (not retried: the signed URL names one stored object), and nothing is stored."""
    tid = new_id()
    url = files.add(f"/files/{tid}.mp4", Route(body=body))
    result = download_video.apply(args=(make_outcome(tid, url),)).get()
    err = result["step_errors"]["download"]
    assert err["kind"] == "not_a_video" and "ftyp" in err["message"], err
    assert len(files.hits(f"/files/{tid}.mp4")) == 1
    assert listing(download_dir) == []


def test_a_last_frame_that_is_not_an_image_is_noted_and_the_video_kept(
    files: FileServer, download_dir: Path
) -> None:
    tid = new_id()
    url = files.add(f"/files/{tid}.mp4")
    frame = files.add(f"/files/{tid}.png", Route(body=b'{"error":"gone"}', content_type="image/png"))
    result = download_video(make_outcome(tid, url, last_frame_url=frame))
    assert result["video"]["sha256"] == hashlib.sha256(VIDEO).hexdigest()
    assert result["video"]["last_frame_uri"] is None
    assert result["step_errors"]["last_frame"]["kind"] == "not_a_video"
    assert listing(download_dir) == [f"{tid}.mp4"]


def test_a_gzipped_body_is_stored_decoded(files: FileServer, download_dir: Path) -> None:
    """A server that gzips despite `Accept-Encoding: identity`: the stored file (and its sha256)
    are the video's own bytes."""
    tid = new_id()
    path = f"/files/{tid}.mp4"
    url = files.add(path, Route(encoding="gzip"))
    result = download_video(make_outcome(tid, url))
    assert files.hits(path)[0]["Accept-Encoding"] == "identity"
    assert (download_dir / f"{tid}.mp4").read_bytes() == VIDEO
    assert result["video"]["sha256"] == hashlib.sha256(VIDEO).hexdigest()
    assert result["video"]["bytes"] == len(VIDEO)


def test_a_dropped_gzipped_body_starts_over(files: FileServer, download_dir: Path) -> None:
    """A compressed stream cannot be resumed by range: a drop restarts it from byte 0."""
    tid = new_id()
    path = f"/files/{tid}.mp4"
    url = files.add(path, Route(encoding="gzip", drop_after=500, drops=1))
    result = download_video(make_outcome(tid, url))
    assert [h.get("Range") for h in files.hits(path)] == [None, None]
    assert (download_dir / f"{tid}.mp4").read_bytes() == VIDEO
    assert result["step_errors"] == {}


def test_a_gzip_bomb_is_too_large(files: FileServer, download_dir: Path, env: pytest.MonkeyPatch) -> None:
    """50 MB of zeros in ~50 KB of gzip under a 1 MB limit: refused as too_large while decoding."""
    set_env(env, download_max_bytes=str(1_000_000))
    tid = new_id()
    url = files.add(f"/files/{tid}.mp4", Route(body=VIDEO[:16] + bytes(50_000_000), encoding="gzip"))
    result = download_video(make_outcome(tid, url))
    assert result["step_errors"]["download"]["kind"] == "too_large"
    assert listing(download_dir) == []


# --- the new settings -----------------------------------------------------------------------------


def test_download_hardening_settings_defaults_and_bad_values() -> None:
    """Private addresses are refused by default; a bad value fails at start, naming the setting."""
    from seedance_worker.errors import ConfigError
    from seedance_worker.settings import load_settings

    s = load_settings({})
    assert s.download_allow_private_hosts is False
    assert s.download_attempt_budget_s == 1800 and s.download_min_bytes_per_s == 1024
    bad = [
        ({"SEEDANCE_DOWNLOAD_ATTEMPT_BUDGET_S": "60"}, "SEEDANCE_DOWNLOAD_ATTEMPT_BUDGET_S (60) is below "
         "SEEDANCE_DOWNLOAD_TIMEOUT_S (120)"),
        ({"SEEDANCE_DOWNLOAD_ATTEMPT_BUDGET_S": "0"}, "SEEDANCE_DOWNLOAD_ATTEMPT_BUDGET_S"),
        ({"SEEDANCE_DOWNLOAD_MIN_BYTES_PER_S": "-1"}, "SEEDANCE_DOWNLOAD_MIN_BYTES_PER_S"),
        ({"SEEDANCE_DOWNLOAD_ALLOW_PRIVATE_HOSTS": "perhaps"}, "SEEDANCE_DOWNLOAD_ALLOW_PRIVATE_HOSTS"),
    ]  # fmt: skip
    for environ, named in bad:
        with pytest.raises(ConfigError) as info:
            load_settings(environ)
        assert named in str(info.value), info.value
