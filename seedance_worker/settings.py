"""All configuration, from ``SEEDANCE_*`` environment variables, validated once at start.

A misspelt ``SEEDANCE_*`` name or a bad value raises ``ConfigError`` naming the variable (and the
closest known name), so a typo fails at start instead of silently falling back to a default.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import SplitResult, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from seedance_worker.errors import ConfigError

ENV_PREFIX = "SEEDANCE_"

DEFAULT_ALLOWED_HOSTS = ["*.volces.com", "*.bytepluses.com"]

# The API keeps a task 7 days after its creation; a charge's ledger entry outlives that by a day.
MIN_LEDGER_RETENTION_DAYS = 8

CommaList = Annotated[list[str], NoDecode]


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of seedance-worker. Field ``x_y`` is read from ``SEEDANCE_X_Y``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        case_sensitive=False,
        validate_default=True,
        frozen=True,
    )

    # --- the remote API -------------------------------------------------------------------------
    api_key: SecretStr | None = None
    api_base_url: str = "https://ark.ap-southeast.bytepluses.com/api/v3"
    http_connect_timeout_s: float = Field(5.0, gt=0, le=120)
    http_read_timeout_s: float = Field(30.0, gt=0, le=600)
    api_max_body_bytes: int = Field(1024 * 1024, ge=4096, le=256 * 1024 * 1024)

    # --- Redis and Celery -----------------------------------------------------------------------
    redis_url: str = "redis://localhost:6379/0"
    poll_queue: str = Field("seedance.poll", min_length=1)
    post_queue: str = Field("seedance.post", min_length=1)
    visibility_timeout_s: int = Field(3600, ge=30)
    result_expires_s: int = Field(3 * 86400, ge=60)
    job_ttl_s: int = Field(7 * 86400, ge=60)

    # --- the poll schedule ----------------------------------------------------------------------
    poll_first_delay_s: float = Field(5.0, ge=0)
    poll_min_interval_s: float = Field(4.5, gt=0)
    poll_max_interval_s: float = Field(60.0, gt=0)
    poll_queued_interval_s: float = Field(15.0, gt=0)
    poll_running_interval_s: float = Field(5.0, gt=0)
    poll_backoff_factor: float = Field(1.5, ge=1.0, le=10.0)
    poll_running_backoff_factor: float = Field(1.0, ge=1.0, le=10.0)
    poll_deadline_grace_s: float = Field(900.0, ge=0)
    poll_countdown_cap_s: float = Field(300.0, gt=0)
    poll_max_crashes: int = Field(5, ge=1)
    poll_lease_grace_s: float = Field(15.0, gt=0)
    poll_park_after_s: float = Field(20.0, ge=0)
    dispatch_interval_s: float = Field(0.5, gt=0, le=10)
    handoff_lease_s: float = Field(900.0, ge=5)

    # --- fleet-wide rate limit ------------------------------------------------------------------
    rate_limit_rps: float = Field(0.0, ge=0)
    rate_limit_burst: int = Field(5, ge=1)

    # --- downstream -----------------------------------------------------------------------------
    on_succeeded: CommaList = ["seedance.download_video", "seedance.charge_usage", "seedance.notify"]
    on_failed: CommaList = ["seedance.notify"]
    download_dir: Path = Path("./videos")
    download_allowed_hosts: CommaList = list(DEFAULT_ALLOWED_HOSTS)
    download_max_bytes: int = Field(2 * 1024**3, gt=0)
    download_timeout_s: float = Field(120.0, gt=0)
    download_allow_private_hosts: bool = False
    download_attempt_budget_s: float = Field(1800.0, gt=0)
    download_min_bytes_per_s: int = Field(1024, ge=0)
    notify_url: str | None = None
    notify_secret: SecretStr | None = None
    notify_timeout_s: float = Field(10.0, gt=0)
    notify_max_attempts: int = Field(8, ge=1)
    notify_retry_for_s: float = Field(3600.0, gt=0)
    price_table: Path | None = None
    currency: str = "USD"
    ledger_retention_days: int = 40
    metadata_max_bytes: int = Field(16 * 1024, ge=2)
    track_max_ids: int = Field(10_000, ge=1)

    # --- operations -----------------------------------------------------------------------------
    log_json: bool = False
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_addr: str = "127.0.0.1"
    intake_url: str | None = None
    intake_token: SecretStr | None = None
    intake_header_timeout_s: float = Field(10.0, gt=0, le=300)
    intake_body_timeout_s: float = Field(10.0, gt=0, le=300)
    intake_max_connections: int = Field(64, ge=1, le=10_000)
    intake_poll_min_interval_s: float | None = Field(None, gt=0, le=3600)
    intake_shared_path: bool = True
    sweep_interval_s: float = Field(5.0, gt=0)

    @field_validator("on_succeeded", "on_failed", "download_allowed_hosts", mode="before")
    @classmethod
    def _commas(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("api_base_url", "notify_url", "intake_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host")
        _check_port(parts)
        return value.rstrip("/")

    @field_validator("metrics_addr")
    @classmethod
    def _listen_addr(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError("must be an IP address to listen on, like 127.0.0.1, 0.0.0.0 or ::") from None

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            scheme = parts.scheme or "no"
            raise ValueError(f"must be a redis://, rediss:// or unix:// URL, not {scheme} scheme")
        _check_port(parts)
        return value

    @field_validator("ledger_retention_days")
    @classmethod
    def _ledger_retention(cls, value: int) -> int:
        # A ledger entry is also the charge's idempotency key: the API keeps a task 7 days, and a
        # task tracked again after its entry was dropped would be charged a second time.
        if value < MIN_LEDGER_RETENTION_DAYS:
            raise ValueError(
                f"must be at least {MIN_LEDGER_RETENTION_DAYS} days: the API keeps a task 7 days, and "
                "one tracked again after its ledger entry is gone would be charged twice"
            )
        return value

    @field_validator("notify_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        raw = value.get_secret_value()
        body = raw.removeprefix("whsec_")
        if not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", body) or len(body) % 4:
            raise ValueError("must be a Standard Webhooks secret: 'whsec_' followed by base64")
        return value

    @model_validator(mode="after")
    def _schedule_consistent(self) -> Settings:
        if self.poll_min_interval_s > self.poll_max_interval_s:
            raise ValueError(
                f"SEEDANCE_POLL_MIN_INTERVAL_S ({self.poll_min_interval_s}) is above "
                f"SEEDANCE_POLL_MAX_INTERVAL_S ({self.poll_max_interval_s})"
            )
        if self.poll_countdown_cap_s < self.poll_max_interval_s:
            raise ValueError(
                f"SEEDANCE_POLL_COUNTDOWN_CAP_S ({self.poll_countdown_cap_s}) is below "
                f"SEEDANCE_POLL_MAX_INTERVAL_S ({self.poll_max_interval_s})"
            )
        if self.download_attempt_budget_s < self.download_timeout_s:
            raise ValueError(
                f"SEEDANCE_DOWNLOAD_ATTEMPT_BUDGET_S ({self.download_attempt_budget_s:g}) is below "
                f"SEEDANCE_DOWNLOAD_TIMEOUT_S ({self.download_timeout_s:g}): one stalled read would "
                "outlast the whole attempt"
            )
        return self

    def check_visibility_timeout(self) -> None:
        """Refuse a countdown cap near the broker's visibility timeout.

        A countdown message waits unacked in a worker; once it is older than the visibility timeout,
        kombu restores it to the queue and it runs twice. Half the
        timeout leaves room for the task's own runtime and the restore sweep.
        """
        longest = self.poll_countdown_cap_s + self.http_read_timeout_s + self.http_connect_timeout_s
        if longest > self.visibility_timeout_s / 2:
            raise ConfigError(
                f"SEEDANCE_POLL_COUNTDOWN_CAP_S={self.poll_countdown_cap_s:g} plus the HTTP timeouts "
                f"({longest:g} s) must stay below half of SEEDANCE_VISIBILITY_TIMEOUT_S="
                f"{self.visibility_timeout_s} ({self.visibility_timeout_s / 2:g} s): a countdown message "
                "older than the visibility timeout is redelivered and polls twice"
            )

    def intake_poll_floor_s(self) -> float:
        """The least time between a job's last poll and one a callback asks for."""
        if self.intake_poll_min_interval_s is not None:
            return self.intake_poll_min_interval_s
        return self.poll_min_interval_s

    def __repr_args__(self) -> Any:
        # repr/str (and so any log line or traceback that prints Settings) never show a URL's
        # password, user or query (a notify URL may carry its token there); SecretStr hides the rest.
        for name, value in super().__repr_args__():
            is_url = isinstance(value, str) and bool(name) and str(name).endswith("_url")
            yield name, masked_url(value) if is_url else value

    def api_key_value(self) -> str:
        if self.api_key is None or not self.api_key.get_secret_value():
            raise ConfigError("SEEDANCE_API_KEY is not set")
        return self.api_key.get_secret_value()


