"""Cancel a tracked job: DELETE a queued remote task, end the job ``cancelled``, never poll again.

Ark cancels only a ``queued`` task (``DELETE`` of a running one is refused; of a finished one it
*deletes* the record, so a job that ended is never sent a DELETE). A refused cancel stops nothing
unless the caller asks to stop tracking: the job then ends here as ``cancelled`` with no downstream
steps, while Ark runs (and bills) the task on.

The job ends through the store's fenced ``finish`` at its current generation, so every poll copy
in flight or parked becomes stale and is dropped without a GET; the hand-off (``on_failed``, then
``seedance.complete``, whose handle raises ``GenerationCancelled``) is fired by a hand-off poll
under the chain's own id, as the sweeper fires a lost one. A revoked poll id (``revoke()``) is
cancelled the same way, its chain then fired under fresh ids: the revoked id would be discarded.
"""

from __future__ import annotations

import ast
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from seedance_worker import errors, metrics
from seedance_worker.client import get_client
from seedance_worker.engine import admission
from seedance_worker.engine.decide import terminal_fields
from seedance_worker.engine.handoff import fire_beside, refire
from seedance_worker.engine.schedule import handoff_lease
from seedance_worker.engine.store import JobRecord, get_store
from seedance_worker.settings import Settings

log = logging.getLogger(__name__)

CancelResultKind = Literal["cancelled", "stopped_tracking", "running", "ended", "not_tracked"]
FINISH_TRIES = 5  # a poll advancing the job between our read and our finish: read again


@dataclass(frozen=True)
class CancelResult:
    task_id: str
    result: CancelResultKind
    message: str

    @property
    def ended(self) -> bool:
        """Did this call end the job (no poll after it)?"""
        return self.result in ("cancelled", "stopped_tracking")


def cancel_job(
    task_id: str, settings: Settings, *, stop_tracking: bool = False, revoked: bool = False
) -> CancelResult:
    store = get_store(settings)
    record = store.get(task_id)
    if record is None:
        return CancelResult(task_id, "not_tracked", "no job record (never tracked here, or it expired)")
    if record.state != "polling":
        return CancelResult(task_id, "ended", f"the job already ended ({record.status})")
    try:
        get_client(settings, record.account).delete_task(task_id)
        how: CancelResultKind = "cancelled"
        message = "cancelled on Ark (it was queued)"
    except errors.TaskNotFound:
        how, message = "cancelled", "Ark no longer knows the task; the job is ended here"
    except errors.PermissionDenied as exc:
        if not (stop_tracking or revoked):
            refused = (
                f"Ark refused the cancel ({exc.code or 'denied'}): a running task cannot be cancelled; "
                "nothing was stopped (stop_tracking ends the job here while Ark runs and bills it on)"
            )
            return CancelResult(task_id, "running", refused)
        how, message = "stopped_tracking", "running on Ark (which cannot cancel it): tracking stopped here"
    return _end(record, settings, how, message, revoked=revoked)


def remote_task_id(request: Any) -> str | None:
    """The remote task id a (revoked) poll message was for: its first argument."""
    args = getattr(request, "args", None)
    if not args:
        # A revoked message's context has only the headers: the arguments as their repr.
        try:
            args = ast.literal_eval(getattr(request, "argsrepr", "") or "()")
        except (ValueError, SyntaxError):
            return None
    first = args[0] if isinstance(args, list | tuple) and args else None
    return first if isinstance(first, str) else None


def _fields(record: JobRecord, how: CancelResultKind, message: str, now: float) -> dict[str, Any]:
    code = "Cancelled" if how == "cancelled" else "TrackingStopped"
    fields = terminal_fields(record, "cancelled", {"code": code, "message": message}, now, polls=record.polls)
    fields["handoff"] = "fired"  # fired below, by this call: a stale terminal copy must not fire it too
    if how == "stopped_tracking":
        fields["on_failed"] = []  # no downstream effects: the remote task is still running
    return fields


def _end(
    record: JobRecord, settings: Settings, how: CancelResultKind, message: str, *, revoked: bool
) -> CancelResult:
    store = get_store(settings)
    current: JobRecord | None = record
    for _ in range(FINISH_TRIES):
        if current is not None and current.state != "polling" and current.status == "cancelled":
            # A read between the DELETE and this finish saw the task cancelled and ended the job
            # first (its own Outcome, on_failed run by that poll): the cancel took effect all the same.
            return CancelResult(record.task_id, "cancelled", "cancelled on Ark; a poll ended the job first")
        if current is None or current.state != "polling":
            return CancelResult(record.task_id, "ended", "the job ended meanwhile")
        now = time.time()
        fields = _fields(current, how, message, now)
        if store.finish(current.task_id, current.gen, lease_at=handoff_lease(settings, now), fields=fields):
            break
        current = store.get(record.task_id)
    else:
        return CancelResult(record.task_id, "ended", "could not end the job: it kept advancing")
    ended = store.get(record.task_id)
    assert ended is not None and ended.outcome is not None
    log.info("cancel %s: %s (%s)", record.task_id, how, message)
    metrics.outcome("cancelled")
    admission.job_ended(settings, ended)
    if revoked:
        fire_beside(ended, ended.outcome, settings)
    else:
        refire(ended, settings)
    return CancelResult(record.task_id, how, message)
