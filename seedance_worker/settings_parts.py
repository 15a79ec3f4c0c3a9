"""The pieces Settings is built from: URL checks and masking, ``s3://`` locations, ``sentinel://``
URLs, an Account.

Kept apart from settings.py, which holds the Settings model and where it is loaded from; both sit
on the ground floor (no Celery, no Redis).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

S3_SCHEME = "s3://"
S3_MIN_PART_BYTES = 5 * 1024 * 1024  # S3's floor for every part but the last
S3_MAX_PARTS = 10_000
_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

SENTINEL_SCHEME = "sentinel://"
SENTINEL_DEFAULT_PORT = 26379  # kombu's and Redis's
# kombu's form: one sentinel:// per sentinel, joined by ';'. Split only where the next one starts,
# so a ';' inside a password (or in any other URL) never cuts a secret in two.
_SENTINEL_SPLIT = re.compile(r"\s*;\s*(?=sentinel://)", re.IGNORECASE)


def split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def http_url_value(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL with a host")
    check_port(parts)
    return value.rstrip("/")


class Account(BaseModel):
    """One named account of ``SEEDANCE_ACCOUNTS``: its own API key, base URL and request limiter.

    ``base_url``, ``rate_limit_rps``, ``rate_limit_burst`` and ``admission_max_queued`` left out are
    those of the default account (``SEEDANCE_API_BASE_URL``, ``SEEDANCE_RATE_LIMIT_RPS``,
    ``SEEDANCE_RATE_LIMIT_BURST``, ``SEEDANCE_ADMISSION_MAX_QUEUED``); the limiter and the
    admission queue themselves are always the account's own.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_key: SecretStr | None = None
    base_url: str | None = None
    rate_limit_rps: float | None = Field(None, ge=0)
    rate_limit_burst: int | None = Field(None, ge=1)
    admission_max_queued: int | None = Field(None, ge=0, le=100_000)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return http_url_value(value)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, masked_url(value) if name == "base_url" and isinstance(value, str) else value


def s3_location(uri: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://bucket/prefix``; the prefix is ``""`` or ends with ``/``.

    Refuses what S3 would not take as a bucket name, and anything in the URI that is not a bucket
    and a key prefix (credentials, a port, a query, ``..`` segments): credentials come from the
    S3 library's own chain, never from this setting.
    """
    if not uri.lower().startswith(S3_SCHEME):
        raise ValueError("must be a directory or an s3://bucket/prefix URI")
    rest = uri[len(S3_SCHEME) :]
    bucket, _, prefix = rest.partition("/")
    if "@" in bucket or ":" in bucket:
        raise ValueError("an s3:// URI names a bucket only: credentials come from the AWS_* chain")
    if not _S3_BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"s3:// bucket name {bucket[:70]!r} is not a valid S3 bucket name")
    segments = [seg for seg in prefix.split("/") if seg]
    bad = set("?#\\\x00") & set(prefix)
    if bad or any(seg in (".", "..") for seg in segments) or len(prefix) > 512:
        raise ValueError("the s3:// key prefix must be plain path segments (no '?', '#', '..')")
    return bucket, "".join(seg + "/" for seg in segments)


def s3_location_uri(uri: str) -> str:
    """``uri`` in its normal form: ``s3://bucket/`` plus the prefix (ValueError when malformed)."""
    bucket, prefix = s3_location(uri)
    return f"{S3_SCHEME}{bucket}/{prefix}"


def check_port(parts: SplitResult) -> None:
    try:
        parts.port  # noqa: B018  (parsing the port is the check)
    except ValueError:
        raise ValueError("has a port that is not a number") from None


def is_sentinel_url(url: str) -> bool:
    return url.strip().lower().startswith(SENTINEL_SCHEME)


@dataclass(frozen=True)
class SentinelURL:
    """``sentinel://[user:password@]host[:port][/db]`` once per sentinel, joined by ``;`` (kombu's
    and Celery's form). The credentials and db are the Redis master's, given in the first part."""

    nodes: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def _sentinel_part(part: str) -> tuple[str, int, int | None, str | None, str | None]:
    parts = urlsplit(part.strip())
    if parts.scheme.lower() != "sentinel":
        # kombu splits the URL at every ';' too, so a password holding one must spell it %3B.
        raise ValueError("every ';'-separated part must be a sentinel://host[:port] URL")
    if not parts.hostname:
        raise ValueError("a sentinel:// part has no host")
    check_port(parts)
    if parts.query or parts.fragment:
        raise ValueError("a sentinel:// URL takes no query: the master name is its own setting")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError("the path of a sentinel:// URL is a database number, like /0")
    db = int(path) if path else None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, parts.port or SENTINEL_DEFAULT_PORT, db, user, password


def sentinel_url(url: str) -> SentinelURL:
    """The sentinels, db and credentials of a ``sentinel://`` URL (ValueError when malformed)."""
    parsed = [_sentinel_part(chunk) for chunk in url.strip().split(";")]
    _, _, db, user, password = parsed[0]
    for _, _, other_db, other_user, other_password in parsed[1:]:
        if other_db is not None and other_db != (db or 0):
            raise ValueError("the sentinel:// parts name different databases")
        if (other_user or other_password) and (other_user, other_password) != (user, password):
            raise ValueError("the sentinel:// parts carry different credentials (give them in the first)")
    nodes = tuple(dict.fromkeys((host, port) for host, port, *_ in parsed))
    return SentinelURL(nodes=nodes, db=db or 0, username=user, password=password)


def url_passwords(url: str) -> list[str]:
    """Every password a Redis URL carries (each part of a ``sentinel://`` one), as written."""
    found = []
    for chunk in _SENTINEL_SPLIT.split(url):
        try:
            password = urlsplit(chunk).password
        except ValueError:
            continue
        if password:
            found.append(password)
    return found


def masked_url(value: str) -> str:
    """A URL without its user:password and with its query and fragment replaced, for messages;
    each part of a ``;``-joined ``sentinel://`` URL the same."""
    chunks = _SENTINEL_SPLIT.split(value)
    if len(chunks) > 1:
        return ";".join(masked_url(chunk) for chunk in chunks)
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