class _ExplicitSettings(Settings):
    """Settings from an explicit mapping only (tests, tools): the process environment is not read."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, *_: Any, **__: Any) -> Any:
        return (init_settings,)


def known_env_names() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def _check_unknown_env(environ: dict[str, str]) -> None:
    known = known_env_names()
    for name in sorted(environ):
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known:
            close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{name} is not a known setting{hint}")


def _check_port(parts: SplitResult) -> None:
    try:
        parts.port  # noqa: B018  (parsing the port is the check)
    except ValueError:
        raise ValueError("has a port that is not a number") from None


def masked_url(value: str) -> str:
    """A URL without its user:password and with its query and fragment replaced, for messages."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return "***"
    if "@" in parts.netloc:
        parts = parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[-1])
    if parts.query:
        parts = parts._replace(query="***")
    if parts.fragment:
        parts = parts._replace(fragment="***")
    return parts.geturl()


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        loc = item.get("loc") or ()
        name = ENV_PREFIX + str(loc[0]).upper() if loc else "settings"
        msg = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        if item.get("type") == "extra_forbidden":
            msg = "is not a known setting"
        value = item.get("input")
        if isinstance(value, str) and name.endswith("_URL"):
            value = masked_url(value)
        shown = "" if name.endswith(("_KEY", "_SECRET", "_TOKEN")) or isinstance(value, dict) else value
        suffix = f" (got {shown!r})" if shown not in ("", None) else ""
        lines.append(f"{name}: {msg}{suffix}")
    return "invalid configuration: " + "; ".join(lines)


def load_settings(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from the environment (or ``environ``), failing with the setting's name."""
    env = dict(os.environ if environ is None else environ)
    _check_unknown_env(env)
    try:
        if environ is None:
            return Settings(**overrides)
        prefixed = {
            k[len(ENV_PREFIX) :].lower(): v for k, v in env.items() if k.upper().startswith(ENV_PREFIX)
        }
        return _ExplicitSettings(**{**prefixed, **overrides})
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


# Where get_settings() builds from when not the environment alone: a host app's configuration,
# registered by install() (wiring/host.py). Kept here as a callable so this floor imports no Celery.
_source: Callable[[], Settings] | None = None


def set_source(source: Callable[[], Settings] | None) -> None:
    global _source
    _source = source
    get_settings.cache_clear()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide Settings, built once: from the host app's configuration when ``install()``
    ran on one, else from the ``SEEDANCE_*`` variables."""
    return _source() if _source is not None else load_settings()


def reset_settings_cache() -> None:
    get_settings.cache_clear()
