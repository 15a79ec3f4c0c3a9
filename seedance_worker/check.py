"""``seedance-worker check``: is this worker able to work? One line per problem, first one shown."""

from __future__ import annotations

import os
import tempfile

from seedance_worker import connections, errors
from seedance_worker.client import get_client
from seedance_worker.intake import callback_url_for
from seedance_worker.settings import Settings, get_settings


def run_checks(settings: Settings | None = None) -> list[str]:
    settings = settings or get_settings()
    problems: list[str] = []
    try:
        client = connections.get_redis(settings)
        client.ping()
        evicting = connections.eviction_problem(client)
        if evicting:
            problems.append(evicting)
    except Exception as exc:  # any failure here is the answer, not a crash
        problems.append(f"Redis unusable (SEEDANCE_REDIS_URL): {type(exc).__name__}: {exc}")
    try:


        get_client(settings).list_tasks(page_size=1)
    except errors.ConfigError as exc:
        problems.append(str(exc))
    except errors.AuthenticationFailed as exc:
        problems.append(f"API refused the key (SEEDANCE_API_KEY): {exc}")
    except errors.SeedanceError as exc:
        problems.append(f"API unusable (SEEDANCE_API_BASE_URL): {exc}")
    d = settings.download_dir
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(dir=d, prefix=".check-")
        os.close(fd)
        os.unlink(path)
    except OSError as exc:
        problems.append(f"download dir unusable (SEEDANCE_DOWNLOAD_DIR={d}): {exc.strerror or exc}")
    if settings.intake_url or settings.intake_token:
        try:


            callback_url_for(settings)
        except errors.ConfigError as exc:
            problems.append(f"callback intake misconfigured: {exc}")
    return problems
