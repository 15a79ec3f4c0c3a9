"""``seedance.notify``: POST the Outcome to ``SEEDANCE_NOTIFY_URL`` as a Standard Webhook.

Each delivery is signed with ``SEEDANCE_NOTIFY_SECRET`` (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256>``). The ``webhook-id`` is derived from the remote task
id and its status, so every attempt, retry and redelivery of one notification carries the same id
and a receiver can drop repeats.

The delivery state lives in Redis, one hash per webhook id::

    seedance:delivery:{webhook_id}  hash  first_at, attempts, last_status_code, last_error,
                                          delivered=1, status_code, delivered_at, final_error,
                                          sending_until, in_doubt

``attempts`` is counted by a Lua script before every POST, together with the budget check
(``SEEDANCE_NOTIFY_MAX_ATTEMPTS`` attempts within ``SEEDANCE_NOTIFY_RETRY_FOR_S`` of the first one),
so the count is exact across retries and redeliveries. One POST is over within
``SEEDANCE_NOTIFY_TIMEOUT_S`` of wall-clock time, however slowly the receiver answers (its socket
is shut at the deadline, post_deadline.py); the attempt's claim lasts that plus ``CLAIM_MARGIN_S``,
so a second sender never starts while the first is still sending. After a 2xx the hash is marked delivered and
no later run sends it again. A non-2xx answer or a network error is retried with exponential backoff
and jitter through ``self.retry`` (the chain is kept); when the budget is spent the failure is
recorded in ``outcome.notification`` and the task returns normally, so the chain completes.

Delivery is exactly once except in one window no sender can close: a SIGKILL after the receiver
answered 2xx and before the mark is written. The next run finds the attempt's claim expired but
never released, counts it in ``in_doubt``, logs it and sends again (never losing a notification
wins); the repeat has the same ``webhook-id``, which receivers must use to drop duplicates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import redis
import requests
from celery import Task, shared_task
from standardwebhooks.webhooks import Webhook

from seedance_worker import connections, keys, scripts
from seedance_worker.engine.handoff import extend_lease
from seedance_worker.errors import WebhookDeadline
from seedance_worker.logs import redact
from seedance_worker.models import Notification, Outcome
from seedance_worker.outage import survive_redis_outage, until_redis_answers
from seedance_worker.settings import Settings, get_settings
from seedance_worker.steps.post_deadline import post_within
from seedance_worker.version import __version__

log = logging.getLogger(__name__)

NO_URL_ERROR = "no SEEDANCE_NOTIFY_URL configured"
BACKOFF_CAP_S = 300
# A delivery record outlives the API's 7-day task record: a task tracked again once its job record
# expired (SEEDANCE_JOB_TTL_S may be short) finds the record delivered instead of sending again.
MIN_DELIVERY_TTL_S = 8 * 86400
CLAIM_MARGIN_S = 5.0  # an attempt's claim outlasts its POST's deadline by this much


_warned_unsigned = False


def webhook_id(task_id: str, status: str) -> str:
    """Stable per (remote task, status): ``msg_`` + 32 hex digits."""
    return "msg_" + hashlib.sha256(f"{task_id}:{status}".encode()).hexdigest()[:32]


def delivery_key(wid: str) -> str:
    return keys.delivery(wid)


def delivery_ttl_s(settings: Settings) -> int:
    """How long a delivery record lives after its last write (every write renews it)."""
    return int(max(settings.job_ttl_s, settings.notify_retry_for_s * 2, MIN_DELIVERY_TTL_S))


def backoff_s(attempts: int, cap_s: float = BACKOFF_CAP_S) -> float:
    """Exponential (2, 4, 8 ... capped) with jitter, after ``attempts`` failed attempts.

    The cap is also SEEDANCE_POLL_COUNTDOWN_CAP_S: a retry message waiting longer than the
    broker's visibility timeout would be restored and sent twice.
    """
    return min(float(min(2**attempts, BACKOFF_CAP_S)) * random.uniform(0.5, 1.0), cap_s)


def sign_headers(wid: str, body: str, secret: str | None, now: datetime | None = None) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt (unsigned when no secret is configured)."""
    when = now or datetime.now(UTC)
    headers = {
        "webhook-id": wid,
        "webhook-timestamp": str(int(when.timestamp())),
        "content-type": "application/json",
        "user-agent": f"seedance-worker/{__version__}",
    }
    if secret:
        headers["webhook-signature"] = Webhook(secret).sign(wid, when, body)
    return headers


