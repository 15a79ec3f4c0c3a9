"""``callback_url`` delivery: each transition's post is queued per task and sent by one thread per
task (so a task's posts arrive in order), retried for succeeded/failed, every attempt recorded.
"""

from __future__ import annotations

import collections
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass

from seedance_worker.testing.simulator.config import CallbackRecord, Shared


@dataclass
class CallbackJob:
    """One post to send: the body is rendered at the transition, not at delivery."""

    url: str
    task_id: str
    status: str
    body: bytes
    retry: bool


class Callbacks:
    """The per-task queues and the record of attempts (``records``, guarded by the shared lock)."""

    def __init__(self, shared: Shared) -> None:
        self._shared = shared
        self._queues: dict[str, collections.deque[CallbackJob]] = {}
        self.records: list[CallbackRecord] = []

    def dispatch(self, jobs: Iterable[CallbackJob]) -> None:
        """Queue the jobs; called after the lock is released, never under it."""
        start: list[str] = []
        with self._shared.lock:
            for job in jobs:
                q = self._queues.get(job.task_id)
                if q is None:
                    q = self._queues[job.task_id] = collections.deque()
                    start.append(job.task_id)
                q.append(job)
        for tid in start:
            threading.Thread(
                target=self._drain, args=(tid,), name=f"seedance-sim-cb-{tid}", daemon=True
            ).start()

    def _drain(self, task_id: str) -> None:
        while True:
            with self._shared.lock:
                q = self._queues.get(task_id)
                if not q or self._shared.stop.is_set():
                    self._queues.pop(task_id, None)
                    return
                job = q.popleft()
            self._deliver(job)

    def _deliver(self, job: CallbackJob) -> None:
        cfg = self._shared.config
        attempts = 1 + (max(0, cfg.callback_retries) if job.retry else 0)
        for attempt in range(1, attempts + 1):
            code: int | None = None
            error: str | None = None
            req = urllib.request.Request(
                job.url,
                data=job.body,
                method="POST",
                headers={"Content-Type": "application/json", "User-Agent": "ModelArk-Callback/simulator"},
            )
            try:
                with urllib.request.urlopen(req, timeout=cfg.callback_timeout_s) as resp:
                    code = int(resp.status)
                    resp.read()
            except urllib.error.HTTPError as e:
                code = int(e.code)
                e.close()
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
            with self._shared.lock:
                self.records.append(
                    CallbackRecord(job.url, job.task_id, job.status, attempt, code, error, time.time())
                )
            if code is not None and 200 <= code < 300:
                return
            if attempt < attempts and self._shared.stop.wait(cfg.callback_retry_interval_s):
                return
