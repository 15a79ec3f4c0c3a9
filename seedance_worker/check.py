"""``seedance-worker check``: is this worker able to work? One line per problem, first one shown."""

from __future__ import annotations

import os
import tempfile

from seedance_worker import connections, errors
from seedance_worker.client import get_client
from seedance_worker.intake import callback_url_for
from seedance_worker.pricing import price_table
from seedance_worker.settings import Settings, get_settings


def _download_dir_problem(settings: Settings) -> str | None:
    d = settings.download_dir
    if isinstance(d, str):  # s3://bucket/prefix: the bucket must answer with our credentials
        from seedance_worker.steps.storage_s3 import S3Storage

        try:
            problem = S3Storage(d, settings).problem()
        except errors.DownloadError as exc:
            problem = exc.message
        return f"download bucket unusable (SEEDANCE_DOWNLOAD_DIR={d}): {problem}" if problem else None
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(dir=d, prefix=".check-")
        os.close(fd)
        os.unlink(path)
    except OSError as exc:
        return f"download dir unusable (SEEDANCE_DOWNLOAD_DIR={d}): {exc.strerror or exc}"
    return None


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
    for account in (None, *sorted(settings.accounts)):
        problem = _api_problem(settings, account)
        if problem:
            problems.append(problem)
    problem = _download_dir_problem(settings)
    if problem:
        problems.append(problem)
    try:
        price_table(settings.price_table)  # a bad file would leave every charge unrecorded
    except errors.ConfigError as exc:
        problems.append(str(exc))
    if settings.intake_url or settings.intake_token:
        try:
            callback_url_for(settings)
        except errors.ConfigError as exc:
            problems.append(f"callback intake misconfigured: {exc}")
    return problems


def _api_problem(settings: Settings, account: str | None) -> str | None:
    """Why the API cannot be used with ``account`` (None: the default one), or None."""
    key, url = "SEEDANCE_API_KEY", "SEEDANCE_API_BASE_URL"
    if account is not None:
        key = url = f"account {account!r} of SEEDANCE_ACCOUNTS"
    try:
        get_client(settings, account).list_page(page_size=1)
    except errors.ConfigError as exc:
        return str(exc)
    except errors.AuthenticationFailed as exc:
        return f"API refused the key ({key}): {exc}"
    except errors.SeedanceError as exc:
        return f"API unusable ({url}): {exc}"
    return None