def _secret(settings: Settings) -> str | None:
    global _warned_unsigned
    if settings.notify_secret is not None and settings.notify_secret.get_secret_value():
        return settings.notify_secret.get_secret_value()
    if not _warned_unsigned:
        _warned_unsigned = True
        log.warning("notify: SEEDANCE_NOTIFY_SECRET is not set; notifications are sent unsigned")
    return None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def post(url: str, wid: str, body: str, settings: Settings) -> tuple[int | None, str | None]:
    """One POST, over within SEEDANCE_NOTIFY_TIMEOUT_S of wall-clock time; returns (status code,
    error) where error is None for a 2xx."""
    headers = sign_headers(wid, body, _secret(settings))
    try:
        code = post_within(
            url,
            data=body.encode("utf-8"),
            headers=headers,
            deadline_s=settings.notify_timeout_s,
            connect_timeout_s=settings.http_connect_timeout_s,
        )
    except WebhookDeadline as exc:
        return None, f"WebhookDeadline: {exc} (SEEDANCE_NOTIFY_TIMEOUT_S) from {redact(url)}"
    except requests.RequestException as exc:
        return None, f"{type(exc).__name__} posting to {redact(url)}"
    if 200 <= code < 300:
        return code, None
    return code, f"HTTP {code} from {redact(url)}"


