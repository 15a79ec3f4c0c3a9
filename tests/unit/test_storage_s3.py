"""The S3 storage backend against a real S3-compatible server (SeaweedFS on loopback, tests/conftest.py).

What it promises (steps/storage_s3.py): parts streamed as they fill, nothing under the final key
before the commit, a lease that makes one attempt the uploader, stale uploads aborted, errors
turned into the download step's kinds without credentials in them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from typing import Any

import pytest

from seedance_worker.check import run_checks
from seedance_worker.errors import ConfigError, DownloadError
from seedance_worker.models import VideoFile
from seedance_worker.settings import get_settings, load_settings
from seedance_worker.settings_parts import s3_location
from seedance_worker.steps.download import download_video, storage_for
from seedance_worker.steps.fetch import Transient
from seedance_worker.steps.storage import StorageBusy
from seedance_worker.steps.storage_s3 import S3Storage
from seedance_worker.testing.s3 import SeaweedS3
from tests.support.env import reset_caches
from tests.support.file_server import PNG, FileServer, Route
from tests.support.ids import new_id
from tests.unit.test_download import make_outcome

MIB = 1024 * 1024


@pytest.fixture
def files() -> Any:
    server = FileServer()
    try:
        yield server
    finally:
        server.stop()


def _store(s3_dir: str) -> S3Storage:
    storage = storage_for(get_settings())
    assert isinstance(storage, S3Storage)
    return storage


def _keys(server: SeaweedS3, prefix: str) -> list[str]:
    listed = server.client().list_objects_v2(Bucket=server.bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents") or [])


def _uploads(server: SeaweedS3, prefix: str) -> list[str]:
    listed = server.client().list_multipart_uploads(Bucket=server.bucket, Prefix=prefix)
    return sorted(u["Key"] for u in listed.get("Uploads") or [])


def _body(server: SeaweedS3, key: str) -> bytes:
    data: bytes = server.client().get_object(Bucket=server.bucket, Key=key)["Body"].read()
    return data


def _video(n: int) -> bytes:
    head = b"\x00\x00\x00\x18ftypmp42"
    return head + os.urandom(n - len(head))


# --- settings ------------------------------------------------------------------------------------


def test_s3_uri_settings_are_normalised_and_checked() -> None:
    """An s3:// download dir is kept as a URI (not a Path), prefix normalised; bad ones are refused."""
    s = load_settings({"SEEDANCE_DOWNLOAD_DIR": "s3://my-bucket/videos//out"})
    assert s.download_dir == "s3://my-bucket/videos/out/"
    assert s3_location("s3://my-bucket") == ("my-bucket", "")
    assert str(load_settings({"SEEDANCE_DOWNLOAD_DIR": "./videos"}).download_dir) == "videos"
    for bad in (
        "s3://Bad_Bucket/x",
        "s3://b/x",
        "s3://bucket/../x",
        "s3://bucket/x?y=1",
        "s3://u:pw@bucket/",
    ):
        with pytest.raises(ConfigError, match="SEEDANCE_DOWNLOAD_DIR") as info:
            load_settings({"SEEDANCE_DOWNLOAD_DIR": bad})
        assert "pw@" not in str(info.value)  # a URI with credentials in it is not echoed whole
    with pytest.raises(ConfigError, match="10000 parts"):
        load_settings({"SEEDANCE_DOWNLOAD_DIR": "s3://bucket/", "SEEDANCE_DOWNLOAD_MAX_BYTES": str(10**12)})
    with pytest.raises(ConfigError, match="SEEDANCE_DOWNLOAD_S3_PART_BYTES"):
        load_settings({"SEEDANCE_DOWNLOAD_S3_PART_BYTES": str(MIB)})  # below S3's 5 MiB floor


# --- the storage protocol ------------------------------------------------------------------------


def test_parts_stream_out_and_nothing_is_visible_before_the_commit(s3_dir: str, s3_server: SeaweedS3) -> None:
    """12 MiB in 5 MiB parts: two parts go out while writing, the object appears only at commit."""
    env_prefix = s3_location(s3_dir)[1]
    storage = _store(s3_dir)
    storage.part_bytes = 5 * MIB
    name = f"{new_id()}.mp4"
    data = _video(12 * MIB)
    tmp = storage.open_partial(name)
    for i in range(0, len(data), 64 * 1024):
        tmp.fh.write(data[i : i + 64 * 1024])
    assert tmp.head(8) == data[:8]
    assert _keys(s3_server, env_prefix) == []  # parts are not an object
    assert _uploads(s3_server, env_prefix) == [env_prefix + name]
    uri = storage.commit(name, tmp)
    assert uri == f"s3://{s3_server.bucket}/{env_prefix}{name}"
    assert _keys(s3_server, env_prefix) == [env_prefix + name]
    assert _uploads(s3_server, env_prefix) == []
    assert _body(s3_server, env_prefix + name) == data
    assert storage.size(name) == len(data) and storage.exists(name)
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key=env_prefix + name)
    assert head["ContentType"] == "video/mp4"


