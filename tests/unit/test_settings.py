"""Settings: SEEDANCE_* parsing, typos and bad values named, secrets hidden."""

from __future__ import annotations

import pytest

from seedance_worker.errors import ConfigError
from seedance_worker.settings import load_settings


def test_defaults_match_the_interface() -> None:
    """Defaults of the README's settings table."""
    s = load_settings({})
    assert s.api_base_url == "https://ark.ap-southeast.bytepluses.com/api/v3"
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.on_succeeded == ["seedance.download_video", "seedance.charge_usage", "seedance.notify"]
    assert s.on_failed == ["seedance.charge_usage", "seedance.notify"]
    assert "*.volces.com" in s.download_allowed_hosts and "*.bytepluses.com" in s.download_allowed_hosts
    assert s.poll_min_interval_s < s.poll_max_interval_s
    assert (s.intake_header_timeout_s, s.intake_body_timeout_s, s.intake_max_connections) == (10, 10, 64)
    assert s.intake_poll_floor_s() == s.poll_min_interval_s and s.intake_shared_path


def test_typo_is_named_with_the_closest_setting() -> None:
    """A misspelt variable stops start-up naming it and the likely intended name."""
    with pytest.raises(ConfigError) as info:
        load_settings({"SEEDANCE_POLL_MAX_INTERVL_S": "3"})
    msg = str(info.value)
    assert "SEEDANCE_POLL_MAX_INTERVL_S" in msg and "SEEDANCE_POLL_MAX_INTERVAL_S" in msg


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"SEEDANCE_POLL_MAX_INTERVAL_S": "soon"}, "SEEDANCE_POLL_MAX_INTERVAL_S"),
        ({"SEEDANCE_REDIS_URL": "http://x"}, "SEEDANCE_REDIS_URL"),
        ({"SEEDANCE_NOTIFY_URL": "ftp://x/y"}, "SEEDANCE_NOTIFY_URL"),
        ({"SEEDANCE_NOTIFY_SECRET": "whsec_not base64!"}, "SEEDANCE_NOTIFY_SECRET"),
        ({"SEEDANCE_POLL_MIN_INTERVAL_S": "90"}, "SEEDANCE_POLL_MIN_INTERVAL_S"),
        ({"SEEDANCE_API_BASE_URL": "not a url"}, "SEEDANCE_API_BASE_URL"),
        ({"SEEDANCE_METRICS_PORT": "70000"}, "SEEDANCE_METRICS_PORT"),
        ({"SEEDANCE_INTAKE_MAX_CONNECTIONS": "0"}, "SEEDANCE_INTAKE_MAX_CONNECTIONS"),
        ({"SEEDANCE_INTAKE_HEADER_TIMEOUT_S": "0"}, "SEEDANCE_INTAKE_HEADER_TIMEOUT_S"),
        ({"SEEDANCE_INTAKE_BODY_TIMEOUT_S": "forever"}, "SEEDANCE_INTAKE_BODY_TIMEOUT_S"),
        ({"SEEDANCE_INTAKE_POLL_MIN_INTERVAL_S": "-1"}, "SEEDANCE_INTAKE_POLL_MIN_INTERVAL_S"),
        ({"SEEDANCE_INTAKE_SHARED_PATH": "maybe"}, "SEEDANCE_INTAKE_SHARED_PATH"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], name: str) -> None:
    """Each bad value fails with the variable's name in the message."""
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert name in str(info.value)


def test_secrets_never_in_repr_or_errors() -> None:
    """The API key and webhook secret are SecretStr: not in repr, str or a validation message."""
    key = "ark-live-key-ABCDEF123456"
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    s = load_settings({"SEEDANCE_API_KEY": key, "SEEDANCE_NOTIFY_SECRET": secret})
    assert key not in repr(s) and secret not in repr(s) and key not in str(s.model_dump())
    assert s.api_key_value() == key
    with pytest.raises(ConfigError) as info:
        load_settings({"SEEDANCE_API_KEY": key, "SEEDANCE_NOTIFY_SECRET": "whsec_***bad***"})
    assert "bad" not in str(info.value) and key not in str(info.value)


