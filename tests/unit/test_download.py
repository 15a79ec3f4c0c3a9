"""seedance.download_video against real sockets: a small stdlib file server and the simulator."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from seedance_worker.engine.store import get_store
from seedance_worker.errors import DownloadError
from seedance_worker.models import Outcome, TaskSnapshot, VideoFile
from seedance_worker.settings import get_settings, reset_settings_cache
from seedance_worker.steps import download as download_mod
from seedance_worker.steps.download import download_video, host_allowed, redact, video_key
from seedance_worker.steps.storage import LocalStorage, StorageBusy, file_name

VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 1200  # ~300 KB, several chunks
PNG = b"\x89PNG\r\n\x1a\n" + b"frame" * 100


@dataclass
class Route:
    body: bytes = VIDEO
    content_type: str = "video/mp4"
    statuses: list[int] = field(default_factory=list)  # served (empty body) before the real answer
    drop_after: int | None = None  # close the connection after this many body bytes ...
    drops: int = 0  # ... this many times
    ranges: bool = True
    send_length: bool = True
    claim_length: int | None = None  # a Content-Length that lies
    redirect: str | None = None
    chunked: bool = False


class FileServer:
    """Serves ``routes`` by path (query ignored) and records every request."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                with outer.lock:
                    outer.requests.append((self.path, dict(self.headers.items())))
                    route = outer.routes.get(path)
                    status = route.statuses.pop(0) if route and route.statuses else None
                    drop = None
                    if route and route.drop_after is not None and route.drops > 0:
                        route.drops -= 1
                        drop = route.drop_after
                if route is None or status is not None:
                    code = status or 404
                    self.send_response(code)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if route.redirect:
                    self.send_response(302)
                    self.send_header("Location", route.redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = route.body
                total = len(body)
                code = 200
                extra: list[tuple[str, str]] = []
                rng = self.headers.get("Range")
                if rng and route.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= total:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{total}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    body = body[start:]
                    code = 206
                    extra.append(("Content-Range", f"bytes {start}-{total - 1}/{total}"))
                self.send_response(code)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Accept-Ranges", "bytes")
                for k, v in extra:
                    self.send_header(k, v)
                if route.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(body), 50_000):
                        part = body[i : i + 50_000]
                        self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                    return
                if route.claim_length is not None:
                    self.send_header("Content-Length", str(route.claim_length))
                elif route.send_length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if drop is not None:
                    body = body[:drop]
                    self.close_connection = True
                self.wfile.write(body)
                self.wfile.flush()
                if drop is not None or route.claim_length is not None:
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, path: str, route: Route | None = None) -> str:
        self.routes[path] = route or Route()
        return f"{self.base}{path}?X-Tos-Signature=sig-SECRET-{uuid.uuid4().hex}&X-Tos-Expires=86400"

    def hits(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [h for p, h in self.requests if urlsplit(p).path == path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def files() -> Iterator[FileServer]:
    server = FileServer()
    try:
        yield server
    finally:
        server.stop()


def new_id() -> str:
    return f"cgt-20260101000000-{uuid.uuid4().hex[:10]}"


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
    """A retry finds the partial file of the attempt before it and asks only for the rest."""
    tid = new_id()
    path = f"/files/{tid}.mp4"
    url = files.add(path)
    storage = LocalStorage(download_dir)
    tmp = storage.open_partial(f"{tid}.mp4")
    tmp.fh.write(VIDEO[:70_000])
    storage.release(tmp)
    result = download_video(make_outcome(tid, url))
    assert files.hits(path)[0]["Range"] == "bytes=70000-"
    assert result["video"]["sha256"] == hashlib.sha256(VIDEO).hexdigest()


def test_host_patterns() -> None:
    assert host_allowed("https://a.tos-ap-southeast-1.volces.com/x.mp4?sig=1", ["*.volces.com"])
    assert host_allowed("https://A.VOLCES.COM:8443/x", ["*.volces.com"])
    assert not host_allowed("https://volces.com.evil.io/x", ["*.volces.com"])
    assert not host_allowed("https://evil.io/x.volces.com", ["*.volces.com"])
    assert not host_allowed("ftp://a.volces.com/x", ["*"])
    assert not host_allowed("file:///etc/passwd", ["*"])
    assert host_allowed("http://10.0.0.1:9000/x", ["*"])
    assert redact("https://h.volces.com/a/b.mp4?X-Tos-Signature=abc") == "https://h.volces.com/a/b.mp4"
