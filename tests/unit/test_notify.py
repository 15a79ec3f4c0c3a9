"""seedance.notify: signed Standard Webhooks to a real receiver, retried, delivered once."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery.exceptions import Retry
from standardwebhooks import Webhook

from seedance_worker.engine.store import get_store
from seedance_worker.logs import Redactor
from seedance_worker.models import Outcome
from seedance_worker.settings import get_settings, reset_settings_cache
from seedance_worker.steps.notify import NO_URL_ERROR, delivery_key, notify, webhook_id
from seedance_worker.testing.webhooks import WebhookReceiver
from tests.support.ids import new_id

SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """Unchecked and answering 200 past its plan: the tests verify the signatures themselves."""
    with WebhookReceiver(path="/hooks/seedance?token=abc") as r:
        yield r


def configure(env: pytest.MonkeyPatch, url: str | None, secret: str | None = SECRET, **more: str) -> None:
    for name, value in {"notify_url": url, "notify_secret": secret, **more}.items():
        if value is None:
            env.delenv(f"SEEDANCE_{name.upper()}", raising=False)
        else:
            env.setenv(f"SEEDANCE_{name.upper()}", value)
    reset_settings_cache()


def make_outcome(task_id: str, status: str = "succeeded") -> dict[str, Any]:
    return Outcome.model_validate(
        {
            "task_id": task_id,
            "status": status,
            "snapshot": {"id": task_id, "status": status, "model": "seedance-1-5-pro-251215"},
            "metadata": {"order": 7},
            "step_errors": {"download": {"type": "DownloadError", "kind": "too_large", "message": "big"}},
        }
    ).wire()


def run_until_done(outcome: dict[str, Any], limit: int = 20) -> tuple[dict[str, Any], int]:
    """Call the task the way a worker would re-run it after each self.retry; returns (result, retries)."""
    for retries in range(limit):
        try:
            return notify(outcome), retries
        except Retry:
            continue
    raise AssertionError("notify never finished")


def test_retried_until_delivered_and_signed(env: pytest.MonkeyPatch, receiver: WebhookReceiver) -> None:
    """500, 500, 200: delivered on attempt 3; every attempt is signed and carries the same id."""
    configure(env, receiver.url)
    receiver.plan([500, 500])
    tid = new_id()
    result, retries = run_until_done(make_outcome(tid))
    assert retries == 2
    n = result["notification"]
    assert n == {
        "webhook_id": webhook_id(tid, "succeeded"),
        "status_code": 200,
        "attempts": 3,
        "delivered": True,
        "error": None,
    }
    assert [d.answered for d in receiver.deliveries] == [500, 500, 200]
    for d in receiver.deliveries:
        headers = d.headers
        payload = Webhook(SECRET).verify(d.body, dict(headers))
        assert headers["webhook-id"] == n["webhook_id"]
        assert headers["content-type"] == "application/json"
        assert payload["task_id"] == tid
        assert payload["step_errors"]["download"]["kind"] == "too_large"
        assert payload["metadata"] == {"order": 7}
    rec = get_store(get_settings()).r.hgetall(delivery_key(n["webhook_id"]))
    assert rec["delivered"] == "1" and rec["attempts"] == "3" and rec["status_code"] == "200"


def test_delivered_notification_is_not_sent_again(env: pytest.MonkeyPatch, receiver: WebhookReceiver) -> None:
    configure(env, receiver.url)
    tid = new_id()
    first = notify(make_outcome(tid))
    second = notify(make_outcome(tid))
    assert len(receiver.deliveries) == 1
    assert second["notification"] == first["notification"]
    assert second["notification"]["delivered"] is True


def test_a_sender_killed_mid_request_is_resent_and_counted_in_doubt(
    env: pytest.MonkeyPatch, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A claim that ran out without being released (its sender was SIGKILLed inside the POST) is
    sent again with the same webhook-id, and the delivery record counts it as in doubt."""
    configure(env, receiver.url)
    tid = new_id()
    wid = webhook_id(tid, "succeeded")
    r = get_store().r
    # What a SIGKILL leaves behind: one attempt claimed, its in-flight deadline passed, no mark.
    then = time.time() - 30
    r.hset(delivery_key(wid), mapping={"first_at": then, "attempts": 1, "sending_until": then + 15})
    with caplog.at_level(logging.WARNING, logger="seedance_worker.steps.notify"):
        result = notify(make_outcome(tid))
    assert result["notification"]["delivered"] is True and result["notification"]["attempts"] == 2
    assert [d.webhook_id for d in receiver.deliveries] == [wid]
    assert r.hget(delivery_key(wid), "in_doubt") == "1"
    assert any("died mid-request" in m and wid in m for m in caplog.messages)
    # An ordinary retry after a non-2xx answer is not in doubt.
    tid2 = new_id()
    receiver.plan([503])
    run_until_done(make_outcome(tid2))
    assert r.hget(delivery_key(webhook_id(tid2, "succeeded")), "in_doubt") is None