def test_comma_lists() -> None:
    """Comma-separated lists for chains and hosts; an empty value means an empty chain."""
    s = load_settings({"SEEDANCE_ON_SUCCEEDED": "a.b, c.d", "SEEDANCE_ON_FAILED": "",
                       "SEEDANCE_DOWNLOAD_ALLOWED_HOSTS": "*"})  # fmt: skip
    assert s.on_succeeded == ["a.b", "c.d"] and s.on_failed == [] and s.download_allowed_hosts == ["*"]


def test_countdown_cap_near_visibility_timeout_is_refused() -> None:
    """A countdown cap above half the visibility timeout is refused with both names."""
    s = load_settings({"SEEDANCE_POLL_COUNTDOWN_CAP_S": "2000", "SEEDANCE_VISIBILITY_TIMEOUT_S": "3600"})
    with pytest.raises(ConfigError) as info:
        s.check_visibility_timeout()
    assert "SEEDANCE_POLL_COUNTDOWN_CAP_S" in str(info.value) and "SEEDANCE_VISIBILITY_TIMEOUT_S" in str(
        info.value
    )
    load_settings({}).check_visibility_timeout()


# --- issue 14: URL credentials hidden, new settings validated ---------------------------------------

REDIS_PASSWORD = "redis-pw-SECRET-91ab"
NOTIFY_PASSWORD = "notify-pw-SECRET-22cd"
NOTIFY_TOKEN = "notify-tok-SECRET-33ef"


def test_repr_and_str_hide_url_credentials() -> None:
    """The Redis password and the notify URL's user:password and query token are not in repr/str
    (a log line or a traceback that prints Settings); the values themselves are untouched."""
    s = load_settings({
        "SEEDANCE_REDIS_URL": f"redis://worker:{REDIS_PASSWORD}@redis.internal:6379/0",
        "SEEDANCE_NOTIFY_URL": f"https://hooks:{NOTIFY_PASSWORD}@hooks.example.com/in?token={NOTIFY_TOKEN}",
    })  # fmt: skip
    for text in (repr(s), str(s)):
        for secret in (REDIS_PASSWORD, NOTIFY_PASSWORD, NOTIFY_TOKEN, "worker:", "hooks:"):
            assert secret not in text, (secret, text)
        assert "redis_url='redis://***@redis.internal:6379/0'" in text
        assert "notify_url='https://***@hooks.example.com/in?***'" in text
    assert s.redis_url == f"redis://worker:{REDIS_PASSWORD}@redis.internal:6379/0"
    assert s.notify_url is not None and NOTIFY_TOKEN in s.notify_url


def test_a_refused_url_setting_hides_its_query_token() -> None:
    """A URL refused at start is named with its host, without its password or query string."""
    with pytest.raises(ConfigError) as info:
        load_settings({"SEEDANCE_NOTIFY_URL": f"ftp://u:{NOTIFY_PASSWORD}@x/y?token={NOTIFY_TOKEN}"})
    msg = str(info.value)
    assert "SEEDANCE_NOTIFY_URL" in msg and "ftp://***@x/y?***" in msg
    assert NOTIFY_PASSWORD not in msg and NOTIFY_TOKEN not in msg


def test_metrics_listen_on_loopback_unless_told_otherwise() -> None:
    """SEEDANCE_METRICS_ADDR defaults to 127.0.0.1; any IP literal is accepted, anything else named."""
    assert load_settings({}).metrics_addr == "127.0.0.1"
    assert load_settings({"SEEDANCE_METRICS_ADDR": "0.0.0.0"}).metrics_addr == "0.0.0.0"
    assert load_settings({"SEEDANCE_METRICS_ADDR": " :: "}).metrics_addr == "::"
    with pytest.raises(ConfigError) as info:
        load_settings({"SEEDANCE_METRICS_ADDR": "everywhere"})
    assert str(info.value) == (
        "invalid configuration: SEEDANCE_METRICS_ADDR: must be an IP address to listen on, like "
        "127.0.0.1, 0.0.0.0 or :: (got 'everywhere')"
    )


def test_api_body_cap_has_a_sane_default_and_bounds() -> None:
    """SEEDANCE_API_MAX_BODY_BYTES: 1 MiB by default; below 4 KiB (or not a number) is named."""
    assert load_settings({}).api_max_body_bytes == 1024 * 1024
    for bad in ("100", "lots"):
        with pytest.raises(ConfigError, match="SEEDANCE_API_MAX_BODY_BYTES"):
            load_settings({"SEEDANCE_API_MAX_BODY_BYTES": bad})
