"""The downstream chain end to end: real Redis, real prefork
`celery -A seedance_worker worker` processes, the simulator over HTTP, a webhook receiver.

Two fleets: a function-scoped one for the SIGKILL test (it kills a worker), and one module-scoped
fleet shared by the other tests, whose settings serve all of them at once (a small download size
limit, a webhook receiver, a user task in SEEDANCE_ON_SUCCEEDED).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import group

import seedance_worker
from seedance_worker.steps.charge import charge_usage, entry_id, list_ledger
from seedance_worker.testing.simulator import SimConfig, Simulator
from seedance_worker.testing.webhooks import WebhookReceiver
from tests.support.e2e_downstream_tasks import ENRICH_KEY, EXPLODE_KEY
from tests.support.env import clean_redis, reset_caches
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess, Workers, wait_done, worker_env

pytestmark = pytest.mark.slow

MAX_BYTES = 200_000  # SEEDANCE_DOWNLOAD_MAX_BYTES of the shared fleet
ON_SUCCEEDED = "seedance.download_video,tests.enrich,seedance.charge_usage,seedance.notify"
SCRIPT = [("queued", 0.2), ("running", 0.3), ("succeeded", None)]


def _secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- helpers: a throttling file proxy ---------------------------------------


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a peer that went away (a killed worker) is expected here, not a traceback


@dataclass
class ProxyHit:
    path: str
    range: str | None
    status: int
    sent: int = 0
    finished: bool = False


class ThrottleProxy:
    """Forwards GETs to the simulator and trickles each body out at ``rate`` bytes per second.

    The simulator writes a file in one go; served through this proxy (``SimConfig.public_url``) a
    download takes seconds, long enough to SIGKILL the worker in the middle of it.
    """

    def __init__(self, upstream: str, rate: float, chunk: int = 32 * 1024) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.rate = rate
        self.chunk = chunk
        self.hits: list[ProxyHit] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy._serve(self)

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> ThrottleProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        rng = h.headers.get("Range")
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=10)
        try:
            conn.request("GET", h.path, headers={"Range": rng} if rng else {})
            resp = conn.getresponse()
            body = resp.read()
            hit = ProxyHit(h.path, rng, resp.status)
            self.hits.append(hit)
            h.send_response(resp.status)
            for name in ("Content-Type", "Content-Range", "Accept-Ranges", "ETag"):
                if resp.getheader(name):
                    h.send_header(name, resp.getheader(name))
            h.send_header("Content-Length", str(len(body)))
            h.send_header("Connection", "close")
            h.end_headers()
            for i in range(0, len(body), self.chunk):
                piece = body[i : i + self.chunk]
                h.wfile.write(piece)
                h.wfile.flush()
                hit.sent += len(piece)
                time.sleep(len(piece) / self.rate)
            hit.finished = True
        except OSError:
            pass  # the downloading worker was killed: its socket is gone
        finally:
            conn.close()


# --- fleets ---------------------------------------------------------------------------------------


@dataclass
class Fleet:
    sim: Simulator
    ws: Workers
    download_dir: Path
    receiver: WebhookReceiver | None = None
    proxy: ThrottleProxy | None = None


@contextlib.contextmanager
def _fleet(
    tmp: Path,
    redis_url: str,
    *,
    env: dict[str, str],
    concurrency: int,
    rate: float | None = None,
    receiver: bool = False,
    workers: type[Workers] = Workers,
    n: int = 2,
) -> Iterator[Fleet]:
    sim = Simulator(config=SimConfig(queued_s=0.2, running_s=0.3)).start()
    proxy = ThrottleProxy(sim.url, rate).start() if rate else None
    if proxy is not None:
        sim.configure(public_url=proxy.url)  # video URLs point at the proxy
    secret = _secret()
    rec = WebhookReceiver(secret).start() if receiver else None
    download_dir = tmp / "videos"
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SEEDANCE_API_BASE_URL", sim.base_url)
            mp.setenv("SEEDANCE_DOWNLOAD_DIR", str(download_dir))
            if rec is not None:
                mp.setenv("SEEDANCE_NOTIFY_URL", rec.url)
                mp.setenv("SEEDANCE_NOTIFY_SECRET", secret)
            for k, v in env.items():
                mp.setenv(k, v)
            reset_caches()
            clean_redis(redis_url)
            try:
                with workers(
                    tmp, n=n, concurrency=concurrency, extra_args=["--include", "tests.support.e2e_downstream_tasks"]
                ) as ws:
                    try:
                        yield Fleet(sim, ws, download_dir, rec, proxy)
                    finally:
                        _stop_together(ws)
            finally:
                mp.undo()
                reset_caches()
    finally:
        for server in (rec, proxy, sim):
            if server is not None:
                server.stop()


def _stop_together(ws: Workers) -> None:
    """Warm-shut every worker at once (Workers.__exit__ stops them one after the other)."""
    alive = [w for w in ws.procs if w.proc is not None and w.proc.poll() is None]
    for w in alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(w.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
    for w in alive:
        try:
            w.proc.wait(20)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            w.kill()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Fleet]:
    """Two workers (-c 1 each, so two messages published together run in two processes at once)."""
    env = {"SEEDANCE_DOWNLOAD_MAX_BYTES": str(MAX_BYTES), "SEEDANCE_ON_SUCCEEDED": ON_SUCCEEDED}
    with _fleet(tmp_path_factory.mktemp("shared"), redis_url, env=env, concurrency=1, receiver=True) as f:
        yield f


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# --- 1. SIGKILL mid-download ----------------------------------------------------------------------


def _openers(path: Path) -> list[int]:
    """The pids that have ``path`` open."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                        pids.append(int(pid))
                        break
    return pids


