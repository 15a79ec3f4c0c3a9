"""``seedance.sweep``: re-drive jobs whose lease ran out (a message lost with a killed worker).

Every job in flight sits in the ``seedance:due`` zset with a lease deadline that each poll pushes
forward, or in ``seedance:parked`` at its due time (its lease: that time plus
``SEEDANCE_POLL_LEASE_GRACE_S``). A job still there past its deadline lost its message: a SIGKILL
between BRPOP and kombu's unacked bookkeeping, a crash between advancing the record and publishing,
a Redis that lost its queue, a dispatcher that died between claiming and publishing. The
sweeper claims such jobs atomically (so two sweepers never both re-drive one) and publishes a poll
with the *current* generation, under the chain's own Celery id; a late original then finds itself
stale. A job in hand-off gets its downstream chain re-fired from the stored Outcome (a hand-off
poll under the chain's own id: handoff.refire).

Each sweep also takes one step of a rolling scan of ``seedance:jobs`` that drops the ids of records
that have expired (store.trim_jobs_index), so the index does not keep every job ever tracked.
"""

from __future__ import annotations

import logging
import time

from celery import shared_task

from seedance_worker.engine.handoff import refire
from seedance_worker.engine.jobs import publish_poll
from seedance_worker.engine.schedule import waiting_lease
from seedance_worker.engine.store import JobStore, get_store
from seedance_worker.engine.store_rows import Overdue
from seedance_worker.outage import survive_redis_outage
from seedance_worker.settings import Settings, get_settings

log = logging.getLogger(__name__)

MAX_HANDOFF_FIRES = 5


def run_sweep(settings: Settings | None = None, *, now: float | None = None, limit: int = 1000) -> int:
    """Re-drive every overdue job once; return how many were re-adopted."""
    settings = settings or get_settings()
    store = get_store(settings)
    now = time.time() if now is None else now
    # A lease past its deadline by less than the fleet's current lag is a message still waiting in
    # a backlogged queue, not a lost one: re-driving it would only add copies to the backlog. (A
    # restored copy can report a lag near the visibility timeout: the cap keeps that from hiding
    # lost messages for long.)
    lag_s = min(store.fleet_lag_s(), settings.visibility_timeout_s / 2)
    lease = waiting_lease(settings, lag_s, now)  # a re-driven poll waits in the same backlog
    count = 0
    grace_s = settings.poll_lease_grace_s  # a parked job's lease: its due time + this
    for job in store.claim_overdue(before=now - lag_s, lease_at=lease, grace_s=grace_s, limit=limit):
        if job.state == "polling":
            log.warning("sweep %s: lease ran out at gen=%s; re-driving the poll", job.task_id, job.gen)
            publish_poll(
                job.task_id,
                gen=job.gen,
                countdown_s=0,
                celery_id=job.owner,
                settings=settings,
                canvas=job.canvas,
                trace=job.trace,
            )
            count += 1
        elif job.state == "handoff" and refire_handoff(job, store, settings):
            count += 1
    # Last, so a slow or failing trim never delays a re-drive.
    store.trim_jobs_index()
    return count


def refire_handoff(job: Overdue, store: JobStore, settings: Settings) -> bool:
    """Fire a lost hand-off chain again from the stored Outcome; after MAX_HANDOFF_FIRES fires, its
    salvage (charge and notify alone, the error recorded); after that, give up."""
    record = store.get(job.task_id)
    if record is None or not record.outcome:
        return False
    if job.handoff_fires > MAX_HANDOFF_FIRES:
        log.error("sweep %s: the salvage chain did not complete either (%s fires); giving up",
                  job.task_id, job.handoff_fires)  # fmt: skip
        store.complete(job.task_id, ttl_s=settings.job_ttl_s, fields={"handoff": "gave_up"})
        return False
    if job.handoff_fires == MAX_HANDOFF_FIRES:
        log.error("sweep %s: hand-off fired %s times without completing; charging and notifying alone",
                  job.task_id, job.handoff_fires)  # fmt: skip
        refire(record, settings, salvage=True)
        return True
    log.warning("sweep %s: hand-off lease ran out; re-firing the downstream chain", job.task_id)
    refire(record, settings)
    return True


@shared_task(name="seedance.sweep", ignore_result=True)
@survive_redis_outage
def sweep() -> int:
    """Periodic (Celery beat): re-adopt jobs whose lease ran out."""
    return run_sweep()
