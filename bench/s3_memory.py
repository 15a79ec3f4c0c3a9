"""Memory of the post worker while it stores one large video: local directory vs S3, side by side.

For each size (20 MB and 200 MB by default) and each storage (``SEEDANCE_DOWNLOAD_DIR`` a local
directory, then ``s3://bucket/prefix`` on a real S3-compatible server: SeaweedFS, started here on
loopback), a fresh post worker (``-Q seedance.post -c 1``) downloads one simulator video; a poll
worker (``-Q seedance.poll``) runs beside it. Measured on the post worker's pool child (the process
that streams the body): its RSS before the job, its peak RSS while storing (``VmHWM`` from
/proc, exact, plus a 10 ms psutil sampler as a cross-check) and the growth. A flat line means the
growth does not follow the video's size: the body is streamed (64 KiB reads; for S3 one part of
``SEEDANCE_DOWNLOAD_S3_PART_BYTES``, 8 MiB, at a time), never held whole. Each stored object is
read back and its sha256 compared with the one recorded.

reproduce with: python bench/s3_memory.py            (quick: --quick, one 8 MB video)
                python bench/s3_memory.py --sizes-mb 20,200,500
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench.common import (
    LOGS,
    SimProcess,
    Worker,
    base_env,
    client,
    in_env,
    start_redis,
    start_workers,
    table,
    wait_until,
    write_json,
)
from seedance_worker.testing.s3 import SeaweedS3

MB = 1_000_000
SCRIPT = [("queued", 0.1), ("running", 0.2), ("succeeded", None)]


def _hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sampler:
    """The largest RSS of one process, sampled every 10 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak_mb = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak_mb = max(self.peak_mb, self.proc.memory_info().rss / 2**20)
            except psutil.Error:
                return
            time.sleep(0.01)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def _sha_stored(uri: str, s3: SeaweedS3) -> str:
    h = hashlib.sha256()
    if uri.startswith("s3://"):
        bucket, key = uri[5:].split("/", 1)
        body = s3.client().get_object(Bucket=bucket, Key=key)["Body"]
        for chunk in iter(lambda: body.read(1 << 20), b""):
            h.update(chunk)
    else:
        with open(uri.removeprefix("file://"), "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def run_one(storage: str, size: int, redis_url: str, s3: SeaweedS3) -> dict[str, Any]:
    sim = SimProcess(video_bytes=size).start()
    env = base_env(redis_url, sim.base_url, poll_first_delay_s=0.1, poll_min_interval_s=0.2,
                   poll_running_interval_s=0.3, poll_queued_interval_s=0.3, poll_max_interval_s=1,
                   poll_countdown_cap_s=5, on_succeeded="seedance.download_video",
                   download_max_bytes=4 * 1024**3)  # fmt: skip
    if storage == "s3":
        env.update(s3.env())
        env["SEEDANCE_DOWNLOAD_DIR"] = f"s3://{s3.bucket}/bench-{uuid.uuid4().hex[:8]}/"
    else:
        env["SEEDANCE_DOWNLOAD_DIR"] = str(LOGS / f"videos-{uuid.uuid4().hex[:8]}")
    r = client(redis_url)
    r.flushdb()
    poll = Worker("s3mem-poll", env, concurrency=1, queues="seedance.poll")
    post = Worker("s3mem-post", env, concurrency=1, queues="seedance.post")
    start_workers(r, [poll, post])
    try:
        (child,) = post.child_pids()
        rss_before = psutil.Process(child).memory_info().rss / 2**20
        hwm_before = _hwm_mb(child)
        (tid,) = sim.add([SCRIPT])
        t0 = time.monotonic()
        with Sampler(child) as sampler:
            in_env(env, "bench.drive", "track_batch", [tid])
            done = wait_until(lambda: r.hget(f"seedance:job:{tid}", "state") == "done", 600, 0.05)
        took = time.monotonic() - t0
        hwm_after = _hwm_mb(child)
        record = json.loads(r.get(f"seedance:video:{tid}") or "{}")
    finally:
        post.stop()
        poll.stop()
        sim.stop()
    assert done and record.get("bytes") == size, f"{storage} {size}: not stored ({record})"
    sha_ok = _sha_stored(record["uri"], s3) == record["sha256"]
    return {
        "storage": storage,
        "video_mb": round(size / MB, 1),
        "rss_before_mb": round(rss_before, 1),
        "peak_rss_mb": round(max(hwm_after, sampler.peak_mb), 1),
        "sampled_peak_mb": round(sampler.peak_mb, 1),
        "growth_mb": round(hwm_after - max(hwm_before, rss_before), 1),
        "seconds": round(took, 1),
        "mb_per_s": round(size / MB / took, 1),
        "sha256_ok": sha_ok,
        "uri_scheme": record["uri"].split(":", 1)[0],
    }


def boto3_client_mb() -> float:
    """What loading boto3 and making one S3 client costs a fresh process (the S3 rows' fixed part)."""
    code = (
        "import psutil; p = psutil.Process(); a = p.memory_info().rss\n"
        "import boto3; c = boto3.session.Session().client('s3', region_name='us-east-1')\n"
        "print((p.memory_info().rss - a) / 2**20)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(float(out.stdout.strip()), 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mb", default="20,200")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    sizes = [8 * MB] if args.quick else [int(float(s) * MB) for s in args.sizes_mb.split(",")]
    red = start_redis().start()
    s3 = SeaweedS3().start()
    rows = []
    try:
        for size in sizes:
            for storage in ("local", "s3"):
                rows.append(run_one(storage, size, red.url, s3))
                print(rows[-1], flush=True)
    finally:
        s3.stop()
        red.stop()
    cols = [
        "storage",
        "video_mb",
        "rss_before_mb",
        "peak_rss_mb",
        "growth_mb",
        "seconds",
        "mb_per_s",
        "sha256_ok",
    ]
    print(table(rows, cols, "post worker's pool child while storing one video"))
    fixed = boto3_client_mb()
    print(f"loading boto3 and making one S3 client: {fixed} MB of the S3 rows' growth")
    if not args.quick:
        data = {"rows": rows, "part_bytes": 8 * 1024 * 1024, "boto3_client_mb": fixed}
        path = write_json("s3_memory.json", data)
        print(f"wrote {path}")
    return 0 if all(r["sha256_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
