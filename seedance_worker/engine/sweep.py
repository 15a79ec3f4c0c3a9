"""``seedance.sweep``: re-drive jobs whose lease ran out (a message lost with a killed worker).

Every job sits in the ``seedance:due`` zset with a lease deadline that each poll pushes forward. A
job still there past its deadline lost its message: a SIGKILL between BRPOP and kombu's unacked
bookkeeping, a crash between advancing the record and publishing, a Redis that lost its queue. The
sweeper claims such jobs atomically (so two sweepers never both re-drive one) and publishes a poll
with the *current* generation, under the chain's own Celery id; a late original then finds itself
stale. A job in hand-off gets its downstream chain re-fired from the stored Outcome.
"""

from __future__ import annotations

import json
import logging
import time

from celery import shared_task

from seedance_worker.engine.store import DUE, JOBS, get_store, job_key
from seedance_worker.outage import survive_redis_outage
from seedance_worker.settings import Settings, get_settings

log = logging.getLogger(__name__)

MAX_HANDOFF_FIRES = 5

# KEYS[1]=due KEYS[2]=jobs; ARGV: now, new_lease_at, limit, prefix
# -> flat list of task_id, state, gen, owner, handoff_fires, canvas
_CLAIM_OVERDUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[4] .. id
  local rec = redis.call('HMGET', key, 'state', 'gen', 'owner', 'handoff_fires', 'canvas')
  if not rec[1] or rec[1] == 'done' then
    redis.call('ZREM', KEYS[1], id)
    if not rec[1] then redis.call('ZREM', KEYS[2], id) end
  else
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    table.insert(out, id); table.insert(out, rec[1]); table.insert(out, rec[2] or '1')
    table.insert(out, rec[3] or ''); table.insert(out, rec[4] or '0'); table.insert(out, rec[5] or '')
  end
end
return out
"""


def run_sweep(settings: Settings | None = None, *, now: float | None = None, limit: int = 1000) -> int:
    """Re-drive every overdue job once; return how many were re-adopted."""
    from seedance_worker.engine.handoff import fire_handoff
    from seedance_worker.engine.poll import _lease_after, publish_poll

    settings = settings or get_settings()
    store = get_store(settings)
    now = time.time() if now is None else now
    # A lease past its deadline by less than the fleet's current lag is a message still waiting in
    # a backlogged queue, not a lost one: re-driving it would only add copies to the backlog. (A
    # restored copy can report a lag near the visibility timeout: the cap keeps that from hiding
    # lost messages for long.)
    lag_s = min(store.fleet_lag_s(), settings.visibility_timeout_s / 2)
    lease = _lease_after(settings, lag_s, now)  # a re-driven poll waits in the same backlog
    script = store.r.register_script(_CLAIM_OVERDUE)
    flat = script(keys=[DUE, JOBS], args=[now - lag_s, lease, limit, job_key("")])
    count = 0
    for i in range(0, len(flat), 6):
        task_id, state, gen, owner, fires, canvas = flat[i : i + 6]
        if state == "polling":
            log.warning("sweep %s: lease ran out at gen=%s; re-driving the poll", task_id, gen)
            publish_poll(
                task_id,
                gen=int(gen),
                countdown_s=0,
                celery_id=owner,
                settings=settings,
                canvas=json.loads(canvas) if canvas else None,
            )
            count += 1
        elif state == "handoff":
            record = store.get(task_id)
            if record is None or not record.outcome:
                continue
            if int(fires) >= MAX_HANDOFF_FIRES:
                log.error("sweep %s: hand-off fired %s times without completing; giving up", task_id, fires)
                store.complete(task_id, ttl_s=settings.job_ttl_s, fields={"handoff": "gave_up"})
                continue
            log.warning("sweep %s: hand-off lease ran out; re-firing the downstream chain", task_id)
            fire_handoff(record, record.outcome, settings)
            count += 1
    return count


@shared_task(name="seedance.sweep", ignore_result=True)
@survive_redis_outage
def sweep() -> int:
    """Periodic (Celery beat): re-adopt jobs whose lease ran out."""
    return run_sweep()
