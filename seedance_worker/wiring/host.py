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
from seedance_worker.settings_parts import is_sentinel_url

CONF_PREFIX = "seedance_"
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://")


def conf_values(app: Celery) -> dict[str, Any]:
    """The ``seedance_*`` keys of ``app.conf`` (namespace stripped) as Settings field names; an
    unknown key is refused by name, like an unknown ``SEEDANCE_*`` variable."""
    return {name: value for name, (_, value) in conf_entries(app).items()}


def conf_entries(app: Celery) -> dict[str, tuple[str, Any]]:
    """Settings field name -> (the ``app.conf`` key as the host spelt it, its value)."""
    conf = app.conf
    conf.broker_url  # noqa: B018  (finalizes a lazily configured app before its keys are read)
    prefix = str(getattr(conf, "prefix", None) or "")
    known = set(Settings.model_fields)
    found: dict[str, tuple[str, Any]] = {}
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
        found[name] = (key, conf[key])
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
    store = host_store(app)
    return store["redis_url"][1] if store else None


def host_store(app: Celery) -> dict[str, tuple[str, Any]] | None:
    """The job store on the host's Redis, as Settings field -> (where the host set it, value): its
    result backend's URL, else its broker's; for a ``sentinel://`` one also the master name (and
    sentinel password) from that URL's transport options."""
    conf = app.conf
    for key in ("result_backend", "broker_url"):
        url = conf[key]
        if not (isinstance(url, str) and url.lower().startswith(_REDIS_SCHEMES)):
            continue
        store: dict[str, tuple[str, Any]] = {"redis_url": (f"app.conf {key}", url)}
        where = "result_backend_transport_options" if key == "result_backend" else "broker_transport_options"
        options = conf[where] if isinstance(conf[where], Mapping) else {}
        if is_sentinel_url(url) and options.get("master_name"):
            store["redis_sentinel_master"] = (f"app.conf {where} master_name", options["master_name"])
            password = (options.get("sentinel_kwargs") or {}).get("password")
            if password:
                store["redis_sentinel_password"] = (f"app.conf {where} sentinel_kwargs", password)
        return store
    return None


def resolve(app: Celery, explicit: Mapping[str, Any]) -> Settings:
    entries = conf_entries(app)
    # A bad value is reported under the name the host wrote it as, not as a SEEDANCE_* variable.
    labels = {name: f"app.conf {key}" for name, (key, _) in entries.items()}
    labels.update({name: f"install(settings=...) {name}" for name in explicit})
    values = {**{name: value for name, (_, value) in entries.items()}, **explicit}
    if "redis_url" not in values and f"{ENV_PREFIX}REDIS_URL" not in os.environ:
        store = host_store(app)
        if store is None:
            raise ConfigError(
                "the job store needs a Redis and the host's broker and result backend are not Redis: "
                "set seedance_redis_url in app.conf (or SEEDANCE_REDIS_URL)"
            )
        # The host's own URL and transport options, unless seedance_* / SEEDANCE_* name them.
        for name, (label, value) in store.items():
            if name not in values and f"{ENV_PREFIX}{name.upper()}" not in os.environ:
                values[name], labels[name] = value, label
    return load_settings(labels=labels, **values)


def adopt(app: Celery, settings: Settings | Mapping[str, Any] | None) -> Settings:
    """Make ``app`` this process's source of settings; the resolved settings (errors raised now)."""
    explicit = explicit_values(settings)
    resolved = resolve(app, explicit)
    first = [resolved]

    def source() -> Settings:
        # The first get_settings() takes what install() resolved; after a cache reset, again.
        return first.pop() if first else resolve(app, explicit)

    set_source(source)
    return resolved


def forget() -> None:
    """Back to ``SEEDANCE_*`` variables only (tests that installed a throwaway host app)."""
    set_source(None)
