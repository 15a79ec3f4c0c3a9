"""Publish parked polls when they come due.

A poll whose next wait is longer than ``SEEDANCE_POLL_PARK_AFTER_S`` is not sent as a countdown
message: on the Redis transport every countdown message is pulled at once by some worker and held
in its memory, unacked, for the whole wait (6-12 KB of RSS each, stuck until the visibility timeout
if that worker is SIGKILLed, until the visibility timeout). It is parked in the
``seedance:parked`` zset instead (score = due time). Every worker's main process runs a small
dispatcher thread that claims the parked polls due within the next tick (one atomic Lua script, so
each is published by exactly one worker) and publishes them with the remaining few hundred
milliseconds as countdown, so they still start on time. A dispatcher that dies between claiming
and publishing costs nothing: the job's lease runs out and the sweeper re-drives it.

With batched status (``SEEDANCE_STATUS_SOURCE=batch``, batch.py) the tick runs a round instead:
the parked jobs now due are read with list calls, and only a job that ended gets a message.

The same thread runs the sweeper (sweep.py) every ``SEEDANCE_SWEEP_INTERVAL_S``, so recovery of a
killed worker's chains needs neither beat nor a free slot behind a backlog of poll messages: the
beat-run ``seedance.sweep`` task is the backstop, not the only sweeper. The claim is one atomic
script, so any number of workers sweeping at once re-drive each lost job once.

With admission control on, each tick also sends an account's admitter when submissions wait with a
slot free and no admitter runs or is on its way (a lost message, a dead admitter), and every sweep
frees the slots whose release was lost (engine/admission.py).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from seedance_worker.engine import admission
from seedance_worker.engine.batch import run_round
from seedance_worker.engine.jobs import publish_poll
from seedance_worker.engine.schedule import next_tick_s
from seedance_worker.engine.store import get_store
from seedance_worker.engine.sweep import run_sweep
from seedance_worker.settings import Settings, get_settings

log = logging.getLogger(__name__)

BATCH = 500


def dispatch_due(settings: Settings | None = None, *, horizon_s: float | None = None) -> int:
    """Publish every parked poll due within ``horizon_s``; return how many were published."""
    settings = settings or get_settings()
    store = get_store(settings)
    horizon = settings.dispatch_interval_s if horizon_s is None else horizon_s
    total = 0
    while True:
        due = store.claim_due(horizon=time.time() + horizon, limit=BATCH, grace_s=settings.poll_lease_grace_s)
        for job in due:
            publish_poll(
                job.task_id,
                gen=job.gen,
                countdown_s=max(0.0, job.due_at - time.time()),
                celery_id=job.owner,
                settings=settings,
                canvas=job.canvas,
                trace=job.trace,
            )
        total += len(due)
        # The claim drops jobs no longer polling: a short answer does not prove nothing more is due,
        # so only a batch of fewer than half the limit ends the loop (as before).
        if len(due) < BATCH // 2:
            return total


class Dispatcher:
    """The thread in a worker's main process: ``dispatch_due`` every tick, ``run_sweep`` every
    sweep interval."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="seedance-dispatch", daemon=True)

    def start(self) -> Dispatcher:
        self.thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout_s)

    def _loop(self) -> None:
        interval = min(self.settings.dispatch_interval_s, self.settings.sweep_interval_s)
        batched = self.settings.status_source == "batch"
        dispatching = batched or self.settings.poll_park_after_s > 0
        admitting = bool(admission.admitting_accounts(self.settings))
        next_sweep = time.monotonic() + self.settings.sweep_interval_s
        round_s = self.settings.batch_round_s if batched else None
        while not self.stop_event.wait(next_tick_s(time.time(), interval, round_s)):
            # A Redis blip must not kill the thread: each step logs and the next tick retries.
            if dispatching:
                try:
                    if batched:
                        run_round(self.settings)
                    else:
                        dispatch_due(self.settings, horizon_s=interval * 2)
                except Exception as exc:
                    log.warning("dispatch: %s: %s", type(exc).__name__, exc)
            sweeping = time.monotonic() >= next_sweep
            if sweeping:
                next_sweep = time.monotonic() + self.settings.sweep_interval_s
                try:
                    run_sweep(self.settings)
                except Exception as exc:
                    log.warning("sweep: %s: %s", type(exc).__name__, exc)
            if admitting:
                try:
                    admission.tick(self.settings, reconcile=sweeping)
                except Exception as exc:
                    log.warning("admission: %s: %s", type(exc).__name__, exc)


_dispatcher: Dispatcher | None = None


def start_dispatcher(**_: Any) -> None:
    global _dispatcher
    if _dispatcher is None:
        _dispatcher = Dispatcher().start()


def stop_dispatcher(**_: Any) -> None:
    global _dispatcher
    if _dispatcher is not None:
        _dispatcher.stop()
        _dispatcher = None
