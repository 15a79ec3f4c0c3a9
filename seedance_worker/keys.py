"""Every Redis key name seedance-worker uses, in one place (all under ``seedance:``).

The names of a job in flight are a contract with the code that wrote them: a rolling upgrade
finds its records under these same names (tests/e2e/test_upgrade.py replays state written by the
single-folder layout). Who owns what:

- job state (``engine/store.py``, the only reader and writer; ``engine/record.py`` says what a
  record holds). A job has its hash and exactly one entry in one of the three sorted sets::

    seedance:job:{task_id}   hash  the job record, fenced by its generation ``gen``
    seedance:due             zset  task_id -> lease deadline (a countdown message waiting, a poll
                                   running, a hand-off); the sweeper re-drives what is overdue
    seedance:parked          zset  task_id -> due time of a wait parked instead of a countdown (every
                                   wait, with batched status); its lease is that time + the grace
    seedance:jobs            zset  task_id -> tracked_at of a finished record, for listing
    seedance:lag             hash  lag_s, at: how late polls have been starting lately

- submit idempotency (``submit.py``): ``seedance:idem:{key}`` hash (``seedance:idem@{account}:{key}``
  for a named account)
- admission control (``engine/admission.py``), per account (``default`` for SEEDANCE_API_KEY's)::

    seedance:admit:{account}:slots    zset  remote id (or ``key:{idempotency key}`` while its create
                                            is in flight) -> when it took the slot: the account's
                                            queued tasks created through admission
    seedance:admit:{account}:fifo     list  idempotency keys of waiting submissions, oldest first
    seedance:admit:{account}:entries  hash  idempotency key -> the waiting submission (JSON)
    seedance:admit:{account}:lock     string  token of the one admitter creating its tasks
    seedance:admit:{account}:hold     string  set while a 429 on create holds the queue
    seedance:admit:{account}:kick     string  set while an admit message is on its way

- the request limiter (``ratelimit.py``): ``seedance:rl:{account}:tat`` / ``:cooldown`` strings
- the ledger (``steps/charge.py``, ``steps/ledger.py``): ``seedance:ledger`` list,
  ``seedance:ledger:by_task`` hash; reservations ``seedance:ledger:reserved`` hash and
  ``seedance:ledger:reserved_at`` zset
- video records (``steps/download.py``): ``seedance:video:{task_id}`` string
- S3 upload leases (``steps/storage_s3.py``): ``seedance:upload:{bucket}/{key}`` string, the token
  of the one attempt uploading that object (the flock of the local partial file, for S3)
- webhook deliveries (``steps/notify.py``): ``seedance:delivery:{webhook_id}`` hash
- callback de-duplication (``intake.py``): in the job hash itself (``hint_seen``, ``hint_gen``), so a
  callback for an untracked id writes nothing (before: ``seedance:intake:...`` strings, 24 h TTL)

How long each lives (nothing that grows with jobs is kept for good; Redis runs ``noeviction``, so a
key that only grew would end in refused writes, the broker's included):

- ``job:{id}``: no TTL while polling or handing off (in flight: never expired, never trimmed);
  ``SEEDANCE_JOB_TTL_S`` (7 days) once its hand-off completed (``complete.lua``).
- ``due`` / ``parked``: an entry moves between the two with the job (each script leaves one) and
  leaves at ``complete`` (or when the sweeper or the dispatcher finds the record done or gone).
- ``jobs``: an id enters at ``complete`` and leaves when its record is gone: the sweeper's rolling
  scan (``trim_index.lua``, a step per sweep, which also drops ids of jobs still in flight that the
  layout before this one indexed here from registration), and ``all()`` for the ids it lists.
- ``lag``, ``rl:*``: one key each (per account); the limiter's keys expire by themselves (PX).
- ``list_off:{account}``: one per account whose API refused a list call, for an hour (EX).
- ``admit:{account}:slots``: an id leaves when its job is seen running or ended (poll, batched
  round, cancel), or when the dispatcher's reconcile finds its job no longer queued or gone; a
  ``key:`` placeholder when its create settled (or, orphaned by a crashed submitter, after the
  HTTP timeouts plus 30 s). At most the cap plus the creates in flight.
- ``admit:{account}:fifo`` / ``:entries``: a submission leaves when its task was created and
  tracked, or its create failed for good (the handle then holds the error); no TTL: a waiting
  submission is never dropped by time.
- ``admit:{account}:lock``: the HTTP timeouts plus 30 s (PX), renewed by every create;
  ``:hold``: the 429's Retry-After, or 5 s (PX); ``:kick``: 30 s (PX), deleted when the admitter
  starts.
- ``idem:{key}``: 8 days from the claim (the API keeps a task 7 days).
- ``ledger`` and ``ledger:by_task``: trimmed oldest first once older than
  ``SEEDANCE_LEDGER_RETENTION_DAYS`` (40, at least 8), never while the task's job record exists.
- ``ledger:reserved`` and ``ledger:reserved_at``: an entry leaves when the job's charge settles it
  (or finds nothing to charge); one never settled goes like an old ledger entry.
- ``video:{id}``: ``SEEDANCE_JOB_TTL_S`` from the download.
- ``upload:{bucket}/{key}``: ``SEEDANCE_DOWNLOAD_S3_LEASE_S`` (PX), renewed while the upload runs.
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
LEDGER_RESERVED = PREFIX + "ledger:reserved"
LEDGER_RESERVED_AT = PREFIX + "ledger:reserved_at"
RATE_LIMIT_PREFIX = PREFIX + "rl:"


def job(task_id: str) -> str:
    return JOB_PREFIX + task_id


def idempotency(key: str, account: str | None = None) -> str:
    """A submit key is the account's own: the same key on two accounts makes two tasks. (No
    account name holds ':', so ``idem@{account}:`` never meets a default-account key.)"""
    if account is None:
        return f"{PREFIX}idem:{key}"
    return f"{PREFIX}idem@{account}:{key}"


def video(task_id: str) -> str:
    return f"{PREFIX}video:{task_id}"


def upload_lease(bucket: str, key: str) -> str:
    return f"{PREFIX}upload:{bucket}/{key}"


def delivery(webhook_id: str) -> str:
    return f"{PREFIX}delivery:{webhook_id}"


def list_off(account: str) -> str:
    """Set (with a TTL) while an account's API refuses list calls: its jobs are polled by GET."""
    return f"{PREFIX}list_off:{account}"


def list_cap(account: str) -> str:
    """The GCRA of an account's list calls (SEEDANCE_BATCH_LIST_RPS); expires by itself (PX)."""
    return f"{RATE_LIMIT_PREFIX}{account}:list"


def admission(account: str | None) -> tuple[str, str, str, str, str, str]:
    """(slots, fifo, entries, lock, hold, kick) of one account's admission control (None: the
    default account, spelled ``default``, a name SEEDANCE_ACCOUNTS cannot use)."""
    base = f"{PREFIX}admit:{account or 'default'}:"
    return (base + "slots", base + "fifo", base + "entries", base + "lock", base + "hold", base + "kick")


def rate_limit(account: str) -> tuple[str, str]:
    """(tat, cooldown) of one account's limiter; ``account`` is already a hash, never a secret."""
    return f"{RATE_LIMIT_PREFIX}{account}:tat", f"{RATE_LIMIT_PREFIX}{account}:cooldown"
