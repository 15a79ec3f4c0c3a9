"""A host app's configuration reaches seedance: install(settings=...) over app.conf over SEEDANCE_*,
the job store on the host's own Redis, unknown keys refused by name, the seedance queues consumed."""

from __future__ import annotations

import pytest
from celery import Celery

from seedance_worker.errors import ConfigError
from seedance_worker.settings import Settings, get_settings
from seedance_worker.wiring import host
from seedance_worker.wiring.app import install
from tests.support.env import configure

pytestmark = pytest.mark.usefixtures("forget_host")


def _app(**conf: object) -> Celery:
    app = Celery("host", broker="redis://broker.example:6379/1", backend="redis://results.example:6379/2",
                 set_as_current=False)  # fmt: skip
    app.conf.update(conf)
    return app


def test_conf_keys_override_the_environment_and_install_overrides_both(env: pytest.MonkeyPatch) -> None:
    """The order the README promises: install(settings=...) > app.conf seedance_* > SEEDANCE_*."""
    configure(env, poll_queue="from-env", post_queue="post-from-env", notify_max_attempts="4")
    app = _app(seedance_poll_queue="from-conf", seedance_post_queue="post-from-conf")
    s = host.adopt(app, {"poll_queue": "from-install"})
    assert (s.poll_queue, s.post_queue, s.notify_max_attempts) == ("from-install", "post-from-conf", 4)
    assert get_settings() == s  # the process's settings are the host's now


def test_a_settings_object_counts_only_what_its_caller_set(env: pytest.MonkeyPatch) -> None:
    """Settings(...) also reads SEEDANCE_*; those values must not outrank the host's app.conf."""
    configure(env, post_queue="post-from-env")
    app = _app(seedance_post_queue="post-from-conf")
    s = host.adopt(app, Settings(poll_queue="from-install"))
    assert (s.poll_queue, s.post_queue) == ("from-install", "post-from-conf")


def test_django_namespace_keys_are_read(env: pytest.MonkeyPatch) -> None:
    class DjangoSettings:
        CELERY_BROKER_URL = "redis://broker.example:6379/3"
        CELERY_SEEDANCE_POLL_QUEUE = "django-poll"
        CELERY_SEEDANCE_ON_SUCCEEDED = "myapp.tasks.transcode"

    app = Celery("django_host", set_as_current=False)
    app.config_from_object(DjangoSettings, namespace="CELERY")
    configure(env, redis_url=None)
    s = host.adopt(app, None)
    assert s.poll_queue == "django-poll" and s.on_succeeded == ["myapp.tasks.transcode"]
    assert s.redis_url == "redis://broker.example:6379/3"  # the host's broker, being Redis


def test_an_unknown_conf_key_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"seedance_pol_queue is not a known setting \(did you mean "
                                          r"seedance_poll_queue\?\)"):  # fmt: skip
        host.adopt(_app(seedance_pol_queue="x"), None)


def test_the_job_store_defaults_to_the_hosts_result_backend_then_its_broker(env: pytest.MonkeyPatch) -> None:
    configure(env, redis_url=None)
    assert host.adopt(_app(), None).redis_url == "redis://results.example:6379/2"
    rpc = Celery("h", broker="redis://broker.example:6379/1", backend="rpc://", set_as_current=False)
    assert host.adopt(rpc, None).redis_url == "redis://broker.example:6379/1"
    named = _app(seedance_redis_url="redis://jobs.example:6379/5")
    assert host.adopt(named, None).redis_url == "redis://jobs.example:6379/5"


def test_a_host_without_redis_must_name_one(env: pytest.MonkeyPatch) -> None:
    configure(env, redis_url=None)
    amqp = Celery("h", broker="amqp://guest@rabbit//", backend="rpc://", set_as_current=False)
    with pytest.raises(ConfigError, match=r"set seedance_redis_url in app\.conf"):
        host.adopt(amqp, None)


def test_forget_returns_to_the_environment(env: pytest.MonkeyPatch) -> None:
    configure(env, poll_queue="from-env")
    host.adopt(_app(seedance_poll_queue="from-conf"), None)
    assert get_settings().poll_queue == "from-conf"
    host.forget()
    assert get_settings().poll_queue == "from-env"


def test_install_adds_the_seedance_queues_beside_the_default_one(env: pytest.MonkeyPatch) -> None:
    """A worker started without -Q consumes app.conf.task_queues: ours must be in it, the host's kept."""
    app = _app(seedance_poll_queue="p", seedance_post_queue="q")
    install(app)
    assert [q.name for q in app.conf.task_queues] == ["celery", "p", "q"]
    assert app.amqp.queues["celery"].routing_key == "celery"


def test_a_bad_conf_value_is_named_as_the_host_wrote_it(env: pytest.MonkeyPatch) -> None:
    """A bad app.conf value names its app.conf key (Django's CELERY_SEEDANCE_* spelling included), and
    a bad install() value its field, never a SEEDANCE_* variable the host never set."""
    with pytest.raises(ConfigError, match=r"app\.conf seedance_poll_min_interval_s: .*\(got -1\)"):
        host.adopt(_app(seedance_poll_min_interval_s=-1), None)

    class DjangoSettings:
        CELERY_BROKER_URL = "redis://broker.example:6379/3"
        CELERY_SEEDANCE_NOTIFY_MAX_ATTEMPTS = "many"

    app = Celery("django_host", set_as_current=False)
    app.config_from_object(DjangoSettings, namespace="CELERY")
    with pytest.raises(ConfigError, match=r"app\.conf CELERY_SEEDANCE_NOTIFY_MAX_ATTEMPTS: ") as info:
        host.adopt(app, None)
    assert "SEEDANCE_NOTIFY_MAX_ATTEMPTS:" not in str(info.value).replace("CELERY_SEEDANCE", "")
    with pytest.raises(ConfigError, match=r"install\(settings=\.\.\.\) post_queue: "):
        host.adopt(_app(), {"post_queue": ""})


def test_on_status_change_takes_a_task_name_or_a_signature(env: pytest.MonkeyPatch) -> None:
    """SEEDANCE_ON_STATUS_CHANGE: a name, or a signature (JSON, or a Signature given to install())."""
    from celery import signature

    assert host.adopt(_app(), {"on_status_change": "myapp.progress"}).on_status_change == "myapp.progress"
    sig = signature("myapp.progress", kwargs={"channel": "ops"})
    got = host.adopt(_app(), {"on_status_change": sig}).on_status_change
    assert got is not None and '"task": "myapp.progress"' in got and '"channel": "ops"' in got
    with pytest.raises(ConfigError, match="on_status_change: a JSON signature needs a"):
        host.adopt(_app(), {"on_status_change": '{"args": []}'})
