"""``submit()`` / ``seedance.submit``: create the remote task at most once per idempotency key.

The Ark API has no idempotency key of its own, and a retried POST can make a second paid video. So
the key is claimed in Redis *before* the POST (``state=posting``), the remote id is recorded after
(``state=created``), and a POST whose result is unknown (timeout, 5xx, connection dropped after
sending) is recorded as ``ambiguous`` and surfaced, never posted again. A second caller with the
same key waits for the first and then tracks the same remote id.

Before the POST, the request's price facts and its estimate are worked out (quote.py) and kept in
the job record (``Outcome.submitted``); ``reserve=True`` also holds the estimate in the ledger until
the job's charge settles it (README: Pricing).

With admission control on (engine/admission.py) a create first takes one of the account's slots;
without a free one the submission waits in Redis, and ``seedance.admit`` (admit.py) creates it
here, through ``create_or_find``, when a slot frees.
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
from seedance_worker.engine import admission, tracing
from seedance_worker.engine.admission import Entry
from seedance_worker.engine.jobs import ChainSpec, refuse_eager, registration_fields
from seedance_worker.engine.store import get_store
from seedance_worker.models import CreateRequest
from seedance_worker.outage import survive_redis_outage
from seedance_worker.pricing import price_table
from seedance_worker.quote import estimate_request, request_facts
from seedance_worker.settings import DEFAULT_ACCOUNT, Settings, get_settings
from seedance_worker.steps.ledger import reserve as reserve_estimate
from seedance_worker.track import track
from seedance_worker.wiring.app import ensure_app

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


def quote_request(req: CreateRequest, settings: Settings) -> dict[str, Any]:
    """The request's price facts with its estimate under ``estimate`` (None: size not known).
    A bad SEEDANCE_PRICE_TABLE raises ConfigError here, before anything is posted."""
    table = price_table(settings.price_table)
    return {**request_facts(req), "estimate": estimate_request(req, table, settings.currency)}


def estimate(
    model: str, content: Any, *, settings: Settings | None = None, **create_fields: Any
) -> dict[str, Any] | None:
    """What ``submit()`` with these arguments is estimated at (tokens, size, price, amount), without
    posting anything; None when the resolution's size is not known."""
    req = build_request(model, content, **create_fields)
    est: dict[str, Any] | None = quote_request(req, settings or get_settings())["estimate"]
    return est


def _reserve(remote_id: str, submitted: dict[str, Any], account: str | None, settings: Settings) -> None:
    est = submitted.get("estimate") or {}
    reservation = {
        "task_id": remote_id,
        "model": submitted.get("model"),
        "account": account,
        "tokens": est.get("tokens"),
        "exact": est.get("exact"),
        "amount": est.get("amount"),
        "currency": est.get("currency"),
        "price_rule": est.get("price_rule"),
        "price_per_million": est.get("price_per_million"),
        "ts": time.time(),
    }
    if reserve_estimate(remote_id, reservation, settings):
        log.info("submit %s reserved tokens=%s amount=%s", remote_id, est.get("tokens"), est.get("amount"))


def _still_polling(remote_id: str, settings: Settings) -> bool:
    record = get_store(settings).get(remote_id)
    return record is not None and record.state == "polling"


def create_once(req: CreateRequest, key: str, settings: Settings) -> str:
    """POST ``req`` unless ``key`` already made (or is making) a task; return the remote id."""
    return create_or_find(req, key, settings)[0]


def create_or_find(req: CreateRequest, key: str, settings: Settings) -> tuple[str, bool]:
    """``create_once``, also saying whether this call posted (False: ``key`` had made it before).

    The task is made with the account ``settings`` are for (``Settings.for_account``), and ``key``
    is that account's own."""
    r = connections.get_redis(settings)
    idem = keys.idempotency(key, settings.account)
    claim = scripts.load(r, "seedance_worker", "submit_claim")
    settle = scripts.load(r, "seedance_worker", "submit_settle")
    token = uuid.uuid4().hex
    wait_until = time.time() + settings.http_connect_timeout_s + settings.http_read_timeout_s + 5
    while True:
        state, remote_id, _owner, claimed_at = claim(keys=[idem], args=[token, time.time(), IDEM_TTL_S])
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
        settle(keys=[idem], args=[token, "ambiguous", "", str(exc)])
        log.error("submit key=%s ambiguous: %s", key, exc)
        raise
    except errors.SeedanceError as exc:
        # Nothing was created (refused, rate-limited, never connected): free the key for a retry.
        settle(keys=[idem], args=[token, "released", "", str(exc)])
        raise
    settle(keys=[idem], args=[token, "created", remote_id, ""])
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
    raw: bool = False,
    account: str | None = None,
    reserve: bool = False,
    **create_fields: Any,
) -> tuple[str | None, AsyncResult]:
    """Create the remote task (never twice for one idempotency key) and track it.

    ``account`` names the account (SEEDANCE_ACCOUNTS) to create it with; the job is polled,
    cancelled and charged with the same one. None (or "default"): SEEDANCE_API_KEY's.
    ``reserve``: hold the estimate in the ledger until the job's charge settles it.

    With admission control on for the account (SEEDANCE_ADMISSION_MAX_QUEUED) and its slots taken,
    the submission waits in Redis and this returns ``(None, handle)`` at once: the task is created
    when a slot frees, in submit order, and the handle resolves to its Outcome as usual."""
    # Before the POST: track() would refuse only after a paid task was created.
    refuse_eager("seedance_worker.submit()", bool(ensure_app().conf.task_always_eager))
    settings = settings or get_settings()
    name = settings.account_name(account)  # an unknown name is refused before anything is posted
    chains = stored_chains(settings, metadata, on_succeeded, on_failed, raw)
    nonce = ""
    if settings.intake_url and create_fields.get("callback_url") is None and settings.intake_token:
        from seedance_worker.intake import job_callback_url

        create_fields["callback_url"], nonce = job_callback_url(settings)
    req = build_request(model, content, **create_fields)
    # The price facts travel with the chains, so a waiting submission is tracked with them too.
    chains["submitted"] = quote_request(req, settings)
    chains["reserve"] = reserve
    key = idempotency_key or uuid.uuid4().hex
    if admission.cap(settings, name) > 0:
        return submit_admitted(req, key, settings, name, Entry.new(key, req.to_body(), chains, nonce))
    # One root for the create and the job it makes: the track() inside joins it.
    with tracing.start_job("seedance.submit", None, name) as root:
        remote_id, posted = create_or_find(req, key, settings.for_account(name))
        root.spans.set("seedance.posted", posted)
        result = track_created(remote_id, posted, settings, name, nonce, chains)
    return remote_id, result


