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

How long each lives (nothing that grows with jobs is kept for good; Redis runs ``noeviction``, so a
key that only grew would end in refused writes, the broker's included):

- ``job:{id}``: no TTL while polling or handing off (in flight: never expired, never trimmed);
  ``SEEDANCE_JOB_TTL_S`` (7 days) once its hand-off completed (``complete.lua``).
- ``jobs``: an id leaves when its record is gone: the sweeper's rolling scan
  (``trim_index.lua``, a step per sweep), ``all()`` for the ids it lists, ``claim_overdue``.
- ``due``: an entry leaves at ``complete`` (or when the sweeper finds the record done or gone).
- ``parked``: an entry leaves when the dispatcher claims it (at its due time) or the job advances.
- ``lag``, ``rl:*``: one key each (per account); the limiter's keys expire by themselves (PX).
- ``idem:{key}``: 8 days from the claim (the API keeps a task 7 days).
- ``ledger`` and ``ledger:by_task``: trimmed oldest first once older than
  ``SEEDANCE_LEDGER_RETENTION_DAYS`` (40, at least 8), never while the task's job record exists.
- ``video:{id}``: ``SEEDANCE_JOB_TTL_S`` from the download.
- ``delivery:{webhook_id}``: renewed by every write, for max(``SEEDANCE_JOB_TTL_S``, 2 x
  ``SEEDANCE_NOTIFY_RETRY_FOR_S``, 8 days).
- callback de-duplication: fields of the job hash, gone with it.
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