def _owner(pid: int, workers: list[WorkerProcess]) -> WorkerProcess | None:
    """The worker whose process group ``pid`` is in (a prefork child's group is its worker's)."""
    try:
        pgid = os.getpgid(pid)
    except OSError:
        return None
    return next((w for w in workers if w.proc is not None and w.proc.pid == pgid), None)


def test_sigkill_mid_download_leaves_no_partial_file_and_ends_downloaded_once(
    tmp_path: Path, redis_url: str
) -> None:
    """SIGKILL of the downloading worker's whole process group mid-body leaves no partial file under
    the final name; the message comes back after the visibility timeout and the download resumes
    (Range) to one complete file, one Outcome with its sha256 and one ledger entry."""
    env = {"SEEDANCE_VISIBILITY_TIMEOUT_S": "30"}  # the minimum the settings accept
    size = 4 * 1024 * 1024
    with _fleet(tmp_path, redis_url, env=env, concurrency=2, rate=1024 * 1024) as f:
        assert f.proxy is not None
        tid = f.sim.add_task(SCRIPT, video_bytes=size)
        expected = f.sim.file_bytes(tid)
        assert len(expected) == size
        seedance_worker.track(tid)
        final = f.download_dir / f"{tid}.mp4"

        def part_big() -> bool:
            p = f.download_dir / f".{tid}.mp4.part"
            return p.exists() and p.stat().st_size >= 256 * 1024

        wait_for(part_big, 30, "the partial file", f.ws.tails)
        part = (f.download_dir / f".{tid}.mp4.part").resolve()
        holders = _openers(part)
        victim = _owner(holders[0], f.ws.procs) if len(holders) == 1 else None
        assert victim is not None, f"expected one worker child writing {part.name}, got pids {holders}"
        victim.kill()
        killed_at = time.time()
        # SIGKILL lands asynchronously on the child: read the size once nothing has the file open.
        wait_for(lambda: not _openers(part), 10, "the killed child to go", f.ws.tails)
        at_kill = part.stat().st_size
        # A reader never sees a partial file under the final name.
        assert not final.exists() or _sha(final.read_bytes()) == _sha(expected)
        assert not final.exists(), "the download finished before the kill; slow the proxy down"
        assert 0 < at_kill < size
        f.proxy.rate = 64 * 1024 * 1024  # only the killed attempt needs to be slow
        f.ws.spawn("w3").wait_ready()

        rec = wait_done(tid, 60, f.ws)
        recovered_after = time.time() - killed_at

        assert _files(f.download_dir) == [f"{tid}.mp4"]  # one file, no .part left behind
        assert _sha(final.read_bytes()) == _sha(expected)
        assert rec.outcome is not None
        video = rec.outcome["video"]
        assert video["sha256"] == _sha(expected) and video["bytes"] == size
        assert rec.outcome["step_errors"] == {}
        entries = [e for e in list_ledger()[0] if e["task_id"] == tid]
        assert len(entries) == 1 and rec.outcome["charge"]["entry_id"] == entries[0]["entry_id"]
        # Recovered by redelivery of the same message, not by a re-fired chain.
        assert rec.handoff_fires == 1
        received = re.findall(r"Task seedance\.download_video\[([0-9a-f-]+)\] received", f.ws.logs())
        assert len(received) == 2 and len(set(received)) == 1, received
        # The killed body was resumed where the partial file ended, not fetched again from byte 0.
        hits = [h for h in f.proxy.hits if h.path.startswith(f"/files/{tid}.mp4")]
        assert [(h.range, h.status, h.finished) for h in hits] == [
            (None, 200, False),
            (f"bytes={at_kill}-", 206, True),
        ]
        print(f"\nkill: {at_kill} of {size} bytes on disk at SIGKILL of {victim.name}; "
              f"done {recovered_after:.1f}s after the kill")  # fmt: skip