def stored_chains(
    settings: Settings, metadata: Any, on_succeeded: ChainSpec, on_failed: ChainSpec, raw: bool
) -> dict[str, Any]:
    """The metadata and chains as track() takes them, checked and as JSON (a waiting submission
    keeps them in Redis): a bad one is refused before anything is posted."""
    fields = registration_fields(
        settings, metadata=metadata, on_succeeded=on_succeeded, on_failed=on_failed, raw=raw
    )
    return {
        "metadata": fields.get("metadata"),
        "on_succeeded": fields.get("on_succeeded"),
        "on_failed": fields.get("on_failed"),
        "raw": bool(fields.get("raw")),
    }


def track_created(
    remote_id: str,
    posted: bool,
    settings: Settings,
    account: str | None,
    nonce: str,
    chains: dict[str, Any],
    celery_id: str | None = None,
) -> AsyncResult:
    """track() a task a create just made (or found), with the chain id given out before, if any."""
    fields = dict(chains)
    reserve = bool(fields.pop("reserve", False))
    submitted = fields.get("submitted") or {}
    if reserve and posted:
        _reserve(remote_id, submitted, account, settings)  # before track(): no charge can come first
    result = track(remote_id, settings=settings, account=account, celery_id=celery_id, **fields)
    if reserve and not posted and _still_polling(remote_id, settings):
        # An earlier call made the task and may have died before reserving: reserve unless charged.
        _reserve(remote_id, submitted, account, settings)
    if nonce and posted:
        # Only a create this call posted carries this URL; an earlier one's stays bound.
        get_store(settings).bind_callback(remote_id, nonce)
    return result


def submit_admitted(
    req: CreateRequest, key: str, settings: Settings, account: str | None, entry: Entry
) -> tuple[str | None, AsyncResult]:
    """``submit()`` under admission control: create now if a slot is free and nobody waits, else
    wait in the account's queue (engine/admission.py) with a handle given out now."""
    app = ensure_app()
    acct = settings.for_account(account)
    gate = admission.Admission(settings, account)
    idem = keys.idempotency(key, acct.account)
    until = time.time() + admission.create_window_s(settings)
    got = gate.enter(entry, idem)
    while got.verdict == "busy" and time.time() < until:  # another caller is posting this key
        time.sleep(0.05)
        got = gate.enter(entry, idem)
    if got.verdict == "queued":
        admission.mark_waiting(app.backend, entry, account)
    if got.verdict in ("queued", "waiting"):
        log.info("submit key=%s waits for a slot of account %s", key, account or DEFAULT_ACCOUNT)
        return None, AsyncResult(got.celery_id, app=app)
    if got.verdict != "create":  # the key made its task already (or ended ambiguously)
        remote_id, posted = create_or_find(req, key, acct)
        return remote_id, track_created(remote_id, posted, settings, account, entry.nonce, entry.fields)
    try:
        remote_id, posted = create_or_find(req, key, acct)
    except errors.RateLimited as exc:
        # Ark's queue is full after all (another client of the account): wait first in line.
        log.info("submit key=%s refused (%s): waits first in line", key, exc.code or "429")
        celery_id = gate.requeue_first(entry, exc.retry_after_s or admission.HOLD_S)
        if celery_id == entry.celery_id:
            admission.mark_waiting(app.backend, entry, account)
        return None, AsyncResult(celery_id, app=app)
    except BaseException:
        gate.unclaim(key)
        raise
    gate.settled(key, remote_id)
    result = track_created(remote_id, posted, settings, account, entry.nonce, entry.fields, entry.celery_id)
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
    account: str | None = None,
    reserve: bool = False,
) -> str | None:
    """Create a generation task from a create-request dict; return the remote id (and track it).
    None: it waits for a slot (admission control) and is created when one frees."""
    # Without a caller key, this message's own id is the key: a redelivered copy will not post again.
    key = idempotency_key or f"celery:{self.request.id}"
    body = dict(request)
    model = body.pop("model", "")
    content = body.pop("content", None)
    remote_id, _ = submit(
        model, content, idempotency_key=key, metadata=metadata, account=account, reserve=reserve, **body
    )
    return remote_id
