"""Worker logs: JSON lines with task ids and the poll timeline; no secret or signed query, even at DEBUG."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import shared_task

import seedance_worker
from seedance_worker import logs
from seedance_worker.settings import get_settings, load_settings
from seedance_worker.testing.simulator import SimConfig, Simulator
from seedance_worker.testing.webhooks import WebhookReceiver
from tests.support.env import clean_redis, reset_caches
from tests.support.workers import Workers

API_KEY = "test-key-not-a-secret-0123456789"  # conftest's SEEDANCE_API_KEY
WEBHOOK_SECRET = "whsec_c2VjcmV0LXdlYmhvb2sta2V5LWZvci1sb2dzLXRlc3Q="
INTAKE_TOKEN = "intake-token-for-the-logs-test-7f3a"
SIGNED_URL = "https://bucket.tos.example.com/out/v.mp4?X-Tos-Signature=deadbeefcafe&X-Tos-Expires=86400"


@shared_task(name="tests.leak_secrets")
def leak_secrets() -> dict[str, Any]:
    """A careless user task: logs every secret, prints one, returns a signed URL, then a traceback."""
    s = get_settings()
    log = logging.getLogger("tests.careless")
    log.warning("api key %s webhook %s token %s", s.api_key_value(), s.notify_secret.get_secret_value(),  # type: ignore[union-attr]
                s.intake_token.get_secret_value())  # type: ignore[union-attr]  # fmt: skip
    print(f"printed key {s.api_key_value()}")
    try:
        raise RuntimeError(f"failed with key {s.api_key_value()}")
    except RuntimeError:
        log.exception("traceback follows")
    return {"video_url": SIGNED_URL}


@pytest.fixture
def json_worker(env: pytest.MonkeyPatch, tmp_path: Path, redis_url: str) -> Iterator[tuple[Simulator, Workers]]:
    sim = Simulator(config=SimConfig(queued_s=0.2, running_s=0.3)).start()
    hook = WebhookReceiver(WEBHOOK_SECRET).start()
    env.setenv("SEEDANCE_API_BASE_URL", sim.base_url)
    env.setenv("SEEDANCE_LOG_JSON", "true")
    env.setenv("SEEDANCE_NOTIFY_URL", hook.url)
    env.setenv("SEEDANCE_NOTIFY_SECRET", WEBHOOK_SECRET)
    env.setenv("SEEDANCE_INTAKE_TOKEN", INTAKE_TOKEN)
    reset_caches()
    clean_redis(redis_url)
    try:
        with Workers(tmp_path, n=1, concurrency=2, extra_args=["-l", "DEBUG", "--include", "tests.e2e.test_logs"]) as ws:
            yield sim, ws
    finally:
        hook.stop()
        sim.stop()


@pytest.mark.slow
def test_json_lines_with_task_ids_and_no_secrets_at_debug(json_worker: tuple[Simulator, Workers]) -> None:
    sim, ws = json_worker
    ids = [sim.add_task([("queued", 1.0), ("running", 1.0), ("succeeded", None)]) for _ in range(3)]
    results = [seedance_worker.track(t) for t in ids]
    for res in results:
        assert res.get(timeout=30)["status"] == "succeeded"
    assert leak_secrets.delay().get(timeout=15) == {"video_url": SIGNED_URL}
    import time

    time.sleep(1.5)  # let the notifications and the trace lines land
    ws.procs[0].stop()
    text = ws.logs()

    # secrets and signed query strings appear nowhere, not even in tracebacks or Celery's DEBUG lines
    body = WEBHOOK_SECRET.removeprefix("whsec_")
    for secret in (API_KEY, WEBHOOK_SECRET, body, INTAKE_TOKEN):
        assert secret not in text, f"{secret[:8]}... leaked"
    assert "X-Tos-Signature" not in text and "deadbeefcafe" not in text

    # every log line is one JSON object (Celery's own included); only its shutdown notice is printed
    records = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("worker: "):
            continue
        doc = json.loads(line)
        assert {"ts", "level", "logger", "message"} <= set(doc), doc
        records.append(doc)
    assert any(r["level"] == "DEBUG" for r in records)
    assert any(r["logger"].startswith("celery") for r in records)
    # task ids on lines logged inside tasks and on Celery's task lines
    polls = [r for r in records if r["logger"] == "seedance_worker.engine.poll" and "job_id" in r]
    assert polls and all(r["task_name"] == "seedance.poll" and r["task_id"] for r in polls)
    # the timeline of one job: try, status and the next countdown of every decision, then terminal
    timeline = [r for r in polls if r["job_id"] == ids[0]]
    assert [r["try"] for r in timeline] == sorted(r["try"] for r in timeline)
    assert any("next_in_s" in r and "gen" in r for r in timeline) and timeline[-1].get("terminal") is True
    succeeded = [r for r in records if r["logger"] == "celery.app.trace" and "succeeded in" in r["message"]]
    assert succeeded and all(r.get("task_id") for r in succeeded)
    assert any("?[redacted]" in r["message"] for r in succeeded)  # the Outcome's video_url, stripped
    careless = [r for r in records if r["logger"] == "tests.careless"]
    assert careless and "[redacted]" in careless[0]["message"] and careless[0]["task_name"] == "tests.leak_secrets"
    assert any("exc" in r and "RuntimeError" in r["exc"] for r in careless)


def test_plain_text_lines_are_redacted_too() -> None:
    settings = load_settings(
        {"SEEDANCE_API_KEY": API_KEY, "SEEDANCE_NOTIFY_SECRET": WEBHOOK_SECRET,
         "SEEDANCE_INTAKE_TOKEN": INTAKE_TOKEN, "SEEDANCE_REDIS_URL": "redis://:p4ssw0rd-x@localhost:6379/0"}
    )  # fmt: skip
    red = logs.Redactor(logs.secret_values(settings))
    fmt = logs.RedactingFormatter(logging.Formatter("%(message)s"), red)
    record = logging.LogRecord("celery.app.trace", logging.INFO, __file__, 1,
                               "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s",
                               ({"name": "seedance.notify", "id": "abc", "runtime": 0.1,
                                 "return_value": repr({"video_url": SIGNED_URL, "k": API_KEY})},), None)  # fmt: skip
    line = fmt.format(record)
    assert API_KEY not in line and "X-Tos-Signature" not in line
    assert "https://bucket.tos.example.com/out/v.mp4?[redacted]" in line
    for secret in (WEBHOOK_SECRET, INTAKE_TOKEN, "p4ssw0rd-x"):
        assert secret not in red(f"x {secret} y")
    # urllib3 at DEBUG prints the request line apart from the host: its query string goes too.
    pool_line = red('http://127.0.0.1:8080 "POST /hooks/seedance?token=abc HTTP/1.1" 200 2')
    assert pool_line == 'http://127.0.0.1:8080 "POST /hooks/seedance?[redacted] HTTP/1.1" 200 2'
    doc = json.loads(logs.JsonFormatter(red).format(record))
    assert doc["task_id"] == "abc" and doc["task_name"] == "seedance.notify" and API_KEY not in doc["message"]