# --- 1b. a full disk, for real (issue 14, item 2; own fleets, so before the shared one) ------------------------------------------------------------

FSIZE_LIMIT = 1024 * 1024
_LIMITED = (
    "import resource, signal, sys\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    f"resource.setrlimit(resource.RLIMIT_FSIZE, ({FSIZE_LIMIT}, {FSIZE_LIMIT}))\n"
    "sys.argv = ['celery', *sys.argv[1:]]\n"
    "from celery.__main__ import main\n"
    "main()\n"
)


class _FsizeLimitedWorkers(Workers):
    """Workers whose processes may not write a file past FSIZE_LIMIT bytes: writes fail with EFBIG
    (SIGXFSZ ignored), as they would on a file system that is full at that size."""

    def spawn(self, name: str | None = None) -> WorkerProcess:
        w = WorkerProcess(name or f"w{len(self.procs) + 1}", env=worker_env(), logdir=self.logdir, **self.kw)  # type: ignore[arg-type]
        assert w.cmd[1:3] == ["-m", "celery"]
        w.cmd[1:3] = ["-c", _LIMITED]
        self.procs.append(w.start())
        return w


def test_a_full_disk_in_a_real_worker_retries_then_still_charges_and_notifies(
    tmp_path: Path, redis_url: str
) -> None:
    """A worker that cannot write past 1 MB (RLIMIT_FSIZE: EFBIG) downloads a 2 MB video: the step
    retries with backoff (storage_full is transient), then records storage_full and drops the partial
    file; the job is still charged once and notified with the error."""
    env = {"SEEDANCE_ON_SUCCEEDED": "seedance.download_video,seedance.charge_usage,seedance.notify"}
    with _fleet(tmp_path, redis_url, env=env, concurrency=1, receiver=True, workers=_FsizeLimitedWorkers, n=1) as f:
        assert f.receiver is not None
        tid = f.sim.add_task(SCRIPT, video_bytes=2 * FSIZE_LIMIT)
        seedance_worker.track(tid)
        rec = wait_done(tid, 120, f.ws)
        assert rec.outcome is not None and rec.outcome["video"] is None
        err = rec.outcome["step_errors"]["download"]
        assert err["kind"] == "storage_full" and "EFBIG" in err["message"], err
        assert "gave up after 6 attempts" in err["message"]
        assert _files(f.download_dir) == []  # the partial file is dropped when the step gives up
        entries = [e for e in list_ledger()[0] if e["task_id"] == tid]
        assert len(entries) == 1 and rec.outcome["charge"]["entry_id"] == entries[0]["entry_id"]
        got = f.receiver.for_task(tid)
        assert len(got) == 1 and got[0].verified
        assert got[0].payload["step_errors"]["download"]["kind"] == "storage_full"
        files = f.sim.requests(kind="file", task_id=tid)
        assert len(files) == 6 and all(x.status in (200, 206) for x in files)


