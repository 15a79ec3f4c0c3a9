"""seedance.notify against a receiver that drips its answer: one POST never outlives its claim.

The drip sends a byte every 0.3 s, inside the 1 s read timeout, for about 20 s in all, while an
attempt's claim lasts SEEDANCE_NOTIFY_TIMEOUT_S (1 s) plus the 5 s margin: without a wall-clock
deadline the POST would still be running when a second sender may claim the delivery.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from celery.exceptions import Retry

from seedance_worker.engine.store import get_store
from seedance_worker.models import Outcome
from seedance_worker.settings import reset_settings_cache
from seedance_worker.steps.notify import delivery_key, notify, webhook_id
from tests.support.drip_webhook_server import DripConfig, DripServer


def configure(env: pytest.MonkeyPatch, url: str) -> None:
    env.setenv("SEEDANCE_NOTIFY_URL", url)
    env.setenv("SEEDANCE_NOTIFY_TIMEOUT_S", "1")
    env.delenv("SEEDANCE_NOTIFY_SECRET", raising=False)
    reset_settings_cache()


def make_outcome(task_id: str) -> dict[str, Any]:
    snap = {"id": task_id, "status": "succeeded", "model": "seedance-1-5-pro-251215"}
    return Outcome.model_validate({"task_id": task_id, "status": "succeeded", "snapshot": snap}).wire()


class Run:
    """``notify`` in a thread, the way a worker runs it: what it returned or raised, and when."""

    def __init__(self, outcome: dict[str, Any]) -> None:
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.ended_at = 0.0
        self.started_at = time.time()
        self.thread = threading.Thread(target=self._run, args=(outcome,), daemon=True)
        self.thread.start()

    def _run(self, outcome: dict[str, Any]) -> None:
        try:
            self.result = notify(outcome)
        except BaseException as exc:
            self.error = exc
        self.ended_at = time.time()

    def join(self) -> None:
        self.thread.join(60)
        assert not self.thread.is_alive()


def test_a_dripped_status_line_is_cut_at_the_deadline_before_the_claim_runs_out(
    env: pytest.MonkeyPatch,
) -> None:
    """The receiver drips its status line: the POST is cut (the client hangs up mid-drip) and ends
    before its claim does; meanwhile a second run finds the delivery busy and sends nothing; the
    attempt is recorded as failed with the deadline named, the claim released, a retry scheduled."""
    with DripServer(DripConfig(drip_head=True)) as server:
        configure(env, server.url)
        tid = f"cgt-20260101000000-{uuid.uuid4().hex[:10]}"
        key = delivery_key(webhook_id(tid, "succeeded"))
        r = get_store().r
        first = Run(make_outcome(tid))
        assert server.cfg.received.wait(10)
        claim_until = float(r.hget(key, "sending_until") or 0)
        with pytest.raises(Retry):
            notify(make_outcome(tid))  # busy: the first attempt still holds the claim
        first.join()
        assert server.cfg.ended.wait(10)
    assert first.ended_at < claim_until, "the POST outlived its claim: a second sender could start"
    assert isinstance(first.error, Retry), first.result
    assert len(server.cfg.attempts) == 1
    attempt = server.cfg.attempts[0]
    assert attempt.hung_up and attempt.sent < len(server.cfg.head)
    rec = r.hgetall(key)
    assert rec["attempts"] == "1" and rec["sending_until"] == "0"
    assert "WebhookDeadline" in rec["last_error"] and "SEEDANCE_NOTIFY_TIMEOUT_S" in rec["last_error"]


def test_a_2xx_whose_body_drips_is_a_delivery_without_waiting_for_the_body(env: pytest.MonkeyPatch) -> None:
    """The receiver answers 200 at once and drips the body: the status is the answer, so the
    notification is delivered and the POST ends (hanging up on the body) well before its claim."""
    with DripServer(DripConfig(drip_head=False, body=b"x" * 64,
                               head=b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n")) as server:  # fmt: skip
        configure(env, server.url)
        tid = f"cgt-20260101000000-{uuid.uuid4().hex[:10]}"
        key = delivery_key(webhook_id(tid, "succeeded"))
        run = Run(make_outcome(tid))
        assert server.cfg.received.wait(10)
        # A fast POST may have ended (and released its claim) before this read: the claim then
        # lasted no longer than SEEDANCE_NOTIFY_TIMEOUT_S + 5 s from the start.
        claim_until = float(get_store().r.hget(key, "sending_until") or 0) or run.started_at + 1 + 5
        run.join()
        assert server.cfg.ended.wait(10)
    assert run.ended_at < claim_until
    assert run.result is not None and run.result["notification"]["delivered"] is True, run.error
    assert run.result["notification"]["status_code"] == 200
    assert server.cfg.attempts[0].hung_up