def test_eager_apply_runs_the_retries(env: pytest.MonkeyPatch, receiver: WebhookReceiver) -> None:
    configure(env, receiver.url)
    receiver.plan([503])
    result = notify.apply(args=(make_outcome(new_id()),)).get()
    assert result["notification"]["delivered"] is True
    assert result["notification"]["attempts"] == 2


def test_webhook_id_is_stable_per_task_and_status(env: pytest.MonkeyPatch, receiver: WebhookReceiver) -> None:
    configure(env, receiver.url)
    tid = new_id()
    assert webhook_id(tid, "succeeded") == webhook_id(tid, "succeeded")
    assert webhook_id(tid, "succeeded").startswith("msg_") and len(webhook_id(tid, "succeeded")) == 36
    ok = notify(make_outcome(tid, "succeeded"))
    failed = notify(make_outcome(tid, "failed"))
    assert ok["notification"]["webhook_id"] == webhook_id(tid, "succeeded")
    assert failed["notification"]["webhook_id"] == webhook_id(tid, "failed")
    assert ok["notification"]["webhook_id"] != failed["notification"]["webhook_id"]
    assert len(receiver.deliveries) == 2  # a new status is a new notification


def test_final_failure_is_recorded_not_raised(env: pytest.MonkeyPatch, receiver: WebhookReceiver) -> None:
    configure(env, receiver.url, notify_max_attempts="3")
    receiver.plan([500] * 10)
    tid = new_id()
    result, retries = run_until_done(make_outcome(tid))
    n = result["notification"]
    assert retries == 2
    assert n["delivered"] is False and n["attempts"] == 3 and n["status_code"] == 500
    assert "HTTP 500" in n["error"]
    assert "token=abc" not in n["error"]  # the URL's query string is not repeated
    again = notify(make_outcome(tid))  # a re-driven chain: the budget is spent, nothing is sent
    assert len(receiver.deliveries) == 3
    assert again["notification"]["attempts"] == 3 and again["notification"]["delivered"] is False


def test_retry_window_bounds_the_attempts(env: pytest.MonkeyPatch, receiver: WebhookReceiver) -> None:
    """With SEEDANCE_NOTIFY_RETRY_FOR_S shorter than the first backoff, one attempt is all."""
    configure(env, receiver.url, notify_retry_for_s="0.5")
    receiver.plan([500])
    result = notify(make_outcome(new_id()))
    assert result["notification"]["attempts"] == 1
    assert result["notification"]["delivered"] is False


def test_network_error_is_retried_then_recorded(env: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    configure(env, f"http://127.0.0.1:{port}/hook", notify_max_attempts="2")
    result, retries = run_until_done(make_outcome(new_id()))
    assert retries == 1
    n = result["notification"]
    assert n["delivered"] is False and n["attempts"] == 2 and n["status_code"] is None
    assert "ConnectionError" in n["error"]


def test_no_url_is_recorded_as_not_sent(env: pytest.MonkeyPatch, receiver: WebhookReceiver) -> None:
    configure(env, None)
    tid = new_id()
    result = notify(make_outcome(tid))
    assert result["notification"]["delivered"] is False
    assert result["notification"]["attempts"] == 0
    assert result["notification"]["error"] == NO_URL_ERROR
    assert receiver.deliveries == []
    assert not get_store(get_settings()).r.exists(delivery_key(webhook_id(tid, "succeeded")))


def test_unsigned_without_a_secret(
    env: pytest.MonkeyPatch, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    import seedance_worker.steps.notify as notify_mod

    env.setattr(notify_mod, "_warned_unsigned", False)
    configure(env, receiver.url, secret=None)
    caplog.set_level(logging.INFO)
    notify(make_outcome(new_id()))
    notify(make_outcome(new_id()))
    assert len(receiver.deliveries) == 2
    headers = receiver.deliveries[0].headers
    assert "webhook-signature" not in {k.lower() for k in headers}
    assert headers["webhook-id"].startswith("msg_") and headers["webhook-timestamp"].isdigit()
    assert caplog.text.count("notifications are sent unsigned") == 1


def test_secret_never_logged_or_returned(
    env: pytest.MonkeyPatch, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    configure(env, receiver.url, notify_max_attempts="2")
    caplog.set_level(logging.DEBUG)
    receiver.plan([500])
    result, _ = run_until_done(make_outcome(new_id()))
    raw_key = SECRET.removeprefix("whsec_")
    for text in (caplog.text, json.dumps(result), *(d.body.decode() for d in receiver.deliveries)):
        assert SECRET not in text and raw_key not in text
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("seedance_worker")]
    assert ours and not any("token=abc" in m for m in ours)
    # Third-party lines (urllib3 prints the request line at DEBUG) lose it in the worker's formatter.
    assert "token=abc" not in Redactor()(caplog.text)
