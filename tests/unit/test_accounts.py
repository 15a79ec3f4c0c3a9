"""Named accounts: SEEDANCE_ACCOUNTS parsing, masking and errors; a client, a limiter, a record, a
ledger entry and a submit key per account, the default account configured exactly as before."""

from __future__ import annotations

import json
import time

import pytest
import redis
from celery import Celery

from seedance_worker import keys
from seedance_worker.client import get_client
from seedance_worker.engine.jobs import registration_fields
from seedance_worker.engine.store import JobRecord
from seedance_worker.errors import ConfigError, InvalidRequest
from seedance_worker.logs import secret_values
from seedance_worker.models import Outcome
from seedance_worker.ratelimit import RateLimiter, limiter_keys
from seedance_worker.settings import Settings, load_settings
from seedance_worker.settings_parts import Account
from seedance_worker.steps.charge import build_entry
from seedance_worker.wiring import host

DEFAULT_KEY = "sk-default-0123456789abcdef"
VOLC_KEY = "sk-volc-fedcba9876543210"
VOLC_URL = "https://ark.cn-beijing.volces.com/api/v3"


def accounts_env(**accounts: dict[str, object]) -> dict[str, str]:
    return {"SEEDANCE_API_KEY": DEFAULT_KEY, "SEEDANCE_ACCOUNTS": json.dumps(accounts)}


def two_accounts() -> Settings:
    return load_settings(
        accounts_env(
            volc={"api_key": VOLC_KEY, "base_url": VOLC_URL, "rate_limit_rps": 3},
            bu2={"api_key": "sk-bu2-0011223344556677"},
        )
    )


def test_accounts_from_the_environment_as_json() -> None:
    """SEEDANCE_ACCOUNTS is JSON; an account left without base URL or rate takes the default's."""
    s = two_accounts()
    assert sorted(s.accounts) == ["bu2", "volc"]
    volc, bu2 = s.for_account("volc"), s.for_account("bu2")
    assert (volc.account, volc.api_base_url, volc.api_key_value(), volc.rate_limit_rps) == (
        "volc", VOLC_URL, VOLC_KEY, 3.0)  # fmt: skip
    assert (bu2.api_base_url, bu2.rate_limit_rps) == (s.api_base_url, s.rate_limit_rps)
    # The default stays exactly SEEDANCE_API_KEY / SEEDANCE_API_BASE_URL, by None or by its name.
    assert s.for_account(None) is s and s.for_account("default") is s and s.account is None
    assert s.api_key_value() == DEFAULT_KEY
    # A view asked for another account (or the default) starts from the same base.
    assert volc.for_account(None) is s and volc.for_account("bu2") is bu2 and s.for_account("volc") is volc


def test_no_accounts_is_the_setup_of_before() -> None:
    s = load_settings({"SEEDANCE_API_KEY": DEFAULT_KEY})
    assert s.accounts == {} and s.for_account(None) is s
    assert registration_fields(s) == {}  # a default-account record holds no account field


def test_accounts_never_show_their_keys_or_url_passwords() -> None:
    """repr/str of Settings and of an account mask the key (SecretStr) and a base URL's password."""
    s = load_settings(
        accounts_env(volc={"api_key": VOLC_KEY, "base_url": "https://u:pw-77@ark.example/api/v3"})
    )
    shown = [repr(s), str(s), repr(s.accounts), repr(s.for_account("volc"))]
    for text in shown:
        assert VOLC_KEY not in text and "pw-77" not in text and DEFAULT_KEY not in text
    assert VOLC_KEY not in str(s.model_dump())  # a dump keeps URLs whole (as for every _url setting)
    assert "***@ark.example" in repr(s.accounts["volc"])
    # Every account's key is among the secrets scrubbed from log lines.
    assert VOLC_KEY in secret_values(s) and DEFAULT_KEY in secret_values(s)


@pytest.mark.parametrize(
    ("accounts", "said"),
    [
        ('{"volc": {"base_url": "https://ark.example/api/v3"}}', "account 'volc' has no api_key"),
        ('{"volc": {"api_key": ""}}', "account 'volc' has no api_key"),
        ('{"default": {"api_key": "sk-0123456789"}}', "'default' is the account SEEDANCE_API_KEY"),
        ('{"a b": {"api_key": "sk-0123456789"}}', "account name 'a b'"),
        ('{"volc": {"api_key": "sk-0123456789", "base_url": "ftp://sk-0123456789"}}',
         "volc.base_url: must be an http(s) URL"),
        ('{"volc": {"api_key": "sk-0123456789", "api_kye": "sk-0123456789"}}',
         "volc.api_kye: is not a known setting of an account (api_key, base_url"),
        ('{"volc": {"api_key": "sk-0123456789", "rate_limit_rps": -1}}', "volc.rate_limit_rps"),
        ('{"volc": {"api_key": "sk-0123456789"', "is not valid JSON"),
        ('["sk-0123456789"]', "must be a JSON object of named accounts"),
    ],
)  # fmt: skip
def test_a_bad_account_fails_at_start_naming_the_setting(accounts: str, said: str) -> None:
    """Each mistake stops start-up naming SEEDANCE_ACCOUNTS and the account; no key is ever echoed."""
    with pytest.raises(ConfigError) as info:
        load_settings({"SEEDANCE_ACCOUNTS": accounts})
    msg = str(info.value)
    assert "SEEDANCE_ACCOUNTS" in msg and said in msg, msg
    assert "sk-0123456789" not in msg


