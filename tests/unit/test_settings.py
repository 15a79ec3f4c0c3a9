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
    assert s.on_failed == ["seedance.notify"]
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
