"""All configuration, from ``SEEDANCE_*`` environment variables, validated once at start.

A misspelt ``SEEDANCE_*`` name or a bad value raises ``ConfigError`` naming the variable (and the
closest known name), so a typo fails at start instead of silently falling back to a default.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from seedance_worker.errors import ConfigError, InvalidRequest
from seedance_worker.settings_parts import (
    S3_MAX_PARTS,
    S3_MIN_PART_BYTES,
    S3_SCHEME,
    Account,
    check_port,
    http_url_value,
    is_sentinel_url,
    masked_url,
    s3_location_uri,
    sentinel_url,
    split_commas,
)

ENV_PREFIX = "SEEDANCE_"

DEFAULT_ALLOWED_HOSTS = ["*.volces.com", "*.bytepluses.com"]

# The API keeps a task 7 days after its creation; a charge's ledger entry outlives that by a day.
MIN_LEDGER_RETENTION_DAYS = 8

CommaList = Annotated[list[str], NoDecode]

DEFAULT_ACCOUNT = "default"  # the name of the account SEEDANCE_API_KEY / SEEDANCE_API_BASE_URL make
_ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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
    # More accounts by name, as JSON: {"volc": {"api_key": "...", "base_url": "https://..."}}.
    accounts: Annotated[dict[str, Account], NoDecode] = {}

    # --- Redis and Celery -----------------------------------------------------------------------
    redis_url: str = "redis://localhost:6379/0"
    # With a sentinel:// URL: the master the sentinels name, and their own password (not Redis's).
    redis_sentinel_master: str = "mymaster"
    redis_sentinel_password: SecretStr | None = None
    poll_queue: str = Field("seedance.poll", min_length=1)
    post_queue: str = Field("seedance.post", min_length=1)
    visibility_timeout_s: int = Field(3600, ge=30)
    result_expires_s: int = Field(3 * 86400, ge=60)
    job_ttl_s: int = Field(7 * 86400, ge=60)

    # --- the poll schedule ----------------------------------------------------------------------
    poll_first_delay_s: float = Field(5.0, ge=0)
    # Many ids tracked at once would all be first polled in the same instant: each first poll
    # comes at first_delay_s x (1 +- this ratio), uniformly.
    poll_first_jitter_ratio: float = Field(0.5, ge=0, le=1)
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
    # --- batched status (engine/batch.py) ---------------------------------------------------------
    status_source: Literal["batch", "get"] = "batch"
    batch_round_s: float = Field(2.0, ge=0.2, le=60)
    batch_queued_interval_s: float = Field(10.0, ge=0.2, le=600)
    batch_size: int = Field(100, ge=1, le=500)
    batch_list_rps: float = Field(5.0, ge=0)
    # A 404 this soon after the task's creation is a gateway that has not seen it yet: retried.
    not_found_grace_s: float = Field(180.0, ge=0, le=3600)
    handoff_lease_s: float = Field(900.0, ge=5)

    # --- admission control (engine/admission.py): 0 = off -----------------------------------------
    admission_max_queued: int = Field(0, ge=0, le=100_000)

    # --- fleet-wide rate limit ------------------------------------------------------------------
    rate_limit_rps: float = Field(0.0, ge=0)
    rate_limit_burst: int = Field(5, ge=1)

    # --- downstream -----------------------------------------------------------------------------
    on_succeeded: CommaList = ["seedance.download_video", "seedance.charge_usage", "seedance.notify"]
    # A failed task is charged too when the API reports usage for it (steps/charge.py).
    on_failed: CommaList = ["seedance.charge_usage", "seedance.notify"]
    on_status_change: str | None = None  # a task name or a JSON signature (engine/progress.py)
    # A local directory, or ``s3://bucket/prefix`` (kept as that string: steps/storage_s3.py).
    download_dir: Path | str = Path("./videos")
    download_s3_part_bytes: int = Field(8 * 1024 * 1024, ge=S3_MIN_PART_BYTES, le=5 * 1024**3)
    download_s3_lease_s: float = Field(30.0, gt=0, le=3600)
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
        return split_commas(value)

    @field_validator("on_status_change", mode="before")
    @classmethod
    def _hook(cls, value: Any) -> Any:
        if isinstance(value, dict):  # a Celery Signature (a dict) or its JSON form, from install()
            value = json.dumps(dict(value), default=str)
        if isinstance(value, str):
            value = value.strip() or None
            if value and value.startswith("{"):
                try:
                    spec = json.loads(value)
                except ValueError:
                    raise ValueError("must be a task name or a JSON Celery signature") from None
                if not isinstance(spec, dict) or not isinstance(spec.get("task"), str):
                    raise ValueError('a JSON signature needs a "task" name')
        return value

    @field_validator("api_base_url", "notify_url", "intake_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return http_url_value(value)

    @field_validator("accounts", mode="before")
    @classmethod
    def _accounts_json(cls, value: Any) -> Any:
        if isinstance(value, str | bytes):
            if not value.strip():
                return {}
            try:
                value = json.loads(value)
            except ValueError as exc:  # the message has a position, never the text (it holds keys)
                raise ValueError(f"is not valid JSON ({exc.args[0].split(':')[0]})") from None
        if not isinstance(value, Mapping):
            raise ValueError('must be a JSON object of named accounts, like {"volc": {"api_key": "..."}}')
        return dict(value)

    @field_validator("accounts")
    @classmethod
    def _accounts_named(cls, value: dict[str, Account]) -> dict[str, Account]:
        for name, account in value.items():
            if name.lower() == DEFAULT_ACCOUNT:
                raise ValueError(
                    f"'{name}' is the account SEEDANCE_API_KEY and SEEDANCE_API_BASE_URL make; "
                    "name the others differently"
                )
            if not _ACCOUNT_NAME.match(name):
                raise ValueError(f"account name {name!r}: expected letters, digits and '_.-' (at most 64)")
            if account.api_key is None or not account.api_key.get_secret_value():
                raise ValueError(f"account '{name}' has no api_key")
        return value

    @field_validator("download_dir", mode="before")
    @classmethod
    def _download_target(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower().startswith(S3_SCHEME):
            return s3_location_uri(value.strip())
        return Path(value) if isinstance(value, str) else value

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
        if is_sentinel_url(value):
            sentinel_url(value)
            return value.strip()
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            scheme = parts.scheme or "no"
            raise ValueError(
                f"must be a redis://, rediss://, unix:// or sentinel:// URL, not {scheme} scheme"
            )
        check_port(parts)
        return value

    @field_validator("redis_sentinel_master")
    @classmethod
    def _master_name(cls, value: str) -> str:
        if not re.fullmatch(r"\S{1,200}", value):
            raise ValueError("must be the master's name as the sentinels know it: no spaces, not empty")
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
        if isinstance(self.download_dir, str) and (
            self.download_max_bytes > self.download_s3_part_bytes * S3_MAX_PARTS
        ):
            raise ValueError(
                f"SEEDANCE_DOWNLOAD_MAX_BYTES ({self.download_max_bytes}) needs more than {S3_MAX_PARTS} "
                f"parts of SEEDANCE_DOWNLOAD_S3_PART_BYTES ({self.download_s3_part_bytes}), S3's limit"
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

    # --- accounts -------------------------------------------------------------------------------
    # A job's account is a name (None: the default); ``for_account`` gives the Settings to call the
    # API with for it: the same object but for the API key, base URL and rate limit, so the client
    # cache, the limiter keys and every caller of ``get_client(settings)`` follow the account.

    _account: str | None = PrivateAttr(None)  # the account a view from for_account() is for
    _base: Settings | None = PrivateAttr(None)  # the Settings that view was made from

    @property
    def account(self) -> str | None:
        """The account these settings call the API with (None: the default one)."""
        return self._account

    def account_name(self, name: str | None) -> str | None:
        """``name`` as a job record keeps it: None for the default account; unknown names refused."""
        if name is None or name == DEFAULT_ACCOUNT:
            return None
        if name in self.accounts:
            return name
        known = ", ".join([DEFAULT_ACCOUNT, *sorted(self.accounts)])
        close = difflib.get_close_matches(name, sorted(self.accounts), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InvalidRequest(f"unknown account {name!r}{hint}: SEEDANCE_ACCOUNTS names {known}")

    def for_account(self, name: str | None) -> Settings:
        """These settings with the API key, base URL, rate limit and admission cap of account ``name``."""
        base = self._base or self
        key = base.account_name(name)
        if key is None:
            return base
        view = _views.get((id(base), key))
        if view is None:
            acct = base.accounts[key]
            rps = base.rate_limit_rps if acct.rate_limit_rps is None else acct.rate_limit_rps
            copy = base.model_copy(
                update={
                    "api_key": acct.api_key,
                    "api_base_url": acct.base_url or base.api_base_url,
                    "rate_limit_rps": rps,
                    "rate_limit_burst": acct.rate_limit_burst or base.rate_limit_burst,
                    "admission_max_queued": (
                        base.admission_max_queued
                        if acct.admission_max_queued is None
                        else acct.admission_max_queued
                    ),
                }
            )
            copy._account, copy._base = key, base
            if len(_views) > 256:  # many short-lived Settings (tests, tools): keep the cache small
                _views.clear()
            view = _views[(id(base), key)] = copy
        return view


_ACCOUNT_FIELDS = f" of an account ({', '.join(Account.model_fields)})"

# (id of the base Settings, account) -> its view; the view's ``_base`` keeps the base alive, so the id
# stays its own while the entry lasts.
_views: dict[tuple[int, str], Settings] = {}


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


def _format_validation_error(err: ValidationError, labels: Mapping[str, str] | None = None) -> str:
    lines = []
    for item in err.errors():
        loc = item.get("loc") or ()
        field = str(loc[0]) if loc else ""
        name = (labels or {}).get(field) or (ENV_PREFIX + field.upper() if field else "settings")
        msg = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        where = ".".join(str(part) for part in loc[1:])  # inside SEEDANCE_ACCOUNTS: volc.base_url
        if item.get("type") == "extra_forbidden":
            msg = f"is not a known setting{_ACCOUNT_FIELDS if where else ''}"
        if where:
            msg = f"{where}: {msg}"
        value = item.get("input")
        if isinstance(value, str) and (field.endswith("_url") or value.lower().startswith(S3_SCHEME)):
            value = masked_url(value)
        # An account's input may be its key (or the whole JSON holding it): never shown.
        secret = field.endswith(("_key", "_secret", "_token", "_password")) or field == "accounts"
        shown = "" if secret or isinstance(value, dict) else value
        suffix = f" (got {shown!r})" if shown not in ("", None) else ""
        lines.append(f"{name}: {msg}{suffix}")
    return "invalid configuration: " + "; ".join(lines)


def load_settings(
    environ: dict[str, str] | None = None, *, labels: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Build Settings from the environment (or ``environ``), failing with the setting's name (as
    ``labels`` spells it for a field that came from elsewhere, e.g. a host's app.conf key)."""
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
        raise ConfigError(_format_validation_error(err, labels)) from None


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
