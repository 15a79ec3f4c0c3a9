"""Functions run by ``common.in_env`` in a spawned process whose SEEDANCE_* environment is a run's.

The bundled Celery app reads the broker URL at import, so everything that publishes (track, the
baselines' first messages, seeding) runs here, in the run's environment.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any


def track_batch(ids: list[str], on_succeeded: list[str] | None = None, on_failed: list[str] | None = None) -> float:
    """``seedance_worker.track_many`` in batches; returns the seconds it took."""
    from seedance_worker.track import track_many

    t0 = time.perf_counter()
    kw: dict[str, Any] = {}
    if on_succeeded is not None:
        kw["on_succeeded"] = on_succeeded
    if on_failed is not None:
        kw["on_failed"] = on_failed
    for i in range(0, len(ids), 1000):
        track_many(ids[i : i + 1000], **kw)
    return time.perf_counter() - t0


def track_at(items: list[tuple[float, str]], on_succeeded: list[str] | None = None) -> list[tuple[str, float]]:
    """track() each id at its (absolute) time: jobs arriving over a window. Returns (id, tracked_at)."""
    from seedance_worker.track import track

    out = []
    for at, tid in sorted(items):
        delay = at - time.time()
        if delay > 0:
            time.sleep(delay)
        kw: dict[str, Any] = {}
        if on_succeeded is not None:
            kw["on_succeeded"] = on_succeeded
        track(tid, **kw)
        out.append((tid, time.time()))
    return out


def start_noop(n: int, until: float, countdown: float) -> None:
    import bench.baseline_tasks as bt
    from seedance_worker.wiring.app import ensure_app

    ensure_app()
    for _ in range(n):
        bt.noop_resched.apply_async((until, countdown), queue="seedance.poll")


def start_get(ids: list[str], base_url: str, until: float, countdown: float) -> None:
    import bench.baseline_tasks as bt
    from seedance_worker.wiring.app import ensure_app

    ensure_app()
    for tid in ids:
        bt.get_resched.apply_async((tid, base_url, until, countdown), queue="seedance.poll")


def start_blocking(ids: list[str], base_url: str, interval: float) -> None:
    import bench.baseline_tasks as bt
    from seedance_worker.wiring.app import ensure_app

    ensure_app()
    for tid in ids:
        bt.blocking_poll.apply_async((tid, base_url, interval), queue="seedance.poll")


def queued_snapshot(task_id: str) -> dict[str, Any]:
    from seedance_worker.client import get_client

    snap = get_client().get_task(task_id)
    return snap.model_dump(mode="json", exclude_none=True)


def seed(items: list[tuple[str, float]], snapshot: dict[str, Any], park: bool) -> float:
    """Put jobs in the state a first poll of a queued task leaves them in, through the product's
    JobStore methods: ``register`` (what track() does) then ``advance`` (what poll.reschedule does
    after the GET, with the fields it writes) with the next poll due at the given time; parked
    (``park_at``) with parking ON, or a countdown poll message (``publish_poll``, what
    ``poll._again`` sends) with parking OFF. Skips only the first poll's GET. Returns seconds."""
    import dataclasses

    from seedance_worker.engine.jobs import publish_poll, registration_fields
    from seedance_worker.engine.schedule import waiting_lease
    from seedance_worker.engine.store import JobRecord, get_store
    from seedance_worker.settings import get_settings
    from seedance_worker.wiring.app import ensure_app

    ensure_app()
    settings = get_settings()
    store = get_store(settings)
    fields = registration_fields(settings)
    record_fields = {f.name for f in dataclasses.fields(JobRecord)}
    t0 = time.perf_counter()
    for tid, due in items:
        now = time.time()
        owner = str(uuid.uuid4())
        store.register(tid, owner, now=now, lease_at=waiting_lease(settings, 1.0, now), fields=fields)
        adv: dict[str, Any] = {
            "status": "queued", "status_polls": 1, "error_streak": 0, "last_error": None,
            "polls": 1, "next_due_at": due, "updated_at": now,
        }  # fmt: skip
        if "snapshot" in record_fields:  # older records kept the whole last GET body
            adv["snapshot"] = {**snapshot, "id": tid}
        if "created_at" in record_fields:  # newer ones keep only what the deadline needs
            adv["created_at"] = snapshot.get("created_at")
            adv["expires_after"] = snapshot.get("execution_expires_after")
        store.advance(
            tid, 1, lease_at=waiting_lease(settings, due - now, now), fields=adv, park_at=due if park else 0.0
        )
        if not park:
            publish_poll(tid, gen=2, countdown_s=max(0.0, due - time.time()), celery_id=owner, settings=settings)
    return time.perf_counter() - t0


def env_pid() -> int:
    return os.getpid()


def inspect_prefetch(timeout_s: float = 3.0) -> dict[str, Any]:
    """Per worker: kombu's prefetch_count (1 + every ETA/countdown message it holds) via inspect stats."""
    from seedance_worker.wiring.app import ensure_app

    app = ensure_app()
    stats = app.control.inspect(timeout=timeout_s).stats() or {}
    return {name: s.get("prefetch_count") for name, s in stats.items()}


def probe_noop(timeout_s: float = 120.0) -> float:
    """Seconds from publishing a no-op task on the poll queue to its result: slot starvation probe."""
    import bench.baseline_tasks as bt
    from seedance_worker.wiring.app import ensure_app

    ensure_app()
    t0 = time.time()
    bt.noop.apply_async((None,), queue="seedance.poll").get(timeout=timeout_s)
    return time.time() - t0
