"""Every Redis key name seedance-worker uses, in one place (all under ``seedance:``).

The names of a job in flight are a contract with the code that wrote them: a rolling upgrade
finds its records under these same names (tests/e2e/test_upgrade.py replays state written by the
single-folder layout). Who owns what:

- job state (``engine/store.py``, the only reader and writer)::

    seedance:job:{task_id}   hash  the job record, fenced by its generation ``gen``
    seedance:jobs            zset  task_id -> tracked_at, for listing
    seedance:due             zset  task_id -> lease deadline; the sweeper re-drives what is overdue
    seedance:parked          zset  task_id -> due time of a long wait parked instead of a countdown
    seedance:lag             hash  lag_s, at: how late polls have been starting lately

- submit idempotency (``submit.py``): ``seedance:idem:{key}`` hash
- the request limiter (``ratelimit.py``): ``seedance:rl:{account}:tat`` / ``:cooldown`` strings
- the ledger (``steps/charge.py``): ``seedance:ledger`` list, ``seedance:ledger:by_task`` hash
- video records (``steps/download.py``): ``seedance:video:{task_id}`` string
- webhook deliveries (``steps/notify.py``): ``seedance:delivery:{webhook_id}`` hash
- callback de-duplication (``intake.py``): in the job hash itself (``hint_seen``, ``hint_gen``), so a
  callback for an untracked id writes nothing (before: ``seedance:intake:...`` strings, 24 h TTL)
"""

from __future__ import annotations

PREFIX = "seedance:"

JOB_PREFIX = PREFIX + "job:"
JOBS = PREFIX + "jobs"
DUE = PREFIX + "due"
PARKED = PREFIX + "parked"
LAG = PREFIX + "lag"

LEDGER = PREFIX + "ledger"
LEDGER_BY_TASK = PREFIX + "ledger:by_task"
RATE_LIMIT_PREFIX = PREFIX + "rl:"


def job(task_id: str) -> str:
    return JOB_PREFIX + task_id


def idempotency(key: str) -> str:
    return f"{PREFIX}idem:{key}"


def video(task_id: str) -> str:
    return f"{PREFIX}video:{task_id}"


def delivery(webhook_id: str) -> str:
    return f"{PREFIX}delivery:{webhook_id}"


def rate_limit(account: str) -> tuple[str, str]:
    """(tat, cooldown) of one account's limiter; ``account`` is already a hash, never a secret."""
    return f"{RATE_LIMIT_PREFIX}{account}:tat", f"{RATE_LIMIT_PREFIX}{account}:cooldown"
