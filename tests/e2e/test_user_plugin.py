"""The pytest plugin (seedance_worker.testing.pytest_plugin) as a user's own suite meets it.

The user suites run as a user runs them: ``python -m pytest`` in a directory of their own, with the
plugin loaded by its installed ``pytest11`` entry point (no ``-p``), no SEEDANCE_* variables and no
Docker. USER_CONFTEST + USER_TEST are the README's "Testing your pipeline" example, word for word.
The eager-mode refusals are checked in this process, through the same fixtures.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from celery import chain, shared_task

import seedance_worker
from seedance_worker.engine.store import get_store
from seedance_worker.errors import ConfigError
from seedance_worker.testing.simulator import Simulator

pytestmark = pytest.mark.slow

PLUGIN = "seedance_worker.testing.pytest_plugin"

USER_CONFTEST = """\
import pytest


@pytest.fixture(scope="session")
def celery_config(seedance_celery_config):
    return seedance_celery_config  # broker, backend, settings: the embedded Redis and the simulator
"""

USER_TEST = """\
import seedance_worker


def test_a_prompt_becomes_a_video(seedance_celery_worker, seedance_simulator):
    content = [{"type": "text", "text": "a red fox in snow"}]
    remote_id, result = seedance_worker.submit("seedance-1-5-pro-251215", content, idempotency_key="fox-1")
    outcome = result.get(timeout=30)  # the Outcome, after download and charge
    assert outcome["status"] == "succeeded" and outcome["task_id"] == remote_id
    assert outcome["video"]["sha256"] and outcome["charge"]["total_tokens"]
    assert len(seedance_simulator.requests(kind="create")) == 1
"""

# What a user's suite does beyond the README example: failures, their own step in the chain,
# batches (parked first polls, so the dispatcher thread must run), eager mode, test isolation.
USER_MORE = """\
import time

import pytest
from celery import shared_task

import seedance_worker
from seedance_worker.errors import ConfigError, GenerationFailed
from seedance_worker.track import track_many

MODEL = "seedance-1-5-pro-251215"
PUBLISHED = []


@shared_task(name="myapp.publish")
def publish(outcome):
    PUBLISHED.append(outcome)
    return outcome


def test_the_same_key_posts_again_in_a_new_test(seedance_celery_worker, seedance_simulator):
    _, result = seedance_worker.submit(MODEL, [{"type": "text", "text": "fox"}], idempotency_key="fox-1")
    assert result.get(timeout=30)["status"] == "succeeded"
    assert len(seedance_simulator.requests(kind="create")) == 1


def test_a_failed_generation_raises_with_its_outcome(seedance_celery_worker):
    _, result = seedance_worker.submit(MODEL, [{"type": "text", "text": "fox [fail]"}])
    with pytest.raises(GenerationFailed) as failed:
        result.get(timeout=30)
    assert failed.value.outcome.status == "failed"


def test_my_step_gets_the_downloaded_video(seedance_celery_worker):
    steps = ["seedance.download_video", "myapp.publish"]
    _, result = seedance_worker.submit(MODEL, [{"type": "text", "text": "fox"}], on_succeeded=steps)
    result.get(timeout=30)
    deadline = time.monotonic() + 30
    while not PUBLISHED and time.monotonic() < deadline:
        time.sleep(0.05)
    assert PUBLISHED[0]["video"]["bytes"] > 0 and PUBLISHED[0]["video"]["uri"].startswith("file://")


def test_a_batch_of_tracked_tasks_finishes(seedance_celery_worker, seedance_simulator):
    ids = [seedance_simulator.add_task([("queued", 0.2), ("running", 0.2), ("succeeded", None)]) for _ in range(3)]
    results = track_many(ids)
    assert [r.get(timeout=30)["task_id"] for r in results] == ids


@pytest.mark.celery(task_always_eager=True)
def test_eager_mode_is_refused_before_any_request(seedance_app, seedance_simulator):
    with pytest.raises(ConfigError, match="task_always_eager=True"):
        seedance_worker.submit(MODEL, [{"type": "text", "text": "fox"}])
    assert seedance_simulator.requests() == []
"""

# A suite that never asks for a seedance fixture: with a SEEDANCE_* variable that any settings read
# would refuse, the plugin loaded, and nothing of ours set up.
PLAIN_SUITE = """\
import threading

import pytest
from celery import shared_task


@shared_task(name="plain.add")
def add(x, y):
    return x + y