# --- 1c. a hand-off that never completes (item 2) --------------------------------------------------


def test_a_handoff_that_exhausts_its_refires_still_charges_and_notifies(
    tmp_path: Path, redis_url: str
) -> None:
    """A user step that always raises keeps the chain from completing: the sweeper re-fires it until
    MAX_HANDOFF_FIRES, then fires charge and notify alone with step_errors.handoff recorded; the job
    ends done, charged once and notified once, and its Outcome names the video the first step
    stored."""
    from seedance_worker.engine.sweep import MAX_HANDOFF_FIRES

    env = {
        "SEEDANCE_ON_SUCCEEDED": "seedance.download_video,tests.explode,seedance.charge_usage,seedance.notify",
        "SEEDANCE_HANDOFF_LEASE_S": "5",
        "SEEDANCE_DOWNLOAD_TIMEOUT_S": "2",
        "SEEDANCE_SWEEP_INTERVAL_S": "1",
    }
    with _fleet(tmp_path, redis_url, env=env, concurrency=2, receiver=True) as f:
        assert f.receiver is not None
        tid = f.sim.add_task(SCRIPT)
        seedance_worker.track(tid)
        rec = wait_done(tid, 120, f.ws)
        assert rec.handoff == "done" and rec.handoff_fires == MAX_HANDOFF_FIRES + 1
        r = redis.Redis.from_url(redis_url, decode_responses=True)
        assert r.lrange(EXPLODE_KEY, 0, -1).count(tid) == MAX_HANDOFF_FIRES
        assert rec.outcome is not None
        err = rec.outcome["step_errors"]["handoff"]
        assert err["kind"] == "handoff_exhausted" and str(MAX_HANDOFF_FIRES) in err["message"]
        entries = [e for e in list_ledger()[0] if e["task_id"] == tid]
        assert len(entries) == 1 and rec.outcome["charge"]["entry_id"] == entries[0]["entry_id"]
        got = f.receiver.for_task(tid)
        assert len(got) == 1 and got[0].verified
        assert got[0].payload["step_errors"]["handoff"]["kind"] == "handoff_exhausted"
        video = rec.outcome["video"]
        assert video is not None and video["uri"].startswith("file://"), rec.outcome
        stored = Path(video["uri"].removeprefix("file://"))
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == video["sha256"]
        assert got[0].payload["video"] == video


# --- 2. charge twice at once ----------------------------------------------------------------------


def test_charge_usage_twice_at_once_leaves_one_ledger_entry(shared: Fleet) -> None:
    """Two concurrent seedance.charge_usage runs for one job, in two worker processes, write one
    ledger entry and both return the same charge.entry_id."""
    f = shared
    tid = f.sim.add_task(SCRIPT, usage_tokens=108_900)
    seedance_worker.track(tid, on_succeeded=[], metadata={"order": "o-2"})  # no charge in the chain
    outcome = wait_done(tid, 30, f.ws).outcome
    assert outcome is not None and outcome["charge"] is None
    assert [e for e in list_ledger()[0] if e["task_id"] == tid] == []

    results = group(charge_usage.s(outcome), charge_usage.s(outcome)).apply_async().get(timeout=30)

    charges = [r["charge"] for r in results]
    assert charges[0] == charges[1]
    assert charges[0]["entry_id"] == entry_id(tid) and charges[0]["completion_tokens"] == 108_900
    entries = [e for e in list_ledger()[0] if e["task_id"] == tid]
    assert len(entries) == 1 and entries[0]["entry_id"] == entry_id(tid)
    assert entries[0]["metadata"] == {"order": "o-2"}
    # Each worker (one process each) ran one copy: one wrote the entry, the other found it.
    lines = {
        w.name: [ln for ln in w.log_text().splitlines() if f"charge task={tid}" in ln] for w in f.ws.procs
    }
    assert sorted(len(v) for v in lines.values()) == [1, 1], lines
    assert sorted("already recorded" in v[0] for v in lines.values()) == [False, True], lines


