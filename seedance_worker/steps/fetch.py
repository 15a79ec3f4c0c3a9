"""The allow-listed, resumable HTTP GET of one signed storage URL into a partial file.

``fetch_into`` streams the body into a ``PartialFile`` (``storage.py``) while its sha256 is computed:

* every hop of a redirect is checked against ``SEEDANCE_DOWNLOAD_ALLOWED_HOSTS`` (``host_allowed``);
* a connection dropped mid-body is resumed with ``Range: bytes=N-`` (a ``200`` answer restarts at
  0), at most ``MAX_RESUMES`` times before ``Transient`` asks for a task retry;
* 403/404/410 raise ``Expired`` (the caller asks the API for a fresh signed URL); 5xx/429 raise
  ``Transient``; a body that is not a video, too large or of the wrong length raises
  ``DownloadError``.

Signed URLs are logged without their query string (``logs.redact``), also in urllib3's own DEBUG
lines (``RedactQueryFilter``), and the API key is never sent: downloads use their own session.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from fnmatch import fnmatchcase
from typing import Literal, NoReturn
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from seedance_worker.errors import DownloadError
from seedance_worker.logs import redact
from seedance_worker.settings import Settings
from seedance_worker.steps.storage import PartialFile
from seedance_worker.version import __version__

log = logging.getLogger(__name__)

MAX_RESUMES = 3
MAX_REDIRECTS = 5
MAX_RESTARTS = 2  # from byte 0, when the server will not resume as asked
CHUNK_BYTES = 64 * 1024
LEASE_EVERY_S = 60.0
_REDIRECTS = (301, 302, 303, 307, 308)
_EXPIRED = (403, 404, 410)
_HOSTNAME = re.compile(r"^[a-z0-9.\-:]+$")
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_TRANSPORT_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.Timeout,
)

Kind = Literal["video", "last_frame"]


class RedactQueryFilter(logging.Filter):
    """Strips query strings from the URLs urllib3 logs at DEBUG: signed URLs carry credentials there."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                a.split("?", 1)[0] + "?<redacted>"
                if isinstance(a, str) and "?" in a and a.startswith(("/", "http://", "https://"))
                else a
                for a in record.args
            )
        return True


def _install_log_redaction() -> None:
    pool_log = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, RedactQueryFilter) for f in pool_log.filters):
        pool_log.addFilter(RedactQueryFilter())


_install_log_redaction()


class Transient(Exception):
    """May work later: retry the task (5xx, 429, too many dropped connections, busy partial file)."""

    def __init__(self, message: str, kind: str = "http_error", not_before_s: float = 0.0) -> None:
        super().__init__(message, kind)
        self.message = message
        self.kind = kind
        self.not_before_s = not_before_s  # a Retry-After or shared cool-down still to wait


class Expired(Exception):
    """Storage answered 403/404: the signed URL has expired (or was revoked); a fresh one may help."""


def host_allowed(url: str, patterns: list[str]) -> bool:
    """Whether ``url`` is http(s) and its host (not port) matches one of the fnmatch ``patterns``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host or not _HOSTNAME.match(host):
        return False
    host = host.rstrip(".")
    return any(p.strip() == "*" or fnmatchcase(host, p.strip().lower().rstrip(".")) for p in patterns)


def _check_host(url: str, settings: Settings) -> None:
    if not host_allowed(url, settings.download_allowed_hosts):
        raise DownloadError(
            f"refusing to download from {redact(url)}: host not in SEEDANCE_DOWNLOAD_ALLOWED_HOSTS",
            "host_not_allowed",
        )


def _media_type(resp: requests.Response) -> str:
    value = resp.headers.get("Content-Type") or "application/octet-stream"
    return value.split(";", 1)[0].strip().lower() or "application/octet-stream"


def _acceptable(media_type: str, kind: Kind) -> bool:
    major = "video/" if kind == "video" else "image/"
    return media_type.startswith(major) or media_type == "application/octet-stream"


def _looks_like_markup(head: bytes) -> bool:
    text = head.lstrip()[:64].lower()
    return text.startswith((b"<!doctype", b"<html", b"<?xml", b"<error", b'{"error'))


def _int_header(resp: requests.Response, name: str) -> int | None:
    value = resp.headers.get(name)
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        return None
    return n if n >= 0 else None


def _content_range(value: str | None) -> tuple[int, int, int | None] | None:
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


def _chunks(resp: requests.Response) -> Iterator[bytes]:
    """The body as it arrives, undecoded (byte-exact for the hash and Content-Length).

    ``read1`` hands over whatever the socket delivered, so a connection cut mid-chunk loses no
    received bytes and the resume starts exactly where the data stopped (``iter_content`` would
    drop the partly read chunk with the exception).
    """
    raw = resp.raw
    while True:
        try:
            data = raw.read1(CHUNK_BYTES, decode_content=False)
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise requests.exceptions.ConnectionError(type(exc).__name__) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise requests.exceptions.ChunkedEncodingError(type(exc).__name__) from None
        if not data:
            return
        yield data


def _get(
    session: requests.Session, url: str, headers: dict[str, str], settings: Settings
) -> requests.Response:
    """GET without automatic redirects: every hop's host is checked against the allow list."""
    for _ in range(MAX_REDIRECTS + 1):
        _check_host(url, settings)
        resp = session.get(
            url,
            headers=headers,
            stream=True,
            allow_redirects=False,
            timeout=(settings.http_connect_timeout_s, settings.download_timeout_s),
        )
        location = resp.headers.get("Location")
        if resp.status_code in _REDIRECTS and location:
            resp.close()
            url = urljoin(url, location)
            continue
        return resp
    raise DownloadError(f"more than {MAX_REDIRECTS} redirects from {redact(url)}", "http_error")


