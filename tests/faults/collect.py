"""Gathering what a finished run left behind, from Redis, the simulator, the receiver, the download
directory and the logs, into the plain values ``RunData`` holds; and the post-mortem dumps.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis

from seedance_worker.engine.store import get_store
from seedance_worker.steps.charge import LEDGER, list_ledger
from seedance_worker.steps.notify import delivery_key
from seedance_worker.testing.webhooks import Delivery, WebhookReceiver
from tests.faults.services import RecordingSimulator

QUEUES = ("seedance.poll", "seedance.post")


def text_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=10)


def job_states(r: redis.Redis, ids: list[str]) -> dict[str, str | None]:
    """Each job record's ``state`` field (``done`` once its hand-off finished)."""
    pipe = r.pipeline(transaction=False)
    for tid in ids:
        pipe.hget(f"seedance:job:{tid}", "state")
    return dict(zip(ids, pipe.execute(), strict=True))


def residual(r: redis.Redis) -> dict[str, int]:
    """Messages left in the queues and held unacked."""
    return {q: int(r.llen(q)) for q in QUEUES} | {"unacked": int(r.hlen("unacked"))}


def unacked_detail(r: redis.Redis) -> dict[str, Any]:
    """What is stuck in kombu's unacked hash, and whether its index entry and the restore mutex allow
    a restore (kombu restores only tags in ``unacked_index``, under the ``unacked_mutex``)."""
    now = time.time()
    out: list[dict[str, Any]] = []
    for tag, raw in r.hgetall("unacked").items():
        item: dict[str, Any] = {"tag": tag, "index_score_age_s": None}
        score = r.zscore("unacked_index", tag)
        if score is not None:
            item["index_score_age_s"] = round(now - score, 1)
        try:
            item.update(_unacked_message(raw))
        except Exception as exc:  # diagnostics only
            item["error"] = repr(exc)
        out.append(item)
    return {
        "entries": out,
        "index_size": int(r.zcard("unacked_index")),
        "mutex_ttl_s": r.ttl("unacked_mutex"),
        "mutex_holder": r.get("unacked_mutex"),
    }


def _unacked_message(raw: str) -> dict[str, Any]:
    msg, _ex, rk = json.loads(raw)
    hdr = msg.get("headers") or {}
    body = (
        json.loads(base64.b64decode(msg["body"]))
        if msg.get("properties", {}).get("body_encoding") == "base64"
        else None
    )
    item: dict[str, Any] = {
        "task": hdr.get("task"),
        "id": hdr.get("id"),
        "eta": hdr.get("eta"),
        "routing_key": rk,
        "args": (body[0] if isinstance(body, list) and body else None),
    }
    if isinstance(item["args"], list) and item["args"] and isinstance(item["args"][0], dict):
        item["args"] = [item["args"][0].get("task_id")]
    return item


def read_logs(logdir: Path) -> dict[str, str]:
    return {p.name: p.read_text(errors="replace") for p in sorted(logdir.glob("*.log"))}


def job_records(ids: Iterable[str]) -> dict[str, Any]:
    store = get_store()
    return {tid: store.get(tid) for tid in ids}


def sim_states(sim: RecordingSimulator, ids: Iterable[str]) -> dict[str, dict[str, Any] | None]:
    """The simulator's status, terminal time and history of each task (None: it does not know it)."""
    out: dict[str, dict[str, Any] | None] = {}
    for tid in ids:
        t = sim.task(tid)
        out[tid] = (
            None if t is None else {k: t.get(k) for k in ("status", "terminal_at", "history") if k in t}
        )
    return out


def ledger(r: redis.Redis) -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
    """The raw ledger list (task ids in charge order), its entries and their totals."""
    ids = [str(x) for x in r.lrange(LEDGER, 0, -1)]
    entries, totals = list_ledger()
    return ids, entries, totals


def in_doubt_counted(r: redis.Redis, deliveries: list[Delivery]) -> dict[str, int]:
    """The ``in_doubt`` count of the delivery record of every webhook-id answered 2xx more than once."""
    ok = Counter(d.webhook_id for d in deliveries if d.ok)
    return {wid: int(r.hget(delivery_key(wid), "in_doubt") or 0) for wid, c in ok.items() if c > 1}


def video_hashes(
    download_dir: Path, sim: RecordingSimulator, task_ids: Iterable[str]
) -> tuple[set[str], dict[str, str], dict[str, str]]:
    """The names in the download dir, and for each given task with a ``<id>.mp4`` there the sha256 of
    that file and of the bytes the simulator serves."""
    present = {p.name for p in download_dir.iterdir()} if download_dir.exists() else set()
    got: dict[str, str] = {}
    want: dict[str, str] = {}
    for tid in task_ids:
        path = download_dir / f"{tid}.mp4"
        if path.exists():
            got[tid] = hashlib.sha256(path.read_bytes()).hexdigest()
            want[tid] = hashlib.sha256(sim.file_bytes(tid)).hexdigest()
    return present, got, want


def redis_values(url: str) -> list[tuple[str, list[bytes]]]:
    """Every key in Redis with its values (hash fields as ``field=value``), for the secret scan."""
    rb = redis.Redis.from_url(url, socket_timeout=10)
    out: list[tuple[str, list[bytes]]] = []
    for key in rb.scan_iter("*", count=1000):
        t = rb.type(key).decode()
        if t == "string":
            values = [rb.get(key) or b""]
        elif t == "hash":
            values = [k + b"=" + v for k, v in rb.hgetall(key).items()]
        elif t == "list":
            values = rb.lrange(key, 0, -1)
        elif t == "set":
            values = list(rb.smembers(key))
        elif t == "zset":
            values = rb.zrange(key, 0, -1)
        else:
            values = []
        out.append((key.decode(errors="replace"), values))
    return out


def dump_requests(workdir: Path, sim: RecordingSimulator, receiver: WebhookReceiver) -> None:
    """The simulator's request log (and the receiver's deliveries) as JSON lines, for post-mortems."""
    with open(workdir / "requests.jsonl", "w") as fh:
        for rec in sim.requests():
            row = {
                "ts": rec.ts,
                "kind": rec.kind,
                "task_id": rec.task_id,
                "status": rec.status,
                "fault": rec.fault,
                "rid": rec.request_id,
                "retry_after": sim.retry_after.get(rec.request_id),
            }
            fh.write(json.dumps(row) + "\n")
    with open(workdir / "deliveries.jsonl", "w") as fh:
        for d in receiver.deliveries:
            row = {
                "ts": d.at,
                "webhook_id": d.webhook_id,
                "task_id": d.task_id,
                "status": d.status,
                "code": d.answered,
                "verified": d.verified,
            }
            fh.write(json.dumps(row) + "\n")
