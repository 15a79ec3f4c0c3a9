"""Videos into S3 end to end: real prefork workers, the simulator, a real S3-compatible server
(SeaweedFS on loopback, the session fixture ``s3_server``), SEEDANCE_DOWNLOAD_DIR=s3://bucket/prefix.

A watcher lists the bucket over and over while the jobs run: every object it ever sees under a
final key must already have the final object's size (a reader never sees a partial object).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import seedance_worker
from seedance_worker.steps.charge import list_ledger
from seedance_worker.testing.s3 import SeaweedS3
from seedance_worker.testing.simulator import SimConfig, Simulator
from tests.e2e.test_downstream import ThrottleProxy
from tests.support.env import clean_redis, reset_caches
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess, Workers, wait_done

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
SCRIPT = [("queued", 0.2), ("running", 0.3), ("succeeded", None)]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Watcher:
    """Lists objects and unfinished uploads under a prefix, again and again, in a thread."""

    server: SeaweedS3
    prefix: str
    seen: dict[str, set[int]] = field(default_factory=dict)  # key -> every size it was listed with
    uploads_seen: set[str] = field(default_factory=set)
    listings: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        client = self.server.client()
        while not self.stop.is_set():
            with contextlib.suppress(Exception):  # a listing that fails is simply not counted
                for obj in (
                    client.list_objects_v2(Bucket=self.server.bucket, Prefix=self.prefix).get("Contents")
                    or []
                ):
                    self.seen.setdefault(obj["Key"], set()).add(int(obj["Size"]))
                listed = client.list_multipart_uploads(Bucket=self.server.bucket, Prefix=self.prefix)
                self.uploads_seen.update(u["Key"] for u in listed.get("Uploads") or [])
                self.listings += 1
            time.sleep(0.02)


@contextlib.contextmanager
def watching(server: SeaweedS3, prefix: str) -> Iterator[Watcher]:
    w = Watcher(server, prefix)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        yield w
    finally:
        w.stop.set()
        t.join(10)


@dataclass
class S3Fleet:
    sim: Simulator
    server: SeaweedS3
    bucket: str
    prefix: str
    tmp: Path

    def objects(self) -> dict[str, int]:
        listed = self.server.client().list_objects_v2(Bucket=self.bucket, Prefix=self.prefix)
        return {o["Key"]: int(o["Size"]) for o in listed.get("Contents") or []}

    def uploads(self) -> list[dict[str, Any]]:
        listed = self.server.client().list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
        return list(listed.get("Uploads") or [])

    def body(self, key: str) -> bytes:
        data: bytes = self.server.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return data


@pytest.fixture
def s3_fleet(
    tmp_path: Path, redis_url: str, s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> Iterator[S3Fleet]:
    """The simulator and the S3 settings in the environment; each test starts its own workers."""
    sim = Simulator(config=SimConfig(queued_s=0.2, running_s=0.3)).start()
    prefix = f"e2e-{uuid.uuid4().hex[:8]}/videos/"
    try:
        for k, v in s3_server.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("SEEDANCE_API_BASE_URL", sim.base_url)
        monkeypatch.setenv("SEEDANCE_DOWNLOAD_DIR", f"s3://{s3_server.bucket}/{prefix}")
        monkeypatch.setenv("SEEDANCE_DOWNLOAD_S3_PART_BYTES", str(5 * MIB))
        monkeypatch.setenv("SEEDANCE_DOWNLOAD_S3_LEASE_S", "3")
        reset_caches()
        clean_redis(redis_url)
        yield S3Fleet(sim, s3_server, s3_server.bucket, prefix, tmp_path)
    finally:
        monkeypatch.undo()
        reset_caches()
        sim.stop()


def test_videos_land_in_s3_whole_with_their_sha256(s3_fleet: S3Fleet) -> None:
    """8 jobs of 2-part videos and their last frames through two real workers into S3: each object
    is there with the recorded sha256 and size, video.uri names it, no partial object was ever
    listed under a final key, and no unfinished upload is left."""
    f = s3_fleet
    sizes = [6 * MIB + i * 100_003 for i in range(8)]
    with Workers(f.tmp, n=2, concurrency=2) as ws, watching(f.server, f.prefix) as watch:
        tids = [f.sim.add_task(SCRIPT, video_bytes=n, return_last_frame=True) for n in sizes]
        for tid in tids:
            seedance_worker.track(tid)
        records = {tid: wait_done(tid, 120, ws) for tid in tids}
    objects = f.objects()
    for tid, size in zip(tids, sizes, strict=True):
        out = records[tid].outcome
        assert out is not None and out["step_errors"] == {}, out
        video, expected = out["video"], f.sim.file_bytes(tid)
        key = f"{f.prefix}{tid}.mp4"
        assert len(expected) == size == video["bytes"] == objects[key]
        assert video["uri"] == f"s3://{f.bucket}/{key}"
        assert video["sha256"] == _sha(expected) == _sha(f.body(key))
        frame_key = f"{f.prefix}{tid}.last_frame.png"
        assert video["last_frame_uri"] == f"s3://{f.bucket}/{frame_key}"
        assert f.body(frame_key) == f.sim.file_bytes(tid, "last_frame")
    assert len(objects) == 2 * len(tids)
    # Every listing that showed a key showed the whole object, never a part of it.
    assert watch.seen and {k: sorted(v) for k, v in watch.seen.items()} == {
        k: [objects[k]] for k in watch.seen
    }
    assert watch.listings > 10
    assert f.uploads() == []
    assert len({e["task_id"] for e in list_ledger()[0]} & set(tids)) == len(tids)
    print(f"\n{len(tids)} videos: {watch.listings} listings during the run saw {len(watch.seen)} objects "
          f"and {len(watch.uploads_seen)} uploads in flight, never a partial object")  # fmt: skip


def test_sigkill_of_the_post_worker_mid_upload_recovers(
    s3_fleet: S3Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL of the post worker's whole process group while its multipart upload has parts in
    S3: nothing shows under the final key; the redelivered message's attempt (once the upload
    lease ran out) aborts the dead upload and uploads the video again; one object with the
    recorded sha256, no unfinished upload left, one ledger entry."""
    f = s3_fleet
    size = 14 * MIB
    # The killed message comes back after the visibility timeout: the least the settings accept.
    monkeypatch.setenv("SEEDANCE_VISIBILITY_TIMEOUT_S", "30")
    reset_caches()
    proxy = ThrottleProxy(f.sim.url, 2 * MIB).start()
    f.sim.configure(public_url=proxy.url)
    key = None
    try:
        with Workers(f.tmp, n=0) as ws, watching(f.server, f.prefix) as watch:
            ws.kw = {"concurrency": 1, "queues": "seedance.poll"}
            ws.spawn("poll").wait_ready()
            ws.kw = {"concurrency": 1, "queues": "seedance.post"}
            post = ws.spawn("post1")
            post.wait_ready()
            tid = f.sim.add_task(SCRIPT, video_bytes=size)
            key = f"{f.prefix}{tid}.mp4"
            seedance_worker.track(tid)
            dead_id = _wait_for_a_part(f, key, ws)
            _kill(post)
            killed_at = time.monotonic()
            assert key not in f.objects()  # the parts of a dead upload are no object
            assert [u["UploadId"] for u in f.uploads()] == [dead_id]  # left behind by the kill
            proxy.rate = 256 * MIB
            ws.spawn("post2").wait_ready()
            rec = wait_done(tid, 120, ws)
            recovered_s = time.monotonic() - killed_at
            received = ws.logs().count(f"download task={tid} video stored")
    finally:
        proxy.stop()
    out = rec.outcome
    assert out is not None and out["step_errors"] == {}, out
    expected = f.sim.file_bytes(tid)
    assert out["video"]["uri"] == f"s3://{f.bucket}/{key}"
    assert out["video"]["sha256"] == _sha(expected) == _sha(f.body(key))
    assert f.objects() == {key: size}
    assert set(watch.seen) <= {key} and watch.seen.get(key, {size}) == {size}  # never a partial object
    assert key in watch.uploads_seen
    assert f.uploads() == []  # the dead upload was aborted by the attempt that took over
    assert received == 1
    assert [e["task_id"] for e in list_ledger()[0]].count(tid) == 1
    print(f"\nSIGKILL mid-upload of a {size}-byte video (a 5 MiB part in S3); stored whole {recovered_s:.1f} s later "
          f"(the message's redelivery after the visibility timeout); {watch.listings} listings")  # fmt: skip


def _wait_for_a_part(f: S3Fleet, key: str, ws: Workers) -> str:
    """The id of ``key``'s unfinished upload once at least one part of it is in S3."""

    def part_sent() -> str | None:
        client = f.server.client()
        for up in f.uploads():
            if up["Key"] == key:
                parts = (
                    client.list_parts(Bucket=f.bucket, Key=key, UploadId=up["UploadId"]).get("Parts") or []
                )
                if parts:
                    return str(up["UploadId"])
        return None

    found: str = wait_for(part_sent, 60, "a part of the upload in S3", ws.tails)
    return found


def _kill(w: WorkerProcess) -> None:
    w.kill()
    time.sleep(0.5)  # SIGKILL lands asynchronously: let the child go before looking at the bucket
