"""``seedance-worker demo``: the whole job on the embedded default, nothing installed beforehand.

Starts an embedded Redis, the local API simulator, a webhook receiver that verifies every signature,
and a real prefork Celery worker; submits a few generation requests; shows their progress live; and
ends with the Outcomes and where the videos, the ledger and the notifications are. Exits 0 only when
every check holds: each succeeded job has its file with the recorded sha256, one ledger entry, and a
verified notification; each failed job a verified notification.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from seedance_worker.engine.store import get_store
from seedance_worker.errors import GenerationFailed
from seedance_worker.settings import get_settings
from seedance_worker.steps.charge import list_ledger
from seedance_worker.submit import submit
from seedance_worker.testing.redis import EmbeddedRedis
from seedance_worker.testing.simulator import SimConfig, Simulator
from seedance_worker.testing.webhooks import Delivery, WebhookReceiver
from seedance_worker.wiring.app import reset_caches

PROMPTS = [
    "A red fox trotting through fresh snow at dawn, cinematic",
    "Paper boats racing down a rain gutter, macro lens",
    "A lighthouse in a storm, waves crashing, slow motion",
    "A hummingbird hovering over a purple flower, 4k nature documentary",
    "Neon city street at night, reflections in puddles, tracking shot",
    "A cat knocking a glass off a table [fail]",  # the simulator's moderation failure
]
MODEL = "seedance-1-5-pro-251215"


def _progress_table(records: list[Any], started: float) -> Table:
    table = Table(title=f"seedance-worker demo: {time.time() - started:5.1f} s")
    for col in ("remote task", "remote status", "polls", "stage"):
        table.add_column(col)
    for r in records:
        stage = {"polling": "polling", "handoff": "download / charge / notify", "done": "done"}.get(
            r.state, r.state
        )
        table.add_row(r.task_id, str(r.status or "-"), str(r.polls), stage)
    return table


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_demo(jobs: int = 4, workdir: str = "seedance-demo", timeout_s: float = 120.0) -> int:
    console = Console(width=None if sys.stdout.isatty() else 160)
    root = Path(workdir).resolve()
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    notifications = root / "notifications.jsonl"
    notifications.unlink(missing_ok=True)
    prices = root / "prices.json"
    prices.write_text(json.dumps({"*": {"default": "5.00", "flex": "2.50"}}, indent=2))
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()

    (root / "redis").mkdir(exist_ok=True)
    redis_server = EmbeddedRedis(workdir=str(root / "redis")).start()
    sim = Simulator(config=SimConfig(queued_s=1.0, running_s=2.5)).start()
    receiver = WebhookReceiver(secret, log_path=notifications).start()
    env = {
        "SEEDANCE_REDIS_URL": redis_server.url,
        "SEEDANCE_API_BASE_URL": sim.base_url,
        "SEEDANCE_API_KEY": "demo-key-" + secrets.token_hex(8),
        "SEEDANCE_DOWNLOAD_DIR": str(videos),
        "SEEDANCE_DOWNLOAD_ALLOWED_HOSTS": "127.0.0.1",
        "SEEDANCE_DOWNLOAD_ALLOW_PRIVATE_HOSTS": "true",  # the simulator serves files on loopback
        "SEEDANCE_NOTIFY_URL": receiver.url,
        "SEEDANCE_NOTIFY_SECRET": secret,
        "SEEDANCE_PRICE_TABLE": str(prices),
        "SEEDANCE_POLL_FIRST_DELAY_S": "0.5",
        "SEEDANCE_POLL_MIN_INTERVAL_S": "0.5",
        "SEEDANCE_POLL_MAX_INTERVAL_S": "3",
        "SEEDANCE_POLL_QUEUED_INTERVAL_S": "1",
        "SEEDANCE_POLL_RUNNING_INTERVAL_S": "0.7",
    }
    for name in [n for n in os.environ if n.upper().startswith("SEEDANCE_")]:
        del os.environ[name]
    os.environ.update(env)
    reset_caches()

    worker_log = root / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "seedance_worker", "worker", "-P", "prefork", "-c", "2",
         "-Q", "seedance.poll,seedance.post", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "-l", "INFO", "--logfile", str(worker_log), "-n", "demo@%h"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        run = _Run(console, worker, worker_log, root, videos, notifications, receiver)
        return _drive(run, jobs, timeout_s)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        receiver.stop()
        sim.stop()
        gc.collect()
        redis_server.stop()


def _wait_ready(worker: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"the worker exited at start:\n{tail}")
        if log.exists() and " ready." in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the worker did not start within {timeout_s:g} s (see {log})")


@dataclass(frozen=True)
class _Run:
    """What the demo started, for the steps that drive and report it."""

    console: Console
    worker: subprocess.Popen[bytes]
    worker_log: Path
    root: Path
    videos: Path
    notifications: Path
    receiver: WebhookReceiver


def _prompts(jobs: int) -> list[str]:
    """``jobs`` prompts, the last one the simulator's moderation failure (when there are two or more)."""
    if jobs <= 1:
        return PROMPTS[:1]
    return [PROMPTS[i % (len(PROMPTS) - 1)] for i in range(jobs - 1)] + [PROMPTS[-1]]


