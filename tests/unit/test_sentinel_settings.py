"""``sentinel://`` URLs, as kombu and Celery take them: parsed for the job store, refused at start
naming the setting when malformed, passed on to the bundled app's broker and backend with the master
name, taken from a host app's own transport options, and their passwords never shown."""

from __future__ import annotations

import pytest
from celery import Celery

from seedance_worker.errors import ConfigError
from seedance_worker.logs import secret_values
from seedance_worker.outage import OUTAGE_WAIT_S
from seedance_worker.settings import load_settings
from seedance_worker.settings_parts import SentinelURL, masked_url, sentinel_url
from seedance_worker.wiring import host
from seedance_worker.wiring.conf import celery_config
from tests.support.env import configure

REDIS_PW = "redis-pw-SECRET-5e7a"
SENTINEL_PW = "sentinel-pw-SECRET-8c1d"


def test_the_kombu_form_gives_every_sentinel_and_the_first_parts_credentials_and_db() -> None:
    url = f"sentinel://app:{REDIS_PW}@s1.internal:26380/3;sentinel://s2.internal/3;sentinel://10.0.0.9:5000"
    assert sentinel_url(url) == SentinelURL(
        nodes=(("s1.internal", 26380), ("s2.internal", 26379), ("10.0.0.9", 5000)),
        db=3,
        username="app",
        password=REDIS_PW,
    )
    assert sentinel_url("sentinel://:p%3Bw@s1").password == "p;w"  # a ';' in a password is %3B
    assert load_settings({"SEEDANCE_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("sentinel://", "a sentinel:// part has no host"),
        ("sentinel://s1:26379;", "every ';'-separated part must be a sentinel://host[:port] URL"),
        ("sentinel://s1;;sentinel://s2", "every ';'-separated part must be a sentinel://host[:port] URL"),
        ("sentinel://s1;redis://s2:6379", "every ';'-separated part must be a sentinel://host[:port] URL"),
        ("sentinel://s1:port", "has a port that is not a number"),
        ("sentinel://s1/zero", "the path of a sentinel:// URL is a database number, like /0"),
        ("sentinel://s1/1;sentinel://s2/2", "the sentinel:// parts name different databases"),
        ("sentinel://s1?master_name=x", "a sentinel:// URL takes no query"),
        ("sentinel://:a@s1;sentinel://:b@s2", "the sentinel:// parts carry different credentials"),
    ],
)
def test_a_bad_sentinel_url_fails_at_start_naming_the_setting(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"SEEDANCE_REDIS_URL": url})
    msg = str(info.value)
    assert msg.startswith("invalid configuration: SEEDANCE_REDIS_URL: "), msg
    assert why in msg, msg


def test_a_refused_sentinel_url_never_shows_a_password() -> None:
    url = f"sentinel://:{REDIS_PW}@s1:26379;sentinel://:{REDIS_PW}@s2:bad"
    with pytest.raises(ConfigError) as info:
        load_settings({"SEEDANCE_REDIS_URL": url})
    msg = str(info.value)
    assert "SEEDANCE_REDIS_URL" in msg and REDIS_PW not in msg
    assert "sentinel://***@s1:26379;sentinel://***@s2:bad" in msg


@pytest.mark.parametrize("name", ["", "two words", " "])
def test_a_bad_master_name_is_refused_by_name(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"SEEDANCE_REDIS_URL": "sentinel://s1", "SEEDANCE_REDIS_SENTINEL_MASTER": name})
    assert "SEEDANCE_REDIS_SENTINEL_MASTER: must be the master's name as the sentinels know it" in str(
        info.value
    )


def test_every_part_is_masked_and_every_password_redacted_from_logs() -> None:
    url = f"sentinel://u:{REDIS_PW}@s1:1/0;sentinel://u:{REDIS_PW}@s2:2/0"
    assert masked_url(url) == "sentinel://***@s1:1/0;sentinel://***@s2:2/0"
    # Without a following sentinel://, a ';' is part of the URL: the whole netloc stays masked.
    assert masked_url(f"redis://:{REDIS_PW};x@h:6379/0") == "redis://***@h:6379/0"
    s = load_settings({"SEEDANCE_REDIS_URL": url, "SEEDANCE_REDIS_SENTINEL_PASSWORD": SENTINEL_PW})
    assert REDIS_PW not in repr(s) and SENTINEL_PW not in repr(s)
    secrets = secret_values(s)
    assert REDIS_PW in secrets and SENTINEL_PW in secrets


def test_the_bundled_app_passes_the_master_name_to_broker_and_backend() -> None:
    s = load_settings({
        "SEEDANCE_REDIS_URL": "sentinel://s1:26379;sentinel://s2:26379",
        "SEEDANCE_REDIS_SENTINEL_MASTER": "video-ha",
        "SEEDANCE_REDIS_SENTINEL_PASSWORD": SENTINEL_PW,
    })  # fmt: skip
    conf = celery_config(s)
    assert conf["broker_url"] == conf["result_backend"] == "sentinel://s1:26379;sentinel://s2:26379"
    for options in (conf["broker_transport_options"], conf["result_backend_transport_options"]):
        assert options["master_name"] == "video-ha"
        assert options["sentinel_kwargs"]["password"] == SENTINEL_PW
    assert conf["broker_transport_options"]["visibility_timeout"] == s.visibility_timeout_s
    # Storing a result rides out a failover as long as a task does (outage.py), not 5 s.
    assert conf["result_backend_transport_options"]["retry_policy"]["timeout"] == OUTAGE_WAIT_S
    plain = celery_config(load_settings({"SEEDANCE_REDIS_URL": "redis://r:6379/0"}))
    assert "master_name" not in plain["broker_transport_options"]
    assert "master_name" not in plain["result_backend_transport_options"]
    assert plain["result_backend_transport_options"]["retry_policy"] == {"timeout": 5.0}


@pytest.mark.usefixtures("forget_host")
def test_a_host_on_sentinel_lends_its_url_master_name_and_sentinel_password(env: pytest.MonkeyPatch) -> None:
    """The job store follows the host's result backend with that backend's transport options; the
    broker's when only the broker is on Redis; SEEDANCE_REDIS_SENTINEL_MASTER still outranks both."""
    configure(env, redis_url=None, redis_sentinel_master=None)
    url = "sentinel://s1:26379/2;sentinel://s2:26379/2"
    app = Celery("host", broker="amqp://rabbit//", backend=url, set_as_current=False)
    app.conf.result_backend_transport_options = {
        "master_name": "results-ha",
        "sentinel_kwargs": {"password": SENTINEL_PW},
    }
    s = host.adopt(app, None)
    assert (s.redis_url, s.redis_sentinel_master) == (url, "results-ha")
    assert s.redis_sentinel_password is not None
    assert s.redis_sentinel_password.get_secret_value() == SENTINEL_PW

    broker_only = Celery("host2", broker=url, backend="rpc://", set_as_current=False)
    broker_only.conf.broker_transport_options = {"master_name": "broker-ha"}
    assert host.adopt(broker_only, None).redis_sentinel_master == "broker-ha"

    configure(env, redis_sentinel_master="from-env")
    assert host.adopt(app, None).redis_sentinel_master == "from-env"


@pytest.mark.usefixtures("forget_host")
def test_a_bad_host_sentinel_url_is_named_as_the_host_wrote_it(env: pytest.MonkeyPatch) -> None:
    configure(env, redis_url=None)
    app = Celery("host", broker="sentinel://s1:nope", set_as_current=False)
    with pytest.raises(ConfigError) as info:
        host.adopt(app, None)
    assert "app.conf broker_url: has a port that is not a number" in str(info.value)
