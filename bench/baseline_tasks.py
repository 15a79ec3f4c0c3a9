"""Baseline tasks and measurement hooks, loaded into the same workers as the plugin.

Start workers with ``--include bench.baseline_tasks``: the baselines then run on the same broker,
with the same worker settings (prefork, acks_late, prefetch 1, same queue) as ``seedance.poll``.

Baselines
  (a)  ``bench.noop_resched``  Celery's own ceiling: a no-op task that re-publishes itself with
       ``signature_from_request(...).apply_async(countdown=c)`` + ``raise Ignore()`` (the same
       mechanics as seedance.poll) until ``until``, then returns.
  (a') ``bench.get_resched``   the same plus one plain ``requests`` GET of the remote task: the
       cheapest possible countdown *poller* (no job record, no fencing, no schedule).
  (b)  ``bench.blocking_poll`` what every public Celery example does: loop GET + sleep, holding the
       worker slot until the remote task is terminal.
  (c)  fixed-interval polling is the plugin itself with min = max = queued = running interval.

Hooks (cheap: one pipelined round trip per task run, paid by the plugin and the baselines alike)
  * ``task_prerun``: INCR ``bench:runs:<task name>``; with ``BENCH_LATENESS=1`` RPUSH
    ``"<now> <now - options.due>"`` of every seedance.poll run onto ``bench:lateness``; when the
    task carries the hand-off header ``seedance_terminal_at`` RPUSH ``"<now> <delay>"`` onto
    ``bench:handoff`` (figure 4); with ``BENCH_DOWNSTREAM=1`` also ``"<now> <task id> <terminal_at>"``
    onto ``bench:downstream`` (budget.py: remote end -> downstream start per task).
  * ``worker_ready``: SET ``bench:ready:<main pid>`` so the harness knows the worker consumes.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
import requests
from celery import shared_task
from celery.exceptions import Ignore
from celery.signals import task_prerun, worker_ready

_clients: dict[int, redis.Redis] = {}
_sessions: dict[int, requests.Session] = {}
LATENESS = os.environ.get("BENCH_LATENESS") == "1"
DOWNSTREAM = os.environ.get("BENCH_DOWNSTREAM") == "1"
TERMINAL = {"succeeded", "failed", "expired", "cancelled"}


def _r() -> redis.Redis:
    pid = os.getpid()
    c = _clients.get(pid)
    if c is None:
        c = redis.Redis.from_url(os.environ["SEEDANCE_REDIS_URL"], decode_responses=True)
        _clients[pid] = c
    return c


def _session() -> requests.Session:
    pid = os.getpid()
    s = _sessions.get(pid)
    if s is None:
        s = requests.Session()
        s.headers["Authorization"] = "Bearer " + os.environ.get("SEEDANCE_API_KEY", "bench")
        _sessions[pid] = s
    return s


def _get(base_url: str, task_id: str) -> dict[str, Any]:
    resp = _session().get(f"{base_url}/contents/generations/tasks/{task_id}", timeout=(5, 30))
    body: dict[str, Any] = resp.json()
    return body


@task_prerun.connect
def _on_prerun(task: Any = None, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    now = time.time()
    try:
        pipe = _r().pipeline(transaction=False)
        pipe.incr("bench:runs:" + task.name)
        if LATENESS and task.name == "seedance.poll":
            due = ((kwargs or {}).get("options") or {}).get("due")
            if due is not None:
                pipe.rpush("bench:lateness", f"{now:.4f} {now - float(due):.4f}")
        terminal_at = getattr(task.request, "seedance_terminal_at", None)
        if terminal_at is not None:
            pipe.rpush("bench:handoff", f"{now:.4f} {now - float(terminal_at):.5f}")
            if DOWNSTREAM and args:
                outcome = args[0] if isinstance(args[0], dict) else {}
                pipe.rpush("bench:downstream", f"{now:.4f} {outcome.get('task_id')} {float(terminal_at):.4f}")
        pipe.execute()
    except Exception:  # a measurement hook must never break a task
        pass


@worker_ready.connect
def _on_ready(**_: Any) -> None:
    _r().set(f"bench:ready:{os.getpid()}", time.time())


@shared_task(bind=True, name="bench.noop_resched", acks_late=True, reject_on_worker_lost=True)
def noop_resched(self: Any, until: float, countdown: float) -> int:
    """(a): reschedule itself, same mechanics as seedance.poll, until ``until``."""
    if time.time() < until:
        self.signature_from_request(self.request, (until, countdown), {}, countdown=countdown).apply_async()
        raise Ignore()
    return 0


@shared_task(bind=True, name="bench.get_resched", acks_late=True, reject_on_worker_lost=True)
def get_resched(self: Any, task_id: str, base_url: str, until: float, countdown: float) -> int:
    """(a'): one plain GET, then reschedule like (a)."""
    body = _get(base_url, task_id)
    if body.get("status") not in TERMINAL and time.time() < until:
        self.signature_from_request(
            self.request, (task_id, base_url, until, countdown), {}, countdown=countdown
        ).apply_async()
        raise Ignore()
    return 0


@shared_task(name="bench.blocking_poll", acks_late=True, reject_on_worker_lost=True)
def blocking_poll(task_id: str, base_url: str, interval: float) -> dict[str, Any]:
    """(b): the textbook poller: GET + sleep in a loop, holding the slot until terminal."""
    polls = 0
    while True:
        body = _get(base_url, task_id)
        polls += 1
        if body.get("status") in TERMINAL:
            _r().rpush("bench:blocking_done", f"{time.time():.4f} {task_id} {polls}")
            return {"task_id": task_id, "status": body.get("status"), "polls": polls}
        time.sleep(interval)


@shared_task(name="bench.noop", acks_late=True)
def noop(outcome: Any = None, *args: Any, **kwargs: Any) -> Any:
    """A downstream step that does nothing (hand-off chains in throughput runs)."""
    return outcome
