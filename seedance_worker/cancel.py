"""``cancel()``: end a tracked job as ``cancelled`` (engine/cancel.py says how, and what Ark allows)."""

from __future__ import annotations

from seedance_worker.client import validate_task_id
from seedance_worker.engine.cancel import CancelResult, cancel_job
from seedance_worker.settings import Settings, get_settings
from seedance_worker.wiring.app import ensure_app

__all__ = ["CancelResult", "cancel"]


def cancel(task_id: str, *, stop_tracking: bool = False, settings: Settings | None = None) -> CancelResult:
    """Cancel a queued remote task and end its job (``on_failed`` runs; the handle raises
    ``GenerationCancelled``). A running task cannot be cancelled on Ark: nothing is stopped, unless
    ``stop_tracking=True`` ends the job here without downstream effects."""
    ensure_app()
    validate_task_id(task_id)
    return cancel_job(task_id, settings or get_settings(), stop_tracking=stop_tracking)