# --- 3. webhook retried until 2xx -----------------------------------------------------------------


def test_notify_retries_500s_until_a_signed_200(shared: Fleet) -> None:
    """A receiver answering 500, 500, 200 gets the notification on the third attempt, signed, with
    the same webhook-id each time; the Outcome records attempts=3, delivered, status 200."""
    f = shared
    assert f.receiver is not None
    tid = f.sim.add_task(SCRIPT)
    f.receiver.plan([500, 500], task_id=tid)
    seedance_worker.track(tid)
    rec = wait_done(tid, 30, f.ws)

    assert rec.outcome is not None
    note = rec.outcome["notification"]
    assert note["attempts"] == 3 and note["delivered"] is True and note["status_code"] == 200
    assert note["error"] is None
    got = f.receiver.for_task(tid)
    assert [d.answered for d in got] == [500, 500, 200]
    assert all(d.verified for d in got)
    assert {d.webhook_id for d in got} == {note["webhook_id"]}
    delivered = [d for d in got if 200 <= d.answered < 300]
    assert len(delivered) == 1 and delivered[0].payload["status"] == "succeeded"
    assert delivered[0].payload["video"]["sha256"] == _sha(f.sim.file_bytes(tid))
    gaps = [round(b.at - a.at, 2) for a, b in itertools.pairwise(got)]
    print(f"\nnotify: answers {[d.answered for d in got]}, gaps {gaps} s")


# --- 4. the signed URL expires before the download ------------------------------------------------


def test_expired_download_url_is_refreshed_with_one_extra_get(shared: Fleet) -> None:
    """The first download answers 403 (URL expired): the job still ends downloaded, after exactly one
    extra GET of the task for a fresh URL."""
    f = shared
    f.sim.configure(expire_first_download=True)
    try:
        tid = f.sim.add_task(SCRIPT)
        seedance_worker.track(tid)
        rec = wait_done(tid, 30, f.ws)
    finally:
        f.sim.configure(expire_first_download=False)

    assert rec.outcome is not None
    assert rec.outcome["video"]["sha256"] == _sha(f.sim.file_bytes(tid))
    assert "download" not in rec.outcome["step_errors"]
    assert (f.download_dir / f"{tid}.mp4").read_bytes() == f.sim.file_bytes(tid)
    gets = f.sim.requests(kind="get", task_id=tid)
    assert rec.polls == rec.outcome["polls"] and len(gets) == rec.polls + 1
    files = f.sim.requests(kind="file", task_id=tid)
    assert [x.status for x in files] == [403, 200]
    assert files[0].query["X-Tos-Signature"] != files[1].query["X-Tos-Signature"]  # a fresh URL
    assert files[1].ts > gets[-1].ts  # fetched with the URL from the extra GET
    print(f"\nexpiry: polls={rec.polls} GETs={len(gets)} file answers={[x.status for x in files]}")


# --- 5. refused downloads -------------------------------------------------------------------------


def test_refused_downloads_record_a_typed_error_and_still_notify(shared: Fleet) -> None:
    """A host outside the allow-list, a body over SEEDANCE_DOWNLOAD_MAX_BYTES and an HTML body (by
    Content-Type, and sniffed under video/mp4) end with a typed download error, no video and no
    file, and the notification carries the error."""
    f = shared
    assert f.receiver is not None
    html = b"<!DOCTYPE html><html><body>AccessDenied</body></html>"
    outside = {"content": {"video_url": "https://videos.example.com/files/x.mp4?X-Tos-Signature=abc"}}
    cases = {
        f.sim.add_task(SCRIPT, response_extra=outside): "host_not_allowed",
        f.sim.add_task(SCRIPT, video_bytes=3 * MAX_BYTES): "too_large",
        f.sim.add_task(SCRIPT, video_content_type="text/html", video_body=html): "not_a_video",
        f.sim.add_task(SCRIPT, video_content_type="video/mp4", video_body=html): "not_a_video",
    }
    for tid in cases:
        seedance_worker.track(tid)
    records = {tid: wait_done(tid, 30, f.ws) for tid in cases}

    for tid, kind in cases.items():
        out = records[tid].outcome
        assert out is not None and out["status"] == "succeeded"
        assert out["video"] is None
        err = out["step_errors"]["download"]
        assert err["kind"] == kind and err["type"] == "DownloadError" and err["message"], (tid, err)
        assert not any(n.startswith((tid, f".{tid}")) for n in _files(f.download_dir)), tid
        got = f.receiver.for_task(tid)
        assert len(got) == 1 and got[0].verified and got[0].answered == 200
        assert got[0].payload["step_errors"]["download"]["kind"] == kind
        assert got[0].payload["video"] is None
        assert out["notification"]["delivered"] is True
    host_tid = next(t for t, k in cases.items() if k == "host_not_allowed")
    assert f.sim.requests(kind="file", task_id=host_tid) == []
    assert "videos.example.com/files/x.mp4" in records[host_tid].outcome["step_errors"]["download"]["message"]  # type: ignore[index]
    assert "abc" not in records[host_tid].outcome["step_errors"]["download"]["message"]  # type: ignore[index]


