"""The terminal hand-off: the job's ``on_succeeded`` / ``on_failed`` chain, once, before the caller's.

The chain is the job's list of task names or signatures, each getting the previous one's Outcome,
with ``seedance.complete`` appended: it stores the final (enriched) Outcome in the job record, ends
the hand-off lease and returns that Outcome (or raises the typed failure carrying it).

The terminal poll *replaces itself* with this chain (Celery's ``Task.replace``): the chain's last
link takes the poll's own task id and the caller's chain, links, errbacks and chord come after it.
So ``chain(poll.s(id), next.s())`` gives ``next`` the Outcome the downstream steps filled (video,
charge, notification), and ``AsyncResult(poll id)`` (the handle of ``track()``/``submit()``)
resolves to it. A job tracked with ``raw=True`` keeps the old shape: the poll returns the terminal
Outcome and the chain runs beside the caller's.

Until ``complete`` runs the job sits in ``state=handoff`` with a lease in the due index. A chain
lost with a killed worker is fired again by the sweeper, which publishes a *hand-off poll*: a poll
message under the chain's own id and canvas, carrying ``handoff``, that replaces itself the same
way without calling the API (``refire``). ``cancel()`` ends a job through the same message.

A chain that never completes however often it is fired (a step that kills its worker, a user task
that always raises) must still bill and tell: its last fire is a *salvage* chain, only the job's
``seedance.charge_usage`` and ``seedance.notify`` steps, with ``step_errors["handoff"]`` recorded
in the Outcome they get (``salvage_outcome``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, NoReturn

from celery import Task, chain, current_app, shared_task, signature
from celery.canvas import Signature

from seedance_worker import connections, errors, keys
from seedance_worker.engine import tracing
from seedance_worker.engine.jobs import publish_poll
from seedance_worker.engine.schedule import handoff_lease
from seedance_worker.engine.store import JobRecord, get_store
from seedance_worker.models import VideoFile
from seedance_worker.outage import survive_redis_outage
from seedance_worker.settings import Settings, get_settings

log = logging.getLogger(__name__)

SALVAGE_STEPS = ("seedance.charge_usage", "seedance.notify")

_STATUS_ERRORS: dict[str, type[errors.GenerationFailed]] = {
    "failed": errors.GenerationFailed,
    "expired": errors.GenerationExpired,
    "cancelled": errors.GenerationCancelled,
    "not_found": errors.TaskNotFound,
}


def deliver(outcome: dict[str, Any]) -> dict[str, Any]:
    """Return a succeeded Outcome; raise the typed failure (carrying the Outcome) for the others."""
    status = outcome.get("status")
    if status == "succeeded":
        return outcome
    cls = _STATUS_ERRORS.get(str(status), errors.GenerationFailed)
    err = outcome.get("error") or {}
    detail = f": {err.get('code')}: {err.get('message')}" if err else ""
    raise cls(f"remote task {outcome.get('task_id')} ended {status}{detail}", outcome)


def _spec_name(spec: Any) -> str | None:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict):
        name = spec.get("task")
        return name if isinstance(name, str) else None
    return getattr(spec, "task", None)


def salvage_outcome(outcome: dict[str, Any], fires: int, settings: Settings) -> dict[str, Any]:
    """The stored Outcome with the hand-off's failure recorded, for the salvage chain; with the
    video a download of an earlier fire stored, since the file is there though the chain never
    completed."""
    error = {
        "type": "HandoffExhausted",
        "kind": "handoff_exhausted",
        "message": f"the downstream chain was fired {fires} times without completing; "
        f"only {' and '.join(SALVAGE_STEPS)} ran",
    }
    salvaged = {**outcome, "step_errors": {**(outcome.get("step_errors") or {}), "handoff": error}}
    task_id = outcome.get("task_id")
    if isinstance(task_id, str) and not outcome.get("video"):
        video = recorded_video(task_id, settings)
        if video is not None:
            salvaged["video"] = video.model_dump(mode="json")
    return salvaged


def recorded_video(task_id: str, settings: Settings) -> VideoFile | None:
    """The video record a completed download committed (``keys.video``, written by
    steps/download.py once the file is whole); None without a readable one."""
    raw = connections.get_redis(settings).get(keys.video(task_id))
    if not raw:
        return None
    try:
        return VideoFile.model_validate(json.loads(str(raw)))
    except ValueError:
        return None


def _signatures(specs: list[Any]) -> list[Signature]:
    app = current_app
    sigs: list[Signature] = []
    for spec in specs:
        if isinstance(spec, str):
            sigs.append(app.signature(spec))
        else:
            sigs.append(signature(spec, app=app))
    return sigs


def build_chain(
    record: JobRecord, outcome: dict[str, Any], settings: Settings, *, salvage: bool = False
) -> Signature:
    succeeded = outcome.get("status") == "succeeded"
    specs = record.on_succeeded if succeeded else record.on_failed
    if specs is None:  # not given at track(): the configured default
        specs = list(settings.on_succeeded if succeeded else settings.on_failed)
    if salvage:
        specs = [spec for spec in specs if _spec_name(spec) in SALVAGE_STEPS]
    steps = _signatures(specs)
    steps.append(complete.s(record.task_id))
    first = steps[0]
    first = first.clone(args=(outcome,)) if not first.immutable else first  # prepended to its args
    # Read by the metrics (terminal poll -> downstream start); only the first step carries it.
    headers = {**(first.options.get("headers") or {}), "seedance_terminal_at": outcome.get("terminal_at")}
    steps[0] = first.set(headers=headers)
    return chain(*steps) if len(steps) > 1 else steps[0]


def _note_fired(record: JobRecord, settings: Settings, *, salvage: bool) -> None:
    # Noted before publishing: a fast chain can reach seedance.complete (state done) before a note
    # written afterwards, which then found no hand-off to update. If the publish fails, the lease
    # still lets the sweeper fire it again.
    now = time.time()
    get_store(settings).touch(
        record.task_id,
        expected_state="handoff",
        lease_at=handoff_lease(settings, now),
        fields={
            "handoff": "salvage" if salvage else "fired",
            "handoff_at": now,
            "handoff_fires": record.handoff_fires + 1,
        },
    )


def hand_off(
    task: Task, record: JobRecord, outcome: dict[str, Any], settings: Settings, *, salvage: bool = False
) -> NoReturn:
    """Replace the running poll with the downstream chain (the caller's canvas continues after it)."""
    _note_fired(record, settings, salvage=salvage)
    sig = build_chain(record, outcome, settings, salvage=salvage)
    task.replace(sig)
    raise AssertionError("Task.replace returned")  # pragma: no cover  (it raises Ignore)


def fire_beside(
    record: JobRecord, outcome: dict[str, Any], settings: Settings, *, salvage: bool = False
) -> None:
    """``raw=True`` jobs: publish the downstream chain on its own; the poll returns the raw Outcome."""
    _note_fired(record, settings, salvage=salvage)
    with tracing.attached(record.trace):
        build_chain(record, outcome, settings, salvage=salvage).apply_async()


def refire(record: JobRecord, settings: Settings, *, salvage: bool = False) -> None:
    """Fire a hand-off again (the sweeper, cancel): a hand-off poll under the chain's own id and
    canvas replaces itself with the chain, as the terminal poll would have."""
    if record.raw:
        outcome = record.outcome or {}
        fire_beside(record, salvage_outcome(outcome, record.handoff_fires, settings) if salvage else outcome,
                    settings, salvage=salvage)  # fmt: skip
        return
    get_store(settings).touch(
        record.task_id, expected_state="handoff", lease_at=handoff_lease(settings, time.time()), fields={}
    )
    publish_poll(
        record.task_id,
        gen=record.terminal_gen,
        countdown_s=0,
        celery_id=record.owner,
        settings=settings,
        canvas=record.canvas,
        handoff="salvage" if salvage else "fire",
        trace=record.trace,
    )


def extend_lease(task_id: str, settings: Settings | None = None, *, extra_s: float = 0.0) -> None:
    """Called by downstream steps so the sweeper does not re-fire a chain that is working."""
    settings = settings or get_settings()
    lease_at = handoff_lease(settings, time.time()) + extra_s
    get_store(settings).touch(task_id, expected_state="handoff", lease_at=lease_at, fields={})


def still_tracked(task_ids: list[str], settings: Settings | None = None) -> set[str]:
    """The ids whose job record exists: a chain may still run (or be re-fired) for them, so the
    marks its steps keep (a ledger entry) must stay."""
    if not task_ids:
        return set()
    return get_store(settings or get_settings()).known(task_ids)


@shared_task(
    name="seedance.complete", acks_late=True, reject_on_worker_lost=True, throws=(errors.GenerationFailed,)
)
@survive_redis_outage
def complete(outcome: Any, task_id: str) -> Any:
    """Last link of every hand-off chain: keep the final Outcome, end the lease, set the record TTL."""
    settings = get_settings()
    final = outcome if isinstance(outcome, dict) else {"result": outcome}
    state = get_store(settings).complete(
        task_id,
        ttl_s=settings.job_ttl_s,
        fields={"outcome": final, "handoff": "done", "updated_at": time.time()},
    )
    if state == 2:
        log.info("handoff %s completed again (a re-fired chain); record kept", task_id)
    elif state == 1:
        log.info("handoff %s done", task_id)
    return deliver(final) if "status" in final else outcome