@pytest.mark.celery(task_always_eager=True)
def test_plain_celery_is_untouched(celery_app, pytestconfig):
    assert celery_app.tasks["plain.add"].delay(2, 3).get() == 5
    assert pytestconfig.pluginmanager.hasplugin("seedance_worker.testing.pytest_plugin")
    from seedance_worker.settings import get_settings
    from seedance_worker.wiring.registry import is_ours

    assert get_settings.cache_info().currsize == 0  # no settings were read
    assert not is_ours(celery_app)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("seedance")]
"""


def run_user_suite(tmp_path: Path, files: dict[str, str], **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m pytest`` in a directory of the user's own, as the user's shell would run it."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("SEEDANCE_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def _report(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"


def test_the_entry_point_is_installed() -> None:
    """What loads the plugin without -p; a stale install (pip install -e . again) lacks it."""
    names = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    assert names.get(PLUGIN) == PLUGIN, f"pytest11 entry point missing: reinstall the package ({names})"


def test_the_readme_user_test_passes_in_a_users_own_directory(tmp_path: Path) -> None:
    proc = run_user_suite(tmp_path, {"conftest.py": USER_CONFTEST, "test_video.py": USER_TEST})
    assert proc.returncode == 0, _report(proc)
    assert "1 passed" in proc.stdout, _report(proc)


def test_a_users_suite_gets_failures_its_own_steps_batches_and_clean_tests(tmp_path: Path) -> None:
    proc = run_user_suite(tmp_path, {"conftest.py": USER_CONFTEST, "test_more.py": USER_MORE})
    assert proc.returncode == 0, _report(proc)
    assert "5 passed" in proc.stdout, _report(proc)


def test_a_suite_without_the_fixtures_is_left_alone(tmp_path: Path) -> None:
    proc = run_user_suite(tmp_path, {"test_plain.py": PLAIN_SUITE}, SEEDANCE_NOT_A_SETTING="1")
    assert proc.returncode == 0, _report(proc)
    assert "1 passed" in proc.stdout, _report(proc)


def test_without_the_celery_config_the_worker_says_what_to_return(tmp_path: Path) -> None:
    proc = run_user_suite(tmp_path, {"test_video.py": USER_TEST})
    assert proc.returncode == 1, _report(proc)
    assert (
        "celery_app's broker is memory://, not a Redis: have your celery_config fixture return "
        "seedance_celery_config"
    ) in proc.stdout, _report(proc)


# --- eager mode, in this process, through the plugin's fixtures -----------------------------------


@pytest.fixture(scope="session")
def celery_config(seedance_celery_config: dict[str, Any]) -> dict[str, Any]:
    return seedance_celery_config


@shared_task(name="tests.user_plugin.after")
def after(outcome: dict[str, Any]) -> dict[str, Any]:
    return outcome


def _one_line_naming_the_fixture(exc: pytest.ExceptionInfo[ConfigError]) -> None:
    message = str(exc.value)
    assert "\n" not in message and "task_always_eager=True" in message
    assert "seedance_celery_worker" in message


@pytest.mark.celery(task_always_eager=True)
def test_an_eager_poll_refuses_at_once_without_calling_the_api(
    seedance_app: Any, seedance_simulator: Simulator
) -> None:
    """Before the refusal, an eager poll ignored its countdown and re-ran itself inside itself, GET
    after GET (105 here, then IGNORED; RecursionError in the issue's set-up)."""
    sid = seedance_simulator.add_task([("queued", 600), ("succeeded", None)])
    with pytest.raises(ConfigError) as refused:
        seedance_worker.poll.apply_async((sid,)).get()
    _one_line_naming_the_fixture(refused)
    with pytest.raises(ConfigError) as refused:  # a chain applied eagerly raises it at once
        chain(seedance_worker.poll.s(sid), after.s()).apply_async().get()
    _one_line_naming_the_fixture(refused)
    assert seedance_simulator.requests(kind="get") == []
    assert get_store().get(sid) is None


@pytest.mark.celery(task_always_eager=True)
def test_eager_track_and_submit_refuse_before_registering_or_posting(
    seedance_app: Any, seedance_simulator: Simulator
) -> None:
    sid = seedance_simulator.add_task([("queued", 0.1), ("succeeded", None)])
    with pytest.raises(ConfigError) as refused:
        seedance_worker.track(sid)
    _one_line_naming_the_fixture(refused)
    with pytest.raises(ConfigError) as refused:
        seedance_worker.submit("seedance-1-5-pro-251215", [{"type": "text", "text": "a fox"}])
    _one_line_naming_the_fixture(refused)
    assert get_store().get(sid) is None
    assert seedance_simulator.requests(kind="create") == []