def _restart(tmp: PartialFile) -> hashlib._Hash:
    tmp.fh.seek(0)
    tmp.fh.truncate()
    tmp.offset = 0
    return hashlib.sha256()


def _rehash(tmp: PartialFile, max_bytes: int) -> hashlib._Hash:
    """The hash of what an earlier attempt left in the partial file (or a restart if it is unusable)."""
    if tmp.offset == 0 or tmp.offset > max_bytes:
        return _restart(tmp)
    hasher = hashlib.sha256()
    tmp.fh.seek(0)
    remaining = tmp.offset
    while remaining:
        block = tmp.fh.read(min(CHUNK_BYTES, remaining))
        if not block:
            return _restart(tmp)
        hasher.update(block)
        remaining -= len(block)
    tmp.fh.seek(tmp.offset)
    return hasher


class _Again(Exception):
    """This attempt ended early (a dropped connection, a restart): open the URL again."""


class _Fetch:
    """One file's fetch across its attempts.

    Each attempt opens the URL (``open``), checks the answer (``validate``), lines its range up with
    what ``tmp`` already holds (``resume``), streams the body (``stream``) and checks that all of it
    arrived (``finish``). A step that needs another attempt raises ``_Again``.
    """

    def __init__(
        self,
        session: requests.Session,
        url: str,
        tmp: PartialFile,
        kind: Kind,
        settings: Settings,
        on_progress: Callable[[], None] | None,
    ) -> None:
        self.session = session
        self.url = url
        self.tmp = tmp
        self.kind: Kind = kind
        self.settings = settings
        self.on_progress = on_progress
        self.where = redact(url)
        self.max_bytes = settings.download_max_bytes
        self.hasher = _rehash(tmp, self.max_bytes)
        self.drops = 0
        self.restarts = 0

    def run(self) -> tuple[str, int, str]:
        while True:
            try:
                return self.attempt()
            except _Again:
                continue

    def attempt(self) -> tuple[str, int, str]:
        resp = self.open()
        try:
            media_type = self.validate(resp)
            total = self.resume(resp)
            self.stream(resp, total)
            return self.finish(total, media_type)
        finally:
            resp.close()

    def open(self) -> requests.Response:
        headers = {"Accept-Encoding": "identity", "User-Agent": f"seedance-worker/{__version__}"}
        if self.tmp.offset:
            headers["Range"] = f"bytes={self.tmp.offset}-"
        try:
            return _get(self.session, self.url, headers, self.settings)
        except _TRANSPORT_ERRORS as exc:
            if self._dropped():
                raise Transient(
                    f"{self.where}: {type(exc).__name__} ({self.drops} times)", "http_error"
                ) from None
            raise _Again from None

    def validate(self, resp: requests.Response) -> str:
        """The answer's media type, once its status says the body is worth reading."""
        status = resp.status_code
        if status in _EXPIRED:
            raise Expired(f"{self.where} answered HTTP {status}")
        if status == 416 and self.tmp.offset:
            self._start_over("the server refused the resume range (416)")
        if status == 429 or status >= 500:
            raise Transient(f"{self.where} answered HTTP {status}", "http_error")
        if status not in (200, 206):
            raise DownloadError(f"{self.where} answered HTTP {status}", "http_error")
        media_type = _media_type(resp)
        if not _acceptable(media_type, self.kind):
            what = "a video" if self.kind == "video" else "an image"
            raise DownloadError(f"{self.where} is not {what} (Content-Type {media_type})", "not_a_video")
        return media_type

    def resume(self, resp: requests.Response) -> int | None:
        """The whole file's size when known; a ``200`` to a resume restarts the partial file."""
        length = _int_header(resp, "Content-Length")
        if resp.status_code == 206:
            total = self._ranged_total(resp, length)
        else:
            if self.tmp.offset:  # the server ignored Range and sends everything again
                log.info("download %s: server ignored Range; restarting from byte 0", self.where)
                self.hasher = _restart(self.tmp)
            total = length
        if total is not None and total > self.max_bytes:
            raise DownloadError(
                f"{self.where} is {total} bytes, above SEEDANCE_DOWNLOAD_MAX_BYTES={self.max_bytes}",
                "too_large",
            )
        return total

    def _ranged_total(self, resp: requests.Response, length: int | None) -> int | None:
        rng = _content_range(resp.headers.get("Content-Range"))
        if rng is None or rng[0] != self.tmp.offset:
            self._start_over("the server answered a different range than asked")
        total = rng[2]
        if total is None and length is not None:
            total = self.tmp.offset + length
        if total is not None and length is not None and length != total - self.tmp.offset:
            raise DownloadError(
                f"{self.where}: Content-Length {length} does not match Content-Range "
                f"{resp.headers.get('Content-Range')}",
                "length_mismatch",
            )
        return total

    def stream(self, resp: requests.Response, total: int | None) -> None:
        """Append the body to ``tmp``, extending the lease now and then; a drop resumes."""
        last_progress = time.monotonic()
        try:
            for chunk in _chunks(resp):
                if not chunk:
                    continue
                self._write(chunk)
                if self.on_progress and time.monotonic() - last_progress > LEASE_EVERY_S:
                    last_progress = time.monotonic()
                    self.on_progress()
        except _TRANSPORT_ERRORS as exc:
            self.tmp.fh.flush()
            if self._dropped():
                kind_ = "length_mismatch" if total is not None else "http_error"
                raise Transient(
                    f"{self.where}: connection dropped {self.drops} times ({type(exc).__name__}); "
                    f"{self.tmp.offset} of {total if total is not None else '?'} bytes",
                    kind_,
                ) from None
            log.info(
                "download %s: connection dropped at byte %d (%s); resuming",
                self.where,
                self.tmp.offset,
                type(exc).__name__,
            )
            raise _Again from None

    def _write(self, chunk: bytes) -> None:
        tmp = self.tmp
        if tmp.offset == 0 and self.kind == "video" and _looks_like_markup(chunk[:512]):
            raise DownloadError(f"{self.where} sent markup, not a video", "not_a_video")
        if tmp.offset + len(chunk) > self.max_bytes:
            raise DownloadError(
                f"{self.where} is above SEEDANCE_DOWNLOAD_MAX_BYTES={self.max_bytes}", "too_large"
            )
        tmp.fh.write(chunk)
        self.hasher.update(chunk)
        tmp.offset += len(chunk)

    def finish(self, total: int | None, media_type: str) -> tuple[str, int, str]:
        """(sha256, bytes, content type) once the body is all there; a short body resumes."""
        offset = self.tmp.offset
        if total is not None and offset != total:
            if offset < total:
                if self._dropped():
                    raise Transient(
                        f"{self.where}: body ended at {offset} of {total} bytes ({self.drops} times)",
                        "length_mismatch",
                    )
                raise _Again
            raise DownloadError(
                f"{self.where}: received {offset} bytes, Content-Length said {total}", "length_mismatch"
            )
        if offset == 0:
            raise DownloadError(f"{self.where} sent an empty body", "length_mismatch")
        return self.hasher.hexdigest(), offset, media_type

    def _dropped(self) -> bool:
        """Count one lost connection (or short body); True once there were more than MAX_RESUMES."""
        self.drops += 1
        return self.drops > MAX_RESUMES

    def _start_over(self, why: str) -> NoReturn:
        self.restarts += 1
        if self.restarts > MAX_RESTARTS:
            raise DownloadError(f"{self.where}: {why} (gave up after {self.restarts} restarts)", "http_error")
        log.info("download %s: %s; starting over from byte 0", self.where, why)
        self.hasher = _restart(self.tmp)
        raise _Again


def fetch_into(
    session: requests.Session,
    url: str,
    tmp: PartialFile,
    *,
    kind: Kind,
    settings: Settings,
    on_progress: Callable[[], None] | None = None,
) -> tuple[str, int, str]:
    """Stream ``url`` into ``tmp`` (resuming what it holds); returns (sha256, bytes, content type)."""
    return _Fetch(session, url, tmp, kind, settings, on_progress).run()