def _submit_all(prompts: list[str], started: float) -> list[tuple[str, Any]]:
    handles = []
    for n, prompt in enumerate(prompts):
        remote_id, result = submit(
            MODEL,
            [{"type": "text", "text": prompt}],
            idempotency_key=f"demo-{started:.0f}-{n}",
            metadata={"demo_user": f"user-{n + 1}"},
            resolution="720p",
            duration=5,
        )
        assert remote_id is not None  # the demo's environment has no admission control
        handles.append((remote_id, result))
    return handles


def _watch(run: _Run, ids: list[str], started: float, timeout_s: float) -> bool:
    """The live progress table until every job is done; False on the timeout."""
    store = get_store()
    with Live(console=run.console, refresh_per_second=8) as live:
        while True:
            records = [r for r in (store.get(i) for i in ids) if r is not None]
            live.update(_progress_table(records, started))
            if len(records) == len(ids) and all(r.state == "done" for r in records):
                return True
            if time.time() - started > timeout_s:
                run.console.print(f"[red]timed out after {timeout_s:g} s[/] (see {run.worker_log})")
                return False
            time.sleep(0.15)


def _polled_statuses(handles: list[tuple[str, Any]]) -> dict[str, str]:
    """What a caller of submit() sees: the poll's Celery result (Outcome, or GenerationFailed)."""
    polled: dict[str, str] = {}
    for remote_id, result in handles:
        try:
            polled[remote_id] = result.get(timeout=10)["status"]
        except GenerationFailed as exc:
            polled[remote_id] = exc.outcome.status
    return polled


def _outcome_row(tid: str, o: dict[str, Any], got: list[Delivery]) -> list[str]:
    video = o.get("video") or {}
    charge = o.get("charge") or {}
    note = o.get("notification") or {}
    verified = "verified" if got and all(d.verified for d in got) else "MISSING"
    return [
        tid,
        str(o.get("status")),
        str(o.get("polls")),
        Path(video["uri"].removeprefix("file://")).name if video.get("uri") else "-",
        (video.get("sha256") or "-")[:16],
        str(charge.get("completion_tokens") or "-"),
        f"{charge['amount']} {charge['currency']}" if charge.get("amount") else "-",
        f"{note.get('status_code')} x{note.get('attempts')} {verified}",
    ]


def _report(run: _Run, ids: list[str], finals: dict[str, dict[str, Any]], entries: int, totals: Any) -> None:
    table = Table(title="Outcomes")
    for col in ("remote task", "status", "polls", "video", "sha256", "tokens", "amount", "webhook"):
        table.add_column(col)
    for tid in ids:
        table.add_row(*_outcome_row(tid, finals.get(tid, {}), run.receiver.for_task(tid)))
    got = len(run.receiver.deliveries)
    run.console.print(table)
    run.console.print(f"videos:        {run.videos}")
    run.console.print(f"ledger:        {run.root / 'ledger.json'}  ({entries} entries, totals {totals})")
    run.console.print(f"notifications: {run.notifications}  ({got} received, signatures checked)")
    run.console.print(f"worker log:    {run.worker_log}")


def _drive(run: _Run, jobs: int, timeout_s: float) -> int:
    run.console.print(
        f"[bold]seedance-worker demo[/]: embedded Redis, simulator, webhook receiver, worker -> {run.root}"
    )
    _wait_ready(run.worker, run.worker_log, 60)
    started = time.time()
    handles = _submit_all(_prompts(max(1, jobs)), started)
    ids = [h[0] for h in handles]
    if not _watch(run, ids, started, timeout_s):
        return 1
    # The notify task has its answer before the receiver's record lands: give it a moment.
    run.receiver.wait_for(len(ids), timeout_s=5)
    polled = _polled_statuses(handles)
    store = get_store()
    finals = {r.task_id: (r.outcome or {}) for r in (store.get(i) for i in ids) if r is not None}
    entries, totals = list_ledger(get_settings())
    (run.root / "ledger.json").write_text(json.dumps({"entries": entries, "totals": totals}, indent=2))
    problems = _verify(ids, finals, entries, run.receiver.deliveries)
    problems += [f"{t}: poll result {polled.get(t)} != record {finals.get(t, {}).get('status')}"
                 for t in ids if polled.get(t) != finals.get(t, {}).get("status")]  # fmt: skip
    _report(run, ids, finals, len(entries), totals)
    for p in problems:
        run.console.print(f"[red]check failed:[/] {p}")
    if problems:
        return 1
    run.console.print(f"[green]all checks passed[/] in {time.time() - started:.1f} s")
    return 0


def _verify(
    ids: list[str],
    finals: dict[str, dict[str, Any]],
    entries: list[dict[str, Any]],
    received: list[Delivery],
) -> list[str]:
    problems: list[str] = []
    succeeded = [t for t in ids if finals.get(t, {}).get("status") == "succeeded"]
    for tid in succeeded:
        video = finals[tid].get("video") or {}
        path = Path(str(video.get("uri", "")).removeprefix("file://"))
        if not video or not path.is_file():
            problems.append(f"{tid}: no video file")
        elif _sha256(path) != video.get("sha256"):
            problems.append(f"{tid}: {path} does not match its sha256")
    charged = [str(e.get("task_id")) for e in entries]
    if sorted(charged) != sorted(succeeded):
        problems.append(f"ledger has {len(charged)} entries for {len(succeeded)} succeeded jobs")
    for tid in ids:
        got = [d for d in received if d.task_id == tid]
        if len(got) != 1 or not got[0].verified:
            problems.append(f"{tid}: {len(got)} notifications, verified={[d.verified for d in got]}")
    return problems
