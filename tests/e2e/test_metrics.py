"""Prometheus metrics: counted in the prefork children, served merged by the worker's main process."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import seedance_worker
from seedance_worker import metrics
from seedance_worker.engine.store import get_store
from seedance_worker.testing.simulator import SimConfig, Simulator
from tests.support.env import clean_redis, reset_caches
from tests.support.workers import Workers, worker_env

pytestmark = pytest.mark.slow

JOBS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


@pytest.fixture
def metered(env: pytest.MonkeyPatch, tmp_path: Path, redis_url: str) -> Iterator[tuple[Simulator, Workers, int]]:
    sim = Simulator(config=SimConfig(queued_s=0.3, running_s=0.5)).start()
    port = free_port()
    env.setenv("SEEDANCE_API_BASE_URL", sim.base_url)
    env.setenv("SEEDANCE_METRICS_PORT", str(port))
    env.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    reset_caches()
    clean_redis(redis_url)
    try:
        with Workers(tmp_path, n=1, concurrency=2) as ws:
            yield sim, ws, port
    finally:
        sim.stop()


def test_worker_serves_counts_of_20_jobs(metered: tuple[Simulator, Workers, int]) -> None:
    sim, ws, port = metered
    ids = [sim.add_task([("queued", 0.3), ("running", 0.5), ("succeeded", None)]) for _ in range(JOBS)]
    results = [seedance_worker.track(tid) for tid in ids]
    for res in results:
        assert res.get(timeout=45)["status"] == "succeeded"
    store = get_store()
    deadline = time.time() + 30
    while time.time() < deadline and not all((r := store.get(t)) is not None and r.handoff == "done" for t in ids):
        time.sleep(0.2)
    tokens = sum(int(sim.task(t)["usage_tokens"]) for t in ids)  # type: ignore[index]
    assert tokens > 0

    samples = scrape(port)
    deadline = time.time() + 10
    while time.time() < deadline and total(samples, "seedance_charged_tokens_total") < tokens:
        time.sleep(0.3)
        samples = scrape(port)

    # every poll counted once, by status; the terminal ones at least once per job
    assert total(samples, "seedance_polls_total", status="succeeded") >= JOBS
    assert total(samples, "seedance_polls_total") >= JOBS
    assert total(samples, "seedance_outcomes_total", status="succeeded") == JOBS
    assert total(samples, "seedance_http_responses_total", code="200") > 0
    assert total(samples, "seedance_handoff_latency_seconds_count") >= JOBS
    assert total(samples, "seedance_poll_lateness_seconds_count") > 0
    assert total(samples, "seedance_downloaded_bytes_total", kind="video") > 0
    assert total(samples, "seedance_charged_tokens_total") == tokens
    # the custom collector reads the due index from Redis: nothing left in flight
    assert ("seedance_jobs_inflight", ()) in samples
    assert samples[("seedance_jobs_inflight", ())] == 0
    # the prefork children both counted, merged by the multiprocess collector
    log = ws.logs()
    m = re.search(r"metrics on 127\.0\.0\.1:(\d+)/metrics \(multiprocess dir (\S+)\)", log)
    assert m and int(m.group(1)) == port, log[-2000:]
    mpdir = Path(m.group(2))
    assert len(list(mpdir.glob("counter_*.db"))) >= 2
    ws.procs[0].stop()
    assert not mpdir.exists(), "the temporary multiprocess dir is removed at worker shutdown"


def test_without_a_port_metrics_count_in_process_and_nothing_is_served() -> None:
    from prometheus_client import REGISTRY

    assert metrics.served_port() is None
    before = REGISTRY.get_sample_value("seedance_polls_total", {"status": "unit-test"}) or 0.0
    metrics.poll("unit-test")
    metrics.poll_lateness(-1.0)  # clock skew: counted as 0, never raises
    metrics.charged_tokens(None, None)
    assert REGISTRY.get_sample_value("seedance_polls_total", {"status": "unit-test"}) == before + 1


# The worker's own start-up path (metrics.start_for_worker, as wiring/signals.py calls it on
# worker_init) in a fresh process, so its multiprocess mode does not leak into this one.
_SERVE = """
import sys
from seedance_worker import metrics
metrics.start_for_worker()
print(metrics.served_port(), flush=True)
sys.stdin.read()
metrics.stop_server()
"""


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.parametrize(("addr", "on_127_0_0_2"), [(None, False), ("0.0.0.0", True)], ids=["default", "0.0.0.0"])
def test_metrics_bind_loopback_by_default_and_the_address_is_a_setting(addr: str | None, on_127_0_0_2: bool) -> None:
    """By default /metrics listens on 127.0.0.1 only (127.0.0.2, another local address, is refused:
    so would be the host's network address); SEEDANCE_METRICS_ADDR=0.0.0.0 opens it to every address,
    as deploy/ sets it for Prometheus in other containers and hosts."""
    env = worker_env()
    env["SEEDANCE_METRICS_PORT"] = str(free_port())
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("SEEDANCE_METRICS_ADDR", None)
    if addr is not None:
        env["SEEDANCE_METRICS_ADDR"] = addr
    proc = subprocess.Popen([sys.executable, "-c", _SERVE], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        assert _reachable("127.0.0.1", port)
        assert _reachable("127.0.0.2", port) is on_127_0_0_2
    finally:
        _, err = proc.communicate("", timeout=20)
    assert proc.returncode == 0, err[-2000:]


@pytest.mark.parametrize(("addr", "on_127_0_0_2"), [(None, False), ("0.0.0.0", True)], ids=["default", "0.0.0.0"])
def test_the_intake_metrics_follow_the_same_address_setting(addr: str | None, on_127_0_0_2: bool) -> None:
    """`seedance-worker intake` with SEEDANCE_METRICS_PORT serves /metrics on SEEDANCE_METRICS_ADDR too."""
    env = worker_env()
    port, metrics_at = free_port(), free_port()
    env.update(SEEDANCE_INTAKE_TOKEN="intake-metrics-token-0a1b2c3d", SEEDANCE_METRICS_PORT=str(metrics_at))
    env.pop("SEEDANCE_METRICS_ADDR", None)
    if addr is not None:
        env["SEEDANCE_METRICS_ADDR"] = addr
    proc = subprocess.Popen([sys.executable, "-m", "seedance_worker", "intake", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not _reachable("127.0.0.1", metrics_at):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=5)
            time.sleep(0.1)
        assert _reachable("127.0.0.2", metrics_at) is on_127_0_0_2
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
