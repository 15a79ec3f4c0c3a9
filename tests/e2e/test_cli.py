"""The command line as a user runs it: simulate, status, typos, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from seedance_worker.testing.redis import free_port

CLI = str(Path(sys.executable).parent / "seedance-worker")


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items()}
    full.update(env or {})
    return subprocess.run([CLI, *args], env=full, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def simulate() -> Iterator[str]:
    """`seedance-worker simulate --port P` in its own process; yields the API base URL."""
    port = free_port()
    proc = subprocess.Popen([CLI, "simulate", "--port", str(port), "--queued-s", "0.1", "--running-s", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert f"127.0.0.1:{port}/api/v3" in line, line
    try:
        yield f"http://127.0.0.1:{port}/api/v3"
    finally:
        proc.terminate()
        proc.wait(10)


def test_simulate_then_status_json(simulate: str) -> None:
    """`status ID --json` prints the snapshot from the simulator started by `simulate`."""
    r = requests.post(simulate + "/contents/generations/tasks", headers={"Authorization": "Bearer k"},
                      json={"model": "seedance-1-5-pro-251215", "content": [{"type": "text", "text": "cat"}]})  # fmt: skip
    task_id = r.json()["id"]
    time.sleep(0.5)
    out = run("status", task_id, "--json", env={"SEEDANCE_API_BASE_URL": simulate})
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    assert snap["id"] == task_id and snap["status"] == "succeeded" and snap["content"]["video_url"]
    human = run("status", task_id, env={"SEEDANCE_API_BASE_URL": simulate})
    assert human.returncode == 0 and task_id in human.stdout


def test_status_unknown_id_exits_non_zero(simulate: str) -> None:
    """An unknown id exits 1 with a clear message naming the id."""
    out = run("status", "cgt-20990101000000-zzzzz", env={"SEEDANCE_API_BASE_URL": simulate})
    assert out.returncode == 1
    assert "cgt-20990101000000-zzzzz not found" in out.stderr and "Traceback" not in out.stderr


def test_typo_in_a_variable_fails_at_start() -> None:
    """SEEDANCE_POLL_MAX_INTERVL_S (a typo) stops `status` with the name and a suggestion."""
    out = run("status", "X", env={"SEEDANCE_POLL_MAX_INTERVL_S": "3"})
    assert out.returncode == 2
    assert "SEEDANCE_POLL_MAX_INTERVL_S" in out.stderr and "SEEDANCE_POLL_MAX_INTERVAL_S" in out.stderr
    assert "Traceback" not in out.stderr


def test_python_dash_m_works() -> None:
    """`python -m seedance_worker --version` runs."""
    out = subprocess.run(
        [sys.executable, "-m", "seedance_worker", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith("seedance-worker ")


def test_malformed_task_id_is_refused_clearly() -> None:
    """A malformed id is refused before any request, with a message saying so."""
    out = run("status", "../../etc/passwd")
    assert out.returncode == 1 and "malformed task id" in out.stderr


def test_wrong_api_key_is_named() -> None:
    """A key the API refuses: exit 1, the message says authentication failed, the key is not shown."""
    port = free_port()
    proc = subprocess.Popen([CLI, "simulate", "--port", str(port), "--require-key", "right-key"],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        env = {
            "SEEDANCE_API_BASE_URL": f"http://127.0.0.1:{port}/api/v3",
            "SEEDANCE_API_KEY": "wrong-key-XYZ",
        }
        out = run("status", "cgt-20990101000000-zzzzz", env=env)
    finally:
        proc.terminate()
        proc.wait(10)
    assert out.returncode == 1 and "AuthenticationFailed" in out.stderr
    assert "wrong-key-XYZ" not in out.stderr + out.stdout


def test_unreachable_base_url_is_clear() -> None:
    """Nothing listening at the base URL: exit 1 with ConnectionFailed, no traceback."""
    out = run("status", "cgt-20990101000000-zzzzz", env={"SEEDANCE_API_BASE_URL": "http://127.0.0.1:9/api/v3",
                                                         "SEEDANCE_HTTP_CONNECT_TIMEOUT_S": "1"})  # fmt: skip
    assert out.returncode == 1 and "ConnectionFailed" in out.stderr and "Traceback" not in out.stderr
