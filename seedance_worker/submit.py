"""``submit()`` / ``seedance.submit``: create the remote task at most once per idempotency key.

The Ark API has no idempotency key of its own, and a retried POST can make a second paid video. So
the key is claimed in Redis *before* the POST (``state=posting``), the remote id is recorded after
(``state=created``), and a POST whose result is unknown (timeout, 5xx, connection dropped after
sending) is recorded as ``ambiguous`` and surfaced, never posted again. A second caller with the
same key waits for the first and then tracks the same remote id.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from celery import Task, shared_task
from celery.result import AsyncResult
from pydantic import ValidationError

from seedance_worker import connections, errors, keys, scripts
from seedance_worker.client import get_client
from seedance_worker.engine.jobs import ChainSpec, validate_metadata
from seedance_worker.engine.store import get_store
from seedance_worker.models import CreateRequest
from seedance_worker.outage import survive_redis_outage
from seedance_worker.settings import Settings, get_settings
from seedance_worker.track import track

log = logging.getLogger(__name__)

IDEM_TTL_S = 8 * 86400  # the API keeps tasks 7 days; the key must outlive them


def build_request(model: str, content: Any, **create_fields: Any) -> CreateRequest:
    try:
        return CreateRequest.model_validate({"model": model, "content": content, **create_fields})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise errors.InvalidRequest(
            f"invalid create request: {where}: {first['msg']}", None, "InvalidParameter", None, where
        ) from None


def create_once(req: CreateRequest, key: str, settings: Settings) -> str:
    """POST ``req`` unless ``key`` already made (or is making) a task; return the remote id."""
    return create_or_find(req, key, settings)[0]


def create_or_find(req: CreateRequest, key: str, settings: Settings) -> tuple[str, bool]:
    """``create_once``, also saying whether this call posted (False: ``key`` had made it before)."""
    r = connections.get_redis(settings)
    claim = scripts.load(r, "seedance_worker", "submit_claim")
    settle = scripts.load(r, "seedance_worker", "submit_settle")
    token = uuid.uuid4().hex
    wait_until = time.time() + settings.http_connect_timeout_s + settings.http_read_timeout_s + 5
    while True:
        state, remote_id, _owner, claimed_at = claim(
            keys=[keys.idempotency(key)], args=[token, time.time(), IDEM_TTL_S]
        )
        if state == "created" and remote_id:
            log.info("submit key=%s already created %s: tracking it, not posting again", key, remote_id)
            return str(remote_id), False
        if state == "ambiguous":
            raise errors.SubmitAmbiguous(
                f"an earlier create with idempotency key {key!r} ended ambiguously; look the task up "
                "(seedance-worker jobs / the API's list) before re-submitting with a new key"
            )
        if state == "claimed":
            break
        # Another process is posting this key right now: wait for it, never post in parallel.
        if time.time() > max(wait_until, float(claimed_at or 0) + settings.http_read_timeout_s + 10):
            raise errors.SubmitAmbiguous(
                f"create with idempotency key {key!r} has been in flight too long (a crashed submitter?)"
            )
        time.sleep(0.05)

    try:
        remote_id = get_client(settings).create_task(req)
    except errors.SubmitAmbiguous as exc:
        settle(keys=[keys.idempotency(key)], args=[token, "ambiguous", "", str(exc)])
        log.error("submit key=%s ambiguous: %s", key, exc)
        raise
    except errors.SeedanceError as exc:
        # Nothing was created (refused, rate-limited, never connected): free the key for a retry.
        settle(keys=[keys.idempotency(key)], args=[token, "released", "", str(exc)])
        raise
    settle(keys=[keys.idempotency(key)], args=[token, "created", remote_id, ""])
    log.info("submit key=%s created %s", key, remote_id)
    return remote_id, True


def submit(
    model: str,
    content: Any,
    *,
    idempotency_key: str | None = None,
    metadata: dict[str, Any] | None = None,
    on_succeeded: ChainSpec = None,
    on_failed: ChainSpec = None,
    settings: Settings | None = None,
    **create_fields: Any,
) -> tuple[str, AsyncResult]:
    """Create the remote task (never twice for one idempotency key) and track it."""
    settings = settings or get_settings()
    validate_metadata(metadata, settings)
    nonce = ""
    if settings.intake_url and create_fields.get("callback_url") is None and settings.intake_token:
        from seedance_worker.intake import job_callback_url

        create_fields["callback_url"], nonce = job_callback_url(settings)
    req = build_request(model, content, **create_fields)
    key = idempotency_key or uuid.uuid4().hex
    remote_id, posted = create_or_find(req, key, settings)
    result = track(
        remote_id, on_succeeded=on_succeeded, on_failed=on_failed, metadata=metadata, settings=settings
    )
    if nonce and posted:
        # Only a create this call posted carries this URL; an earlier one's stays bound.
        get_store(settings).bind_callback(remote_id, nonce)
    return remote_id, result


@shared_task(
    bind=True,
    name="seedance.submit",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(errors.RateLimited, errors.ConnectionFailed, errors.ServerError),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=20,
)
@survive_redis_outage
def submit_task(
    self: Task,
    request: dict[str, Any],
    idempotency_key: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Create a generation task from a create-request dict; return the remote id (and track it)."""
    # Without a caller key, this message's own id is the key: a redelivered copy will not post again.
    key = idempotency_key or f"celery:{self.request.id}"
    body = dict(request)
    model = body.pop("model", "")
    content = body.pop("content", None)
    remote_id, _ = submit(model, content, idempotency_key=key, metadata=metadata, **body)
    return remote_id
