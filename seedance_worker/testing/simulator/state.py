"""The task store and its state machine: tasks walk their script stage by stage, expire at their
deadline, wait for a running slot under ``max_running``, and are purged after retention.

Transitions are evaluated lazily (on each request and by the ticker); each one queues its callback
post, which is sent only once the lock is released.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from seedance_worker.testing.simulator.callbacks import CallbackJob, Callbacks
from seedance_worker.testing.simulator.config import TERMINAL_STATUSES, Shared
from seedance_worker.testing.simulator.task import Task, echo_fields, render
from seedance_worker.testing.simulator.urls import UrlSigner
from seedance_worker.testing.simulator.validate import is_int
from seedance_worker.testing.simulator.wire import dumps, new_request_id

T = TypeVar("T")
Jobs = list[CallbackJob]
Script = list[tuple[str, float | None]]
_UTC8 = timezone(timedelta(hours=8))
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


class TaskBook:
    """Live tasks (``tasks``), the not-yet-terminal subset (``active``) and deleted ones kept for
    their files (``deleted``).  Methods ending in ``_locked`` expect the shared lock held."""

    def __init__(
        self, shared: Shared, signer: UrlSigner, callbacks: Callbacks, on_purged: Callable[[str], None]
    ) -> None:
        self._shared = shared
        self._signer = signer
        self._callbacks = callbacks
        self._on_purged = on_purged
        self.tasks: dict[str, Task] = {}
        self.active: dict[str, Task] = {}
        self.deleted: dict[str, Task] = {}
        self._seq = 0
        seed = shared.config.seed
        self._id_rng = random.Random(None if seed is None else seed + 1)
        self._last_purge = -math.inf
        self._next_due = -math.inf

    # ---- running an operation --------------------------------------------------------------------

    def run(self, fn: Callable[[float, Jobs], T], *, purge: bool = True, force_purge: bool = False) -> T:
        """``fn(now, jobs)`` under the lock, after every transition due by now; then the posts go out."""
        jobs: Jobs = []
        try:
            with self._shared.lock:
                now = self._shared.clock()
                self._advance_all_locked(now, jobs)
                if purge or force_purge:
                    self._purge_locked(now, force=force_purge)
                return fn(now, jobs)
        finally:
            self._callbacks.dispatch(jobs)

    def ticker(self) -> None:
        """Evaluate transitions in the background, so callbacks go out even when nobody polls."""
        while not self._shared.stop.wait(self._shared.config.ticker_interval_s):
            self.run(lambda now, jobs: None)

    def reconsider(self) -> None:
        """Look at every active task on the next evaluation (the config that timed them changed)."""
        self._next_due = -math.inf

    # ---- lookups and the API's operations --------------------------------------------------------

    def find_locked(self, task_id: str, *, deleted_too: bool = False) -> Task | None:
        t = self.tasks.get(task_id)
        if t is None and deleted_too:
            t = self.deleted.get(task_id)
        return t

    def queued_count_locked(self) -> int:
        return sum(1 for t in self.active.values() if t.status == "queued")

    def body_locked(self, t: Task, now: float) -> dict[str, Any]:
        """The task object a GET or list answers; URLs revoked by a first download are renewed here."""
        if t.needs_fresh_urls:
            self._signer.issue(t, now)
        return render(t)

    def cancel_locked(self, t: Task, now: float, jobs: Jobs) -> None:
        t.frozen = True
        self.transition_locked(t, t.stage, "cancelled", now, jobs)

    def delete_locked(self, t: Task, now: float) -> None:
        t.deleted_at = now
        del self.tasks[t.id]
        self.active.pop(t.id, None)
        self.deleted[t.id] = t

    def new_task_locked(
        self,
        now: float,
        req: dict[str, Any],
        script: Script,
        *,
        fate: str,
        usage_tokens: int | None,
        error_code: str | None,
        error_message: str | None,
        task_id: str | None,
        overrides: dict[str, Any],
        response_extra: dict[str, Any],
        jobs: Jobs,
    ) -> Task:
        cfg = self._shared.config
        if task_id is None:
            task_id = self._new_id_locked(now, req)
        model = str(req["model"])
        echo, tokens = echo_fields(task_id, model, req)
        self._seq += 1
        task = Task(
            id=task_id,
            seq=self._seq,
            model=model,
            request=req,
            echo=echo,
            script=script,
            fate=fate,
            created_at=now,
            usage_tokens=tokens if usage_tokens is None else usage_tokens,
            callback_url=req.get("callback_url"),
            return_last_frame=bool(req.get("return_last_frame")),
            error_code=error_code or cfg.fail_code,
            error_message=error_message or cfg.fail_message,
            overrides=overrides,
            response_extra=response_extra,
        )
        self.deleted.pop(task_id, None)
        self.tasks[task_id] = task
        task.stage_started = now
        self.transition_locked(task, 0, script[0][0], now, jobs)
        if task.status not in TERMINAL_STATUSES:
            self.active[task_id] = task
        self._next_due = min(
            self._next_due, self._advance_locked(task, now, jobs, self._running_counter_locked())
        )
        return task

    def _new_id_locked(self, now: float, req: dict[str, Any]) -> str:
        prefix = "cgt-batch-" if req.get("service_tier") == "flex" else "cgt-"
        stamp = datetime.fromtimestamp(now, _UTC8).strftime("%Y%m%d%H%M%S")
        while True:
            suffix = "".join(self._id_rng.choice(_ID_ALPHABET) for _ in range(5))
            task_id = f"{prefix}{stamp}-{suffix}"
            if task_id not in self.tasks and task_id not in self.deleted:
                return task_id

    # ---- the state machine -----------------------------------------------------------------------

    def _deadline(self, t: Task) -> float:
        eea = t.request.get("execution_expires_after", 172800)
        if not is_int(eea):
            eea = 172800
        return t.created_at + float(eea) * self._shared.config.time_scale

    def transition_locked(self, t: Task, stage: int, status: str, at: float, jobs: Jobs) -> None:
        t.stage = stage
        t.stage_started = at
        t.status = status
        t.updated_at = at
        t.history.append((status, at))
        if status == "failed" and t.error is None:
            t.error = {"code": t.error_code, "message": f"{t.error_message} Request id: {new_request_id()}"}
        if status == "succeeded" and not t.urls:
            self._signer.issue(t, at)
        if status in TERMINAL_STATUSES:
            t.terminal_at = at
            self.active.pop(t.id, None)
        if t.callback_url and status != "cancelled":
            jobs.append(
                CallbackJob(
                    url=t.callback_url,
                    task_id=t.id,
                    status=status,
                    body=dumps(render(t)),
                    retry=status in ("succeeded", "failed"),
                )
            )

    def _advance_locked(self, t: Task, now: float, jobs: Jobs, running: list[int] | None) -> float:
        """Apply every transition due by ``now``; return when this task next needs a look."""
        cfg = self._shared.config
        deadline = self._deadline(t)
        while not t.frozen:
            dur = t.script[t.stage][1] if t.stage + 1 < len(t.script) else None
            next_at = math.inf if dur is None else t.stage_started + dur
            if t.status not in TERMINAL_STATUSES and deadline <= now and deadline <= next_at:
                if running is not None and t.status == "running":
                    running[0] -= 1
                t.frozen = True
                self.transition_locked(t, t.stage, "expired", max(deadline, t.stage_started), jobs)
                break
            if next_at > now:
                break
            nxt = t.script[t.stage + 1][0]
            if (
                running is not None
                and cfg.max_running is not None
                and nxt == "running"
                and t.status != "running"
            ):
                if running[0] >= cfg.max_running:
                    t.waiting_slot = True
                    return -math.inf  # re-check on every evaluation until a slot frees
                running[0] += 1
                if t.waiting_slot:
                    next_at = now
                    t.waiting_slot = False
            elif running is not None and t.status == "running" and nxt != "running":
                running[0] -= 1
            self.transition_locked(t, t.stage + 1, nxt, next_at, jobs)
        if t.frozen or t.status in TERMINAL_STATUSES:
            return math.inf
        dur = t.script[t.stage][1] if t.stage + 1 < len(t.script) else None
        return min(deadline, math.inf if dur is None else t.stage_started + dur)

    def _running_counter_locked(self) -> list[int] | None:
        if self._shared.config.max_running is None:
            return None
        return [sum(1 for t in self.active.values() if t.status == "running")]

    def _advance_all_locked(self, now: float, jobs: Jobs) -> None:
        # Cheap when nothing is due: most requests skip the walk over active tasks entirely.
        if not self.active or now < self._next_due:
            return
        running = self._running_counter_locked()
        next_due = math.inf
        for t in list(self.active.values()):
            next_due = min(next_due, self._advance_locked(t, now, jobs, running))
        self._next_due = next_due

    def _purge_locked(self, now: float, force: bool = False) -> None:
        if not force and now - self._last_purge < 1.0:
            return
        self._last_purge = now
        cfg = self._shared.config
        for store in (self.tasks, self.deleted):
            gone = [
                tid
                for tid, t in store.items()
                if now >= t.created_at + cfg.retention_s
                or (t.status == "cancelled" and now >= t.updated_at + cfg.cancelled_retention_s)
            ]
            for tid in gone:
                store.pop(tid, None)
                self.active.pop(tid, None)
                self._on_purged(tid)