# --- 6. a user task in the chain ------------------------------------------------------------------


def test_user_task_in_on_succeeded_gets_the_downloaded_outcome_and_feeds_the_next(
    shared: Fleet, redis_url: str
) -> None:
    """tests.enrich, named in SEEDANCE_ON_SUCCEEDED after download, receives the Outcome with `video`
    filled, and what it returns reaches charge, notify (the webhook body) and the job record."""
    f = shared
    assert f.receiver is not None
    tid = f.sim.add_task(SCRIPT)
    seedance_worker.track(tid, metadata={"user": "u-6"})
    rec = wait_done(tid, 30, f.ws)
    sha = _sha(f.sim.file_bytes(tid))

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    seen = [json.loads(x) for x in r.lrange(ENRICH_KEY, 0, -1)]
    mine = [s for s in seen if s["task_id"] == tid]
    assert len(mine) == 1 and mine[0]["video_sha256"] == sha  # download ran before it
    enriched = {"by": "tests.enrich", **mine[0]}
    got = f.receiver.for_task(tid)
    assert len(got) == 1 and got[0].verified
    body = got[0].payload
    assert body["enriched"] == enriched
    assert body["video"]["sha256"] == sha and body["metadata"] == {"user": "u-6"}
    assert body["charge"]["entry_id"] == entry_id(tid)  # charge ran after enrich, and kept its field
    assert rec.outcome is not None and rec.outcome["enriched"] == enriched


# --- 7. malformed video URLs (issue 14, item 2) ---------------------------------------------------


def test_malformed_video_urls_still_charge_and_notify(shared: Fleet) -> None:
    """A port out of range, a tab in the host and a parser-differential authority in video_url are
    recorded as invalid_url; the chain still reaches charge and notify (before, the task failed and
    the paid job was never charged or notified)."""
    f = shared
    assert f.receiver is not None
    port = f.sim.port
    urls = [
        "http://127.0.0.1:99999/files/x.mp4?X-Tos-Signature=abc",
        f"http://127.0.0\t.1:{port}/files/x.mp4?X-Tos-Signature=abc",
        f"http://127.0.0.1:{port}\\@x.volces.com/files/x.mp4?X-Tos-Signature=abc",
    ]
    tids = [f.sim.add_task(SCRIPT, response_extra={"content": {"video_url": u}}) for u in urls]
    for tid in tids:
        seedance_worker.track(tid)
    records = {tid: wait_done(tid, 30, f.ws) for tid in tids}
    ledger = {e["task_id"] for e in list_ledger()[0]}
    for tid in tids:
        out = records[tid].outcome
        assert out is not None and out["video"] is None
        err = out["step_errors"]["download"]
        assert err["kind"] == "invalid_url" and "abc" not in err["message"], (tid, err)
        assert tid in ledger and out["charge"]["entry_id"] == entry_id(tid)
        got = f.receiver.for_task(tid)
        assert (
            len(got) == 1
            and got[0].verified
            and got[0].payload["step_errors"]["download"]["kind"] == "invalid_url"
        )
        assert f.sim.requests(kind="file", task_id=tid) == []