def test_one_uploader_per_object_and_a_dead_ones_upload_is_aborted(
    s3_dir: str, s3_server: SeaweedS3, env: pytest.MonkeyPatch
) -> None:
    """A second open while the lease is held is StorageBusy; once it runs out (a killed holder),
    the next open aborts the abandoned upload and starts afresh."""
    env.setenv("SEEDANCE_DOWNLOAD_S3_LEASE_S", "1")
    reset_caches()
    prefix = s3_location(s3_dir)[1]
    storage = _store(s3_dir)
    storage.part_bytes = 5 * MIB
    name = f"{new_id()}.mp4"
    dead = storage.open_partial(name)
    with pytest.raises(StorageBusy):
        storage.open_partial(name)
    dead.fh.write(_video(6 * MIB))  # one part sent, then the holder "dies" without a word
    assert _uploads(s3_server, prefix) == [prefix + name]
    time.sleep(get_settings().download_s3_lease_s + 0.2)
    fresh = storage.open_partial(name)
    assert _uploads(s3_server, prefix) == []  # the dead attempt's parts are gone
    fresh.fh.write(b"\x00\x00\x00\x18ftypmp42rest")
    storage.commit(name, fresh)
    assert _body(s3_server, prefix + name) == b"\x00\x00\x00\x18ftypmp42rest"


def test_discard_and_restart_abort_the_upload(s3_dir: str, s3_server: SeaweedS3) -> None:
    """``truncate()`` (fetch.py's restart from byte 0) and ``discard`` leave no unfinished upload."""
    prefix = s3_location(s3_dir)[1]
    storage = _store(s3_dir)
    storage.part_bytes = 5 * MIB
    name = f"{new_id()}.mp4"
    tmp = storage.open_partial(name)
    tmp.fh.write(_video(5 * MIB))
    assert _uploads(s3_server, prefix) == [prefix + name]
    tmp.fh.seek(0)
    tmp.fh.truncate()
    assert _uploads(s3_server, prefix) == []
    tmp.fh.write(_video(5 * MIB))
    storage.discard(tmp)
    assert _uploads(s3_server, prefix) == [] and _keys(s3_server, prefix) == []
    storage.open_partial(name)  # the lease was given back with the discard


def test_wrong_credentials_are_a_storage_error_without_the_secret(
    s3_dir: str, env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="seedance_worker")
    secret = "wrong-secret-" + uuid.uuid4().hex
    env.setenv("AWS_SECRET_ACCESS_KEY", secret)
    reset_caches()
    storage = _store(s3_dir)
    with pytest.raises(DownloadError) as info:
        storage.open_partial(f"{new_id()}.mp4")
    assert info.value.kind == "storage_error" and "SignatureDoesNotMatch" in info.value.message
    assert secret not in info.value.message and secret not in caplog.text and secret not in repr(storage)
    (problem,) = [p for p in run_checks() if "download bucket" in p]
    assert "SignatureDoesNotMatch" in problem and secret not in problem


def test_unreachable_endpoint_is_transient(s3_dir: str, env: pytest.MonkeyPatch) -> None:
    from seedance_worker.testing.redis import free_port

    env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    env.setenv("AWS_MAX_ATTEMPTS", "1")
    reset_caches()
    with pytest.raises(Transient) as info:
        _store(s3_dir).size(f"{new_id()}.mp4")
    assert info.value.kind == "storage_error" and "EndpointConnectionError" in info.value.message


def test_check_passes_with_a_usable_bucket_and_names_a_missing_one(
    s3_dir: str, env: pytest.MonkeyPatch
) -> None:
    assert not [p for p in run_checks() if "download" in p]
    env.setenv("SEEDANCE_DOWNLOAD_DIR", "s3://no-such-bucket-here/x/")
    reset_caches()
    (problem,) = [p for p in run_checks() if "download" in p]
    assert problem.startswith("download bucket unusable (SEEDANCE_DOWNLOAD_DIR=s3://no-such-bucket-here/x/)")


# --- the download step ---------------------------------------------------------------------------