def _check_url(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"SEEDANCE_NOTIFY_URL must be an http(s) URL, got scheme {parts.scheme!r}"
    return None


def _resolve_url(out: Outcome, wid: str, settings: Settings) -> str | None:
    """SEEDANCE_NOTIFY_URL, or None with ``out.notification`` saying why nothing is sent."""
    url = settings.notify_url
    if not url:
        out.notification = Notification(webhook_id=wid, attempts=0, delivered=False, error=NO_URL_ERROR)
        log.info("notify task=%s status=%s not sent: %s", out.task_id, out.status, NO_URL_ERROR)
        return None
    bad = _check_url(url)
    if bad:
        out.notification = Notification(webhook_id=wid, attempts=0, delivered=False, error=bad)
        log.error("notify task=%s not sent: %s", out.task_id, bad)
        return None
    return url


@dataclass
class _Delivery:
    """One run of ``notify`` for one outcome: its webhook id and its delivery hash in Redis."""

    out: Outcome
    wid: str
    settings: Settings
    r: redis.Redis = field(init=False)
    key: str = field(init=False)
    attempts: int = 0

    def __post_init__(self) -> None:
        self.r = connections.get_redis(self.settings)
        self.key = delivery_key(self.wid)

    def claim(self) -> str:
        """The claim script's verdict (send, busy, delivered or spent), counting this attempt."""
        settings = self.settings
        ttl = delivery_ttl_s(settings)
        claim = scripts.load(self.r, __package__ or "", "notify_claim")
        started = time.time()
        # The POST is cut at notify_timeout_s (post_deadline.py); the margin covers this round trip,
        # writing the result and clock skew between workers, so no second sender starts meanwhile.
        inflight_until = started + settings.notify_timeout_s + CLAIM_MARGIN_S
        verdict, count, *rest = claim(
            keys=[self.key],
            args=[started, settings.notify_max_attempts, settings.notify_retry_for_s, ttl, inflight_until],
        )
        self.attempts = int(count)
        if rest and rest[0] == "1":
            # Exactly once is impossible across a crash inside the request: the receiver may have
            # answered 2xx just before the SIGKILL. Never losing the notification wins; the repeat
            # carries the same webhook-id, which Standard Webhooks receivers use to drop it.
            log.warning(
                "notify task=%s id=%s attempt=%d: the previous attempt's sender died mid-request; its "
                "outcome is unknown, sending again with the same webhook-id",
                self.out.task_id,
                self.wid,
                self.attempts,
            )
        return str(verdict)

    def not_sent(self, verdict: str) -> None:
        """Fill ``out.notification`` for a delivery already made, or a budget already spent."""
        out, wid, attempts = self.out, self.wid, self.attempts
        rec = {str(k): str(v) for k, v in self.r.hgetall(self.key).items()}
        if verdict == "delivered":
            out.notification = Notification(
                webhook_id=wid, status_code=_int(rec.get("status_code")), attempts=attempts, delivered=True
            )
            log.info("notify task=%s id=%s already delivered; not sent again", out.task_id, wid)
            return
        reason = rec.get("final_error") or rec.get("last_error") or "delivery attempts exhausted"
        out.notification = Notification(
            webhook_id=wid,
            status_code=_int(rec.get("last_status_code")),
            attempts=attempts,
            delivered=False,
            error=reason,
        )
        log.warning("notify task=%s id=%s budget already spent: %s", out.task_id, wid, reason)

    def _write(self, mapping: dict[Any, str | int | float]) -> None:
        """Set fields and renew the TTL together: a Redis restarted without the record (no AOF)
        must not get it back as a key that never expires."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.key, mapping=mapping)
        pipe.expire(self.key, delivery_ttl_s(self.settings))
        pipe.execute()

    def delivered(self, url: str, code: int | None, now: float) -> None:
        """Mark the hash delivered after a 2xx and fill ``out.notification``."""
        # The receiver has it: this mark must land even through a Redis restart, or a re-run of
        # the task would deliver the same notification again.
        until_redis_answers(
            lambda: self._write(
                {"delivered": 1, "status_code": code or 0, "delivered_at": now, "sending_until": 0}
            ),
            f"notify {self.out.task_id} delivered mark",
        )
        self.out.notification = Notification(
            webhook_id=self.wid, status_code=code, attempts=self.attempts, delivered=True
        )
        log.info(
            "notify task=%s id=%s delivered to %s status=%s attempt=%d",
            self.out.task_id,
            self.wid,
            redact(url),
            code,
            self.attempts,
        )

    def failed(self, task: Task, code: int | None, error: str, now: float) -> None:
        """Record a failed attempt; retry the task within the budget, else record the final error."""
        r, key, out, wid, settings, attempts = (
            self.r,
            self.key,
            self.out,
            self.wid,
            self.settings,
            self.attempts,
        )
        status = "" if code is None else code
        self._write({"last_status_code": status, "last_error": error, "sending_until": 0})
        first_at = float(r.hget(key, "first_at") or now)
        countdown = backoff_s(attempts, settings.poll_countdown_cap_s)
        if (
            attempts < settings.notify_max_attempts
            and now + countdown - first_at <= settings.notify_retry_for_s
        ):
            log.warning(
                "notify task=%s id=%s attempt=%d failed: %s; retry in %.1fs",
                out.task_id,
                wid,
                attempts,
                error,
                countdown,
            )
            # The chain is waiting, not lost: keep the sweeper from re-firing it meanwhile.
            extend_lease(out.task_id, settings, extra_s=countdown)
            raise task.retry(countdown=countdown, max_retries=None)
        self._write({"final_error": error})
        out.notification = Notification(
            webhook_id=wid, status_code=code, attempts=attempts, delivered=False, error=error
        )
        log.error("notify task=%s id=%s gave up after %d attempts: %s", out.task_id, wid, attempts, error)


@shared_task(bind=True, name="seedance.notify", acks_late=True, reject_on_worker_lost=True, max_retries=None)
@survive_redis_outage
def notify(self: Task, outcome: dict[str, Any]) -> dict[str, Any]:
    """Outcome in, Outcome out with ``notification`` filled (delivered, or why not)."""
    out = Outcome.model_validate(outcome)
    settings = get_settings()
    wid = webhook_id(out.task_id, str(out.status))
    url = _resolve_url(out, wid, settings)
    if url is None:
        return out.wire()
    delivery = _Delivery(out, wid, settings)
    verdict = delivery.claim()
    if verdict == "busy":
        # A re-fired chain racing the original: let the copy that is sending finish first.
        raise self.retry(countdown=settings.notify_timeout_s + CLAIM_MARGIN_S + 1, max_retries=None)
    if verdict != "send":
        delivery.not_sent(verdict)
        return out.wire()
    body = json.dumps(out.model_dump(mode="json"), separators=(",", ":"))
    code, error = post(url, wid, body, settings)
    now = time.time()
    if error is None:
        delivery.delivered(url, code, now)
    else:
        delivery.failed(self, code, error, now)  # raises the retry while the budget lasts
    return out.wire()
