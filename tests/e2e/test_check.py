"""`seedance-worker check`: exit 0 when Redis, the API and the download dir are usable; else one line why."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from seedance_worker.check import run_checks
from seedance_worker.settings import load_settings
from seedance_worker.testing.simulator import SimConfig, Simulator
from tests.support.workers import worker_env

KEY = "check-test-key-0123456789"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when we return: nothing listens there


@pytest.fixture(scope="module")
def keyed_sim() -> Iterator[Simulator]:
    """A simulator that accepts one key only (like `seedance-worker simulate --require-key`)."""
    sim = Simulator(config=SimConfig(api_keys=frozenset({KEY}))).start()
    yield sim
    sim.stop()


def run_check(tmp_path: Path, sim: Simulator, **overrides: str) -> subprocess.CompletedProcess[str]:
    env = worker_env()
    env.update({"SEEDANCE_API_BASE_URL": sim.base_url, "SEEDANCE_API_KEY": KEY,
                "SEEDANCE_DOWNLOAD_DIR": str(tmp_path / "videos")})  # fmt: skip
    env.update(overrides)
    return subprocess.run([sys.executable, "-m", "seedance_worker", "check"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=str(tmp_path))  # fmt: skip


def one_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode != 0, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_all_usable_exits_0(tmp_path: Path, keyed_sim: Simulator) -> None:
    out = run_check(tmp_path, keyed_sim)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert (tmp_path / "videos").is_dir()


def test_redis_down(tmp_path: Path, keyed_sim: Simulator) -> None:
    line = one_line(run_check(tmp_path, keyed_sim, SEEDANCE_REDIS_URL=f"redis://:pw-hidden@127.0.0.1:{closed_port()}/0"))
    assert "Redis unusable (SEEDANCE_REDIS_URL)" in line and "pw-hidden" not in line


def test_api_unreachable(tmp_path: Path, keyed_sim: Simulator) -> None:
    line = one_line(run_check(tmp_path, keyed_sim, SEEDANCE_API_BASE_URL=f"http://127.0.0.1:{closed_port()}/api/v3"))
    assert "API unusable (SEEDANCE_API_BASE_URL)" in line


def test_wrong_api_key(tmp_path: Path, keyed_sim: Simulator) -> None:
    line = one_line(run_check(tmp_path, keyed_sim, SEEDANCE_API_KEY="not-the-right-key-42"))
    assert "API refused the key (SEEDANCE_API_KEY)" in line and "not-the-right-key-42" not in line


def test_download_dir_not_writable(tmp_path: Path, keyed_sim: Simulator) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    line = one_line(run_check(tmp_path, keyed_sim, SEEDANCE_DOWNLOAD_DIR=str(blocker / "videos")))
    assert "download dir unusable (SEEDANCE_DOWNLOAD_DIR=" in line


def test_each_problem_is_listed(tmp_path: Path, keyed_sim: Simulator) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    settings = load_settings({
        "SEEDANCE_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0", "SEEDANCE_API_BASE_URL": keyed_sim.base_url,
        "SEEDANCE_API_KEY": "wrong-key-xyz", "SEEDANCE_DOWNLOAD_DIR": str(blocker / "v"),
        "SEEDANCE_INTAKE_URL": "https://intake.example.com", "SEEDANCE_INTAKE_TOKEN": "short",
    })  # fmt: skip
    problems = run_checks(settings)
    assert [p.split(" ", 2)[:2] for p in problems] == [
        ["Redis", "unusable"], ["API", "refused"], ["download", "dir"], ["callback", "intake"]
    ]
    assert all("\n" not in p for p in problems)


def test_each_account_is_checked_and_named(tmp_path: Path, keyed_sim: Simulator) -> None:
    """A SEEDANCE_ACCOUNTS account with a key its API refuses is named (never its key); right keys: ok."""
    other = Simulator(config=SimConfig(api_keys=frozenset({"volc-key-0123456789"}))).start()
    try:
        good = {"volc": {"api_key": "volc-key-0123456789", "base_url": other.base_url}}
        out = run_check(tmp_path, keyed_sim, SEEDANCE_ACCOUNTS=json.dumps(good))
        assert out.returncode == 0, out.stderr
        bad = {"volc": {"api_key": "volc-wrong-key-987654", "base_url": other.base_url}}
        line = one_line(run_check(tmp_path, keyed_sim, SEEDANCE_ACCOUNTS=json.dumps(bad)))
        assert "API refused the key (account 'volc' of SEEDANCE_ACCOUNTS)" in line
        assert "volc-wrong-key-987654" not in line
    finally:
        other.stop()
