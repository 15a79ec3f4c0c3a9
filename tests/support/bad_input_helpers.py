"""Helpers of tests/e2e/test_bad_input.py: run the CLI and the worker the way a user does, look for leaks."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

CLI = str(Path(sys.executable).parent / "seedance-worker")

# Secrets the bad-input tests configure; none of them may ever show up in what a user sees.
API_KEY = "sk-badinput-SECRET-4f2a9c"
WRONG_KEY = "sk-wrong-SECRET-77aa01"
NOTIFY_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
REDIS_PASSWORD = "hunter2"
SECRETS = (API_KEY, WRONG_KEY, NOTIFY_SECRET, NOTIFY_SECRET.removeprefix("whsec_"), REDIS_PASSWORD)

UNKNOWN_ID = "cgt-20990101000000-zzzzz"


def cli(
    *args: str, env: dict[str, str] | None = None, drop: tuple[str, ...] = (), timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``seedance-worker ARGS`` with this process's environment plus ``env`` (minus ``drop``)."""
    full = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PYTEST_")}
    full.update(env or {})
    return subprocess.run([CLI, *args], env=full, capture_output=True, text=True, timeout=timeout)


def main(
    *args: str, env: dict[str, str] | None = None, drop: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``seedance_worker.cli.main(ARGS)`` in this process, as cheap stand-in for ``cli()``.

    The same code path and the same stdout/stderr text as the installed command (the environment is
    changed for the call and every cache rebuilt); an exception escaping ``main`` is turned into the
    traceback the user would see, so a test asserting "no traceback" fails the same way.
    """
    from seedance_worker.cli import main as cli_main
    from tests.support.env import reset_caches

    saved = dict(os.environ)
    for name in drop:
        os.environ.pop(name, None)
    os.environ.update(env or {})
    reset_caches()
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli_main(list(args))
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:
                err.write(traceback.format_exc())
                code = 1
    finally:
        os.environ.clear()
        os.environ.update(saved)
        reset_caches()
    return subprocess.CompletedProcess(["seedance-worker", *args], code, out.getvalue(), err.getvalue())


def worker_start_cmd() -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "seedance_worker", "worker", "-P", "solo",
        "--without-mingle", "--without-gossip", "--without-heartbeat",
    ]  # fmt: skip


def assert_no_secret(*texts: Any) -> None:
    """None of the configured secrets (API keys, webhook secret, Redis password) in any of ``texts``."""
    for text in texts:
        if isinstance(text, str):
            blob = text
        elif isinstance(text, BaseException):
            blob = f"{text} {text!r} {text.args!r}"
        else:
            blob = json.dumps(text, default=str)
        for secret in SECRETS:
            assert secret not in blob, f"secret {secret[:6]}... shown in: {blob[:500]}"


def assert_clean_failure(out: subprocess.CompletedProcess[str], code: int) -> str:
    """Exit ``code``, one clear line on stderr, no traceback, no secret; returns stderr."""
    assert out.returncode == code, (out.returncode, out.stdout[-2000:], out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert_no_secret(out.stdout, out.stderr)
    return out.stderr


def jobs_json(env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """``seedance-worker jobs --json`` as a user sees it (and checked for leaked secrets)."""
    out = main("jobs", "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert_no_secret(out.stdout, out.stderr)
    data: list[dict[str, Any]] = json.loads(out.stdout)
    return data


def job_of(task_id: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    rows = [j for j in jobs_json(env) if j["task_id"] == task_id]
    assert len(rows) == 1, rows
    return rows[0]