def test_an_unknown_account_name_is_refused_naming_it() -> None:
    """At submit/track time (registration) and for a client: InvalidRequest with the name and the
    configured ones; nothing is registered for it."""
    s = two_accounts()
    with pytest.raises(InvalidRequest) as info:
        registration_fields(s, account="volcc")
    assert "'volcc'" in str(info.value) and "did you mean 'volc'" in str(info.value)
    assert "default, bu2, volc" in str(info.value)
    with pytest.raises(InvalidRequest, match="'nope'"):
        get_client(s, "nope")
    assert registration_fields(s, account="volc") == {"account": "volc"}
    assert registration_fields(s, account="default") == {}


def test_each_account_has_its_own_client() -> None:
    """get_client(settings, account): the account's base URL and bearer key, cached per account."""
    s = two_accounts()
    default, volc = get_client(s), get_client(s, "volc")
    assert default is not volc and get_client(s, "volc") is volc and get_client(s.for_account("volc")) is volc
    assert volc.base_url == VOLC_URL and volc.session.headers["Authorization"] == f"Bearer {VOLC_KEY}"
    assert default.session.headers["Authorization"] == f"Bearer {DEFAULT_KEY}"
    assert VOLC_KEY not in repr(volc)


def test_each_account_has_its_own_limiter_and_cool_down(redis_url: str) -> None:
    """A 429 cool-down on one account holds that account's requests only."""
    suffix = str(time.time_ns())  # keys of their own in the session's Redis
    s = load_settings(
        {
            "SEEDANCE_API_KEY": DEFAULT_KEY + suffix,
            "SEEDANCE_ACCOUNTS": json.dumps({"volc": {"api_key": VOLC_KEY + suffix, "base_url": VOLC_URL}}),
        }
    )
    assert limiter_keys(s) != limiter_keys(s.for_account("volc"))
    r = redis.Redis.from_url(redis_url)
    default, volc = RateLimiter(r, s), RateLimiter(r, s.for_account("volc"))
    volc.cool_down(30)
    assert volc.acquire().kind == "cooldown" and 29 < volc.cooldown_left() <= 30
    assert default.acquire().kind == "go" and default.cooldown_left() == 0.0
    for key in limiter_keys(s.for_account("volc")):
        assert VOLC_KEY not in key and VOLC_KEY.encode() not in (r.get(key) or b"")


def test_an_accounts_own_rate_limit(redis_url: str) -> None:
    """rate_limit_rps of an account spaces its reservations; the default keeps SEEDANCE_RATE_LIMIT_RPS."""
    suffix = str(time.time_ns())
    s = load_settings(
        {
            "SEEDANCE_API_KEY": DEFAULT_KEY + suffix,
            "SEEDANCE_ACCOUNTS": json.dumps({"slow": {"api_key": VOLC_KEY + suffix, "rate_limit_rps": 2,
                                                      "rate_limit_burst": 1}}),
        }
    )  # fmt: skip
    r = redis.Redis.from_url(redis_url)
    slow = RateLimiter(r, s.for_account("slow"))
    assert slow.acquire().kind == "go"
    second = slow.acquire()
    assert second.kind == "slot" and 0.4 < second.wait_s <= 0.5
    default = RateLimiter(r, s)
    assert all(default.acquire().kind == "go" for _ in range(5))  # no default limit: never waits


def test_the_record_keeps_the_accounts_name_only() -> None:
    rec = JobRecord.from_hash("cgt-1", {"account": "volc", "owner": "o", "state": "polling", "gen": "1"})
    assert rec.account == "volc" and rec.public()["account"] == "volc"
    assert JobRecord.from_hash("cgt-2", {"owner": "o"}).account is None


def test_the_ledger_entry_names_a_non_default_account() -> None:
    snap = {"id": "cgt-1", "status": "succeeded", "model": "m", "usage": {"completion_tokens": 10}}
    s = two_accounts()
    named = build_entry(Outcome(task_id="cgt-1", status="succeeded", snapshot=snap, account="volc"), s)
    assert named["account"] == "volc" and VOLC_KEY not in json.dumps(named)
    plain = build_entry(Outcome(task_id="cgt-1", status="succeeded", snapshot=snap), s)
    assert "account" not in plain  # default-account entries are as before


def test_a_submit_key_is_the_accounts_own() -> None:
    """The same idempotency key on two accounts is two creates; the default's key name is unchanged."""
    assert keys.idempotency("k1") == "seedance:idem:k1"
    assert keys.idempotency("k1", "volc") != keys.idempotency("k1") != keys.idempotency("k1", "bu2")
    assert keys.idempotency("volc:k1") != keys.idempotency("k1", "volc")


@pytest.mark.usefixtures("forget_host")
def test_accounts_from_app_conf_and_install() -> None:
    """A host sets accounts as a mapping in app.conf (seedance_accounts) or install(settings=...)."""
    app = Celery("host", broker="redis://broker.example:6379/1", set_as_current=False)
    app.conf.update(seedance_accounts={"volc": {"api_key": VOLC_KEY, "base_url": VOLC_URL}})
    s = host.adopt(app, None)
    assert (
        s.for_account("volc").api_base_url == VOLC_URL and s.for_account("volc").api_key_value() == VOLC_KEY
    )
    s = host.adopt(app, {"accounts": {"bu2": Account(api_key="sk-bu2-0011223344556677")}})
    assert sorted(s.accounts) == ["bu2"]  # install(settings=...) outranks app.conf, as for every key
    with pytest.raises(ConfigError, match=r"install\(settings=\.\.\.\) accounts: account 'x' has no api_key"):
        host.adopt(app, {"accounts": {"x": {}}})