def test_download_step_stores_video_and_last_frame_in_s3(
    files: FileServer, s3_dir: str, s3_server: SeaweedS3
) -> None:
    """The step through S3: video.uri is s3://bucket/key, the object's bytes hash to video.sha256,
    a dropped connection is resumed within the attempt, a second run fetches nothing."""
    prefix = s3_location(s3_dir)[1]
    tid = new_id()
    data = _video(3 * MIB)
    url = files.add(f"/files/{tid}.mp4", Route(body=data, drop_after=1_000_000, drops=1))
    frame = files.add(f"/files/{tid}.png", Route(body=PNG, content_type="image/png"))
    result = download_video(make_outcome(tid, url, last_frame_url=frame))
    assert result["step_errors"] == {}
    video = VideoFile.model_validate(result["video"])
    assert video.uri == f"s3://{s3_server.bucket}/{prefix}{tid}.mp4"
    assert video.last_frame_uri == f"s3://{s3_server.bucket}/{prefix}{tid}.last_frame.png"
    assert (
        video.sha256
        == hashlib.sha256(data).hexdigest()
        == hashlib.sha256(_body(s3_server, prefix + f"{tid}.mp4")).hexdigest()
    )
    assert _body(s3_server, f"{prefix}{tid}.last_frame.png") == PNG
    assert [h.get("Range") for h in files.hits(f"/files/{tid}.mp4")] == [None, "bytes=1000000-"]
    assert _uploads(s3_server, prefix) == []
    again = download_video(make_outcome(tid, url, last_frame_url=frame))
    assert again["video"] == result["video"]
    assert len(files.hits(f"/files/{tid}.mp4")) == 2  # nothing fetched the second time


def test_refused_body_leaves_nothing_in_the_bucket(
    files: FileServer, s3_dir: str, s3_server: SeaweedS3
) -> None:
    prefix = s3_location(s3_dir)[1]
    tid = new_id()
    url = files.add(f"/files/{tid}.mp4", Route(body=b"<Error>AccessDenied</Error>" * 100))
    result = download_video(make_outcome(tid, url))
    assert result["video"] is None and result["step_errors"]["download"]["kind"] == "not_a_video"
    assert _keys(s3_server, prefix) == [] and _uploads(s3_server, prefix) == []


def test_a_lease_that_ran_out_unclaimed_is_taken_again_but_not_a_claimed_one(
    s3_dir: str, s3_server: SeaweedS3, env: pytest.MonkeyPatch
) -> None:
    """A stall longer than the lease (nobody else came) does not end the upload; a lease another
    attempt took meanwhile does: that writer stops with Transient(busy) and leaves the object alone."""
    env.setenv("SEEDANCE_DOWNLOAD_S3_LEASE_S", "1")
    reset_caches()
    prefix = s3_location(s3_dir)[1]
    storage = _store(s3_dir)
    name = f"{new_id()}.mp4"
    tmp = storage.open_partial(name)
    time.sleep(1.3)  # the lease runs out while "stalled"
    tmp.fh.write(b"\x00\x00\x00\x18ftypmp42")
    assert storage.commit(name, tmp).endswith(name)

    other = f"{new_id()}.mp4"
    first = storage.open_partial(other)
    time.sleep(1.3)
    second = storage.open_partial(other)  # took the lapsed lease
    with pytest.raises(Transient) as info:
        first.fh.write(b"x")
    assert info.value.kind == "busy"
    second.fh.write(b"\x00\x00\x00\x18ftypmp42")
    storage.commit(other, second)
    assert _keys(s3_server, prefix) == sorted([prefix + name, prefix + other])


def test_uploads_abandoned_under_the_prefix_are_swept(
    s3_dir: str, s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unfinished upload of another key older than STALE_UPLOAD_S goes at the next open (once an
    hour per process); a young one of another key is left to its own uploader."""
    from seedance_worker.steps import storage_s3

    prefix = s3_location(s3_dir)[1]
    storage = _store(s3_dir)
    client = s3_server.client()
    abandoned = f"{prefix}{new_id()}.mp4"
    client.create_multipart_upload(Bucket=s3_server.bucket, Key=abandoned)
    time.sleep(1.1)
    monkeypatch.setattr(storage_s3, "STALE_UPLOAD_S", 1.0)
    monkeypatch.setattr(storage_s3, "_swept_at", -storage_s3.SWEEP_EVERY_S)
    young = f"{prefix}{new_id()}.mp4"
    client.create_multipart_upload(Bucket=s3_server.bucket, Key=young)
    storage.open_partial(f"{new_id()}.mp4")
    assert _uploads(s3_server, prefix) == [young]
