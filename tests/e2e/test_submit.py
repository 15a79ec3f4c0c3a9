"""submit(): at most one remote task per idempotency key, across processes and failures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from seedance_worker import errors
from seedance_worker.submit import create_once, submit
from seedance_worker.testing.simulator import SimConfig, Simulator
from tests.support.env import reset_caches

CLI = str(Path(sys.executable).parent / "seedance-worker")
MODEL = "seedance-1-5-pro-251215"
_RUN = time.time_ns()
KEY_REDELIVER = f"k-redeliver-{_RUN}"
KEY_AMBIGUOUS = f"k-ambiguous-{_RUN}"
KEY_429 = f"k-429-{_RUN}"


@pytest.fixture
def slow_sim(env: pytest.MonkeyPatch) -> Iterator[Simulator]:
    """A simulator whose create takes 0.5 s, so concurrent submits overlap for real."""
    s = Simulator(config=SimConfig(latency_s=0.5)).start()
    env.setenv("SEEDANCE_API_BASE_URL", s.base_url)
    reset_caches()
    yield s
    s.stop()


def test_same_key_from_three_processes_creates_one_task(slow_sim: Simulator) -> None:
    """Three `seedance-worker submit` processes with one key: one POST, one remote id for all."""
    key = f"order-{time.time_ns()}"
    env = dict(os.environ)
    procs = [
        subprocess.Popen([CLI, "submit", "--model", MODEL, "--prompt", "a red fox", "--idempotency-key", key],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    ids = {o[0].strip() for o in outs}
    assert len(ids) == 1 and next(iter(ids)).startswith("cgt-")
    assert len(slow_sim.requests(kind="create")) == 1


def test_redelivered_submit_tracks_the_recorded_id(sim: Simulator) -> None:
    """A second submit with the same key returns the first remote id without posting."""
    a, res_a = submit(MODEL, [{"type": "text", "text": "cat"}], idempotency_key=KEY_REDELIVER)
    b, res_b = submit(MODEL, [{"type": "text", "text": "cat"}], idempotency_key=KEY_REDELIVER)
    assert a == b and res_a.id == res_b.id
    assert len(sim.requests(kind="create")) == 1


def test_ambiguous_post_is_recorded_and_never_reposted(sim: Simulator, env: pytest.MonkeyPatch) -> None:
    """A create that times out is recorded as ambiguous; the same key then refuses to post again."""
    env.setenv("SEEDANCE_HTTP_READ_TIMEOUT_S", "0.3")
    reset_caches()
    sim.configure(timeout_rate=1.0, timeout_sleep_s=1.0)
    with pytest.raises(errors.SubmitAmbiguous):
        submit(MODEL, [{"type": "text", "text": "cat"}], idempotency_key=KEY_AMBIGUOUS)
    sim.configure(timeout_rate=0.0)
    with pytest.raises(errors.SubmitAmbiguous, match="ended ambiguously"):
        submit(MODEL, [{"type": "text", "text": "cat"}], idempotency_key=KEY_AMBIGUOUS)
    time.sleep(1.0)  # the timed-out request is logged when the simulator finishes answering it
    assert len(sim.requests(kind="create")) == 1


def test_refused_create_frees_the_key(sim: Simulator) -> None:
    """A 429 on create made nothing: the key is released and a later submit posts."""
    from seedance_worker.settings import get_settings
    from seedance_worker.submit import build_request

    sim.configure(rate_429=1.0, retry_after_s=1)
    req = build_request(MODEL, [{"type": "text", "text": "cat"}])
    with pytest.raises(errors.RateLimited):
        create_once(req, KEY_429, get_settings())
    sim.configure(rate_429=0.0)
    assert create_once(req, KEY_429, get_settings()).startswith("cgt-")


def test_invalid_request_is_refused_before_posting(sim: Simulator) -> None:
    """A create request outside the documented ranges raises InvalidRequest naming the field."""
    with pytest.raises(errors.InvalidRequest, match="execution_expires_after"):
        submit(MODEL, [{"type": "text", "text": "cat"}], execution_expires_after=10)
    assert sim.requests(kind="create") == []
