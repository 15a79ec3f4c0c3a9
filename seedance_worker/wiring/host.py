"""The settings of a host app that ran ``install(app)``: what ``install(app, settings=...)`` set,
then the host's ``app.conf`` (``seedance_*`` keys, or ``CELERY_SEEDANCE_*`` under Django's
namespace), then ``SEEDANCE_*`` variables, then defaults, with the job store on the host's own Redis.

One host app per process is the model: the last app ``install()`` ran on is the process's source of
configuration (a worker, beat, a web process calling ``track()``), and every process that imports the
host's Celery module (prefork children by fork) resolves the same settings from the same places.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import Any

from celery import Celery

from seedance_worker.errors import ConfigError
from seedance_worker.settings import ENV_PREFIX, Settings, load_settings, set_source

CONF_PREFIX = "seedance_"
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

def conf_values(app: Celery) -> dict[str, Any]:
    """The ``seedance_*`` keys of ``app.conf`` (namespace stripped) as Settings field names; an
    unknown key is refused by name, like an unknown ``SEEDANCE_*`` variable."""
    conf = app.conf
    conf.broker_url  # noqa: B018  (finalizes a lazily configured app before its keys are read)
    prefix = str(getattr(conf, "prefix", None) or "")
    known = set(Settings.model_fields)
    found: dict[str, Any] = {}
    for key in list(conf.without_defaults()):
        if not isinstance(key, str):
            continue
        bare = key[len(prefix) :] if prefix and key.upper().startswith(prefix.upper()) else key
        if not bare.lower().startswith(CONF_PREFIX):
            continue
        name = bare.lower()[len(CONF_PREFIX) :]
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean {prefix}{CONF_PREFIX}{close[0]}?)" if close else ""
            raise ConfigError(f"app.conf key {key} is not a known setting{hint}")
        found[name] = conf[key]
    return found


def explicit_values(settings: Settings | Mapping[str, Any] | None) -> dict[str, Any]:
    """What the caller of ``install()`` set: a mapping as given; of a Settings object, the fields it
    holds that the ``SEEDANCE_*`` variables did not put there."""
    if settings is None:
        return {}
    if isinstance(settings, Mapping):
        return dict(settings)
    from_env = load_settings()

    def explicit(name: str) -> bool:
        in_env = f"{ENV_PREFIX}{name.upper()}" in os.environ
        return not in_env or getattr(settings, name) != getattr(from_env, name)

    return {name: getattr(settings, name) for name in settings.model_fields_set if explicit(name)}


def host_redis(app: Celery) -> str | None:
    """The host's result backend, else its broker, when that is a Redis."""
    for url in (app.conf.result_backend, app.conf.broker_url):
        if isinstance(url, str) and url.startswith(_REDIS_SCHEMES):
            return url
    return None


def resolve(app: Celery, explicit: Mapping[str, Any]) -> Settings:
    values = {**conf_values(app), **explicit}
    if "redis_url" not in values and f"{ENV_PREFIX}REDIS_URL" not in os.environ:
        url = host_redis(app)
        if url is None:
            raise ConfigError(
                "the job store needs a Redis and the host's broker and result backend are not Redis: "
                "set seedance_redis_url in app.conf (or SEEDANCE_REDIS_URL)"
            )
        values["redis_url"] = url
    return load_settings(**values)


def adopt(app: Celery, settings: Settings | Mapping[str, Any] | None) -> Settings:
    """Make ``app`` this process's source of settings; the resolved settings (errors raised now)."""
    explicit = explicit_values(settings)
    resolved = resolve(app, explicit)
    set_source(lambda: resolve(app, explicit))
    return resolved


def forget() -> None:
    """Back to ``SEEDANCE_*`` variables only (tests that installed a throwaway host app)."""
    set_source(None)
