"""The allow-listed, resumable HTTP GET of one signed storage URL into a partial file.

``fetch_into`` streams the body into a ``PartialFile`` (``storage.py``) while its sha256 is computed:

* every hop of a redirect is judged again (``urls.judge``: allow list, public address, a URL every
  parser reads the same way);
* a connection dropped mid-body is resumed with ``Range: bytes=N-`` and ``If-Range`` (the ``ETag``
  or ``Last-Modified`` the first answer gave, kept next to the partial file), at most
  ``MAX_RESUMES`` times before ``Transient`` asks for a task retry. The ``206`` must start where
  the file ends and agree with the saved validator and size; a ``200`` (the file changed, or the
  server ignores ranges), a mismatch, or a partial file without saved facts restarts from byte 0;
* a body slower than ``SEEDANCE_DOWNLOAD_MIN_BYTES_PER_S`` over a read-timeout window counts as a
  drop, and one attempt never takes longer than ``SEEDANCE_DOWNLOAD_ATTEMPT_BUDGET_S`` (then
  ``Transient(too_slow)``: the task retry resumes it);
* a gzip/deflate body is decoded as it streams, and the stored bytes must carry the signature of
  their kind (``body.py``);
* 403/404/410 raise ``Expired`` (the caller asks the API for a fresh signed URL); 5xx/429 raise
  ``Transient``; a body that is not a video, too large or of the wrong length raises
  ``DownloadError``.

Signed URLs are logged without their query string (``urls.shown``), also in urllib3's own DEBUG
lines (``RedactQueryFilter``), and the API key is never sent: downloads use their own session.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import NoReturn
from urllib.parse import urljoin

import requests
import urllib3

from seedance_worker.errors import DownloadError
from seedance_worker.settings import Settings
from seedance_worker.steps.body import SNIFF_BYTES, Decoder, Kind, TooLarge, check_signature, content_encoding
from seedance_worker.steps.storage import PartialFile, Storage
from seedance_worker.steps.urls import host_allowed as host_allowed
from seedance_worker.steps.urls import judge, shown
from seedance_worker.version import __version__

log = logging.getLogger(__name__)

MAX_RESUMES = 3
MAX_REDIRECTS = 5
MAX_RESTARTS = 2  # from byte 0, when the server will not resume as asked
CHUNK_BYTES = 64 * 1024
LEASE_EVERY_S = 60.0
_REDIRECTS = (301, 302, 303, 307, 308)
_EXPIRED = (403, 404, 410)
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_TRANSPORT_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.Timeout,
)


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


def _media_type(resp: requests.Response) -> str:
    value = resp.headers.get("Content-Type") or "application/octet-stream"
    return value.split(";", 1)[0].strip().lower() or "application/octet-stream"


def _acceptable(media_type: str, kind: Kind) -> bool:
    major = "video/" if kind == "video" else "image/"
    return media_type.startswith(major) or media_type == "application/octet-stream"


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


def _validators(resp: requests.Response) -> dict[str, str]:
    """The answer's strong ``ETag`` and its ``Last-Modified`` (a weak ETag cannot guard a range)."""
    found = {}
    etag = (resp.headers.get("ETag") or "").strip()
    if etag and not etag.startswith("W/") and len(etag) <= 200:
        found["etag"] = etag
    modified = (resp.headers.get("Last-Modified") or "").strip()
    if modified and len(modified) <= 100:
        found["last_modified"] = modified
    return found


def _chunks(resp: requests.Response) -> Iterator[bytes]:
    """The body as it arrives, undecoded (``Decoder`` decodes it; the wire length is checked).

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


def _next_hop(url: str, location: str) -> str:
    try:
        return urljoin(url, location)
    except ValueError:
        raise DownloadError(f"{shown(url)} redirected to a malformed Location", "invalid_url") from None


def _get(
    session: requests.Session, url: str, headers: dict[str, str], settings: Settings
) -> requests.Response:
    """GET without automatic redirects: every hop's URL is judged before it is fetched."""
    for _ in range(MAX_REDIRECTS + 1):
        judge(url, settings)
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
            url = _next_hop(url, location)
            continue
        return resp
    raise DownloadError(f"more than {MAX_REDIRECTS} redirects from {shown(url)}", "http_error")


def _restart(tmp: PartialFile) -> hashlib._Hash:
    tmp.fh.seek(0)
    tmp.fh.truncate()
    tmp.offset = 0
    return hashlib.sha256()


def _rehash(tmp: PartialFile, max_bytes: int) -> hashlib._Hash:
    """The hash of what an earlier attempt left in the partial file, or a restart.

    Only bytes whose source the server can vouch for are kept: a partial file without a saved
    validator (left by an older version, or planted) starts over at byte 0.
    """
    total = tmp.meta.get("total")
    usable = not isinstance(total, int) or tmp.offset <= total
    if tmp.offset == 0 or tmp.offset > max_bytes or not tmp.meta.get("validator") or not usable:
        if tmp.offset:
            log.info("download %s: partial file not resumable; starting at byte 0", tmp.name)
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


class _Slow(Exception):
    """The body arrives slower than the minimum throughput: dropped like a lost connection."""


class _Pace:
    """Bytes per window (the read timeout): fewer than ``min_bytes_per_s`` for a window is too slow."""

    def __init__(self, settings: Settings) -> None:
        self.min_bytes_per_s = settings.download_min_bytes_per_s
        self.window_s = settings.download_timeout_s
        self.start = time.monotonic()
        self.bytes = 0

    def add(self, n: int) -> None:
        self.bytes += n
        now = time.monotonic()
        elapsed = now - self.start
        if elapsed < self.window_s:
            return
        if self.bytes < self.min_bytes_per_s * elapsed:
            raise _Slow(f"{self.bytes} bytes in {elapsed:.0f} s")
        self.start, self.bytes = now, 0


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
        storage: Storage,
        on_progress: Callable[[], None] | None,
    ) -> None:
        self.session = session
        self.url = url
        self.tmp = tmp
        self.kind: Kind = kind
        self.settings = settings
        self.storage = storage
        self.on_progress = on_progress
        self.where = shown(url)
        self.max_bytes = settings.download_max_bytes
        self.deadline = time.monotonic() + settings.download_attempt_budget_s
        self.hasher = _rehash(tmp, self.max_bytes)
        self.drops = 0
        self.restarts = 0
        self.decoder = Decoder("")
        self.wire_length: int | None = None  # Content-Length of the current answer
        self.received = 0  # its body bytes as they came over the wire

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
        self._check_budget()
        headers = {"Accept-Encoding": "identity", "User-Agent": f"seedance-worker/{__version__}"}
        if self.tmp.offset and not self.tmp.meta.get("validator"):
            self.hasher = _restart(self.tmp)  # bytes nothing can vouch for (an encoded body): redo
        if self.tmp.offset:
            headers["Range"] = f"bytes={self.tmp.offset}-"
            headers["If-Range"] = str(self.tmp.meta["validator"])
        try:
            return _get(self.session, self.url, headers, self.settings)
        except _TRANSPORT_ERRORS as exc:
            self._drop(type(exc).__name__, "http_error")

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
        try:
            self.decoder = Decoder(content_encoding(resp.headers.get("Content-Encoding")))
        except DownloadError as exc:
            raise DownloadError(f"{self.where}: {exc.message}", exc.kind) from None
        return media_type

    def resume(self, resp: requests.Response) -> int | None:
        """The whole file's size when known; a ``200`` restarts the partial file."""
        self.wire_length = _int_header(resp, "Content-Length")
        self.received = 0
        ranged = resp.status_code == 206
        total = self._ranged_total(resp, self.wire_length) if ranged else self._begin(resp)
        if total is not None and total > self.max_bytes:
            raise DownloadError(
                f"{self.where} is {total} bytes, above SEEDANCE_DOWNLOAD_MAX_BYTES={self.max_bytes}",
                "too_large",
            )
        return total

    def _begin(self, resp: requests.Response) -> int | None:
        """A whole body from byte 0: note what vouches for it, so a drop can resume it."""
        if self.tmp.offset:  # the server ignored Range, or If-Range said the file changed
            log.info("download %s: a full answer to a resume; restarting from byte 0", self.where)
        self.hasher = _restart(self.tmp)
        if self.decoder.coding:
            self.storage.save_meta(self.tmp, {})  # an encoded body cannot be resumed by range
            return None
        found = _validators(resp)
        validator = found.get("etag") or found.get("last_modified")
        meta = {**found, "validator": validator, "total": self.wire_length} if validator else {}
        self.storage.save_meta(self.tmp, meta)
        return self.wire_length

    def _ranged_total(self, resp: requests.Response, length: int | None) -> int | None:
        rng = _content_range(resp.headers.get("Content-Range"))
        if self.decoder.coding:
            self._start_over(f"the server encoded the range ({self.decoder.coding})")
        if rng is None or rng[0] != self.tmp.offset:
            self._start_over("the server answered a different range than asked")
        saved = self.tmp.meta
        for name, value in _validators(resp).items():
            if saved.get(name) and saved[name] != value:
                self._start_over(f"the file changed on the server ({name})")
        total = rng[2]
        if total is None and length is not None:
            total = self.tmp.offset + length
        if saved.get("total") is not None and total is not None and total != saved["total"]:
            self._start_over(f"the file's size changed on the server ({saved['total']} -> {total})")
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
        pace = _Pace(self.settings)
        try:
            for chunk in _chunks(resp):
                self.received += len(chunk)
                for piece in self.decoder.feed(chunk, self.max_bytes - self.tmp.offset):
                    self._write(piece)
                self._check_budget()
                pace.add(len(chunk))
                if self.on_progress and time.monotonic() - last_progress > LEASE_EVERY_S:
                    last_progress = time.monotonic()
                    self.on_progress()
        except TooLarge:
            raise DownloadError(
                f"{self.where} is above SEEDANCE_DOWNLOAD_MAX_BYTES={self.max_bytes}", "too_large"
            ) from None
        except _TRANSPORT_ERRORS as exc:
            self.tmp.fh.flush()
            kind = "length_mismatch" if total is not None else "http_error"
            self._drop(f"connection dropped ({type(exc).__name__})", kind, total)
        except _Slow as exc:
            self.tmp.fh.flush()
            minimum = self.settings.download_min_bytes_per_s
            self._drop(f"slower than SEEDANCE_DOWNLOAD_MIN_BYTES_PER_S={minimum} ({exc})", "too_slow", total)

    def _write(self, piece: bytes) -> None:
        tmp = self.tmp
        before = tmp.offset
        tmp.fh.write(piece)
        self.hasher.update(piece)
        tmp.offset += len(piece)
        if before < SNIFF_BYTES <= tmp.offset:
            self._sniff()  # refuse an error page before the rest of it is fetched

    def _sniff(self) -> None:
        check_signature(self.tmp.head(SNIFF_BYTES), self.kind, self.where)

    def finish(self, total: int | None, media_type: str) -> tuple[str, int, str]:
        """(sha256, bytes, content type) once the body is all there; a short body resumes."""
        offset = self.tmp.offset
        wire_short = self.wire_length is not None and self.received < self.wire_length
        if wire_short or (total is not None and offset < total) or not self.decoder.complete:
            if self.decoder.coding and not wire_short and self.wire_length is not None:
                raise DownloadError(f"{self.where}: the {self.decoder.coding} body ends early", "http_error")
            self._drop("body ended early", "length_mismatch", total)
        if total is not None and offset != total:
            raise DownloadError(
                f"{self.where}: received {offset} bytes, Content-Length said {total}", "length_mismatch"
            )
        if offset == 0:
            raise DownloadError(f"{self.where} sent an empty body", "length_mismatch")
        self._sniff()
        return self.hasher.hexdigest(), offset, media_type

    def _check_budget(self) -> None:
        if time.monotonic() > self.deadline:
            self.tmp.fh.flush()
            budget = self.settings.download_attempt_budget_s
            raise Transient(
                f"{self.where}: not done within SEEDANCE_DOWNLOAD_ATTEMPT_BUDGET_S={budget:g} "
                f"({self.tmp.offset} bytes so far); a retry resumes it",
                "too_slow",
            )

    def _drop(self, why: str, kind: str, total: int | None = None) -> NoReturn:
        """Count one lost connection (or short or slow body): resume, or after MAX_RESUMES retry."""
        self.drops += 1
        of = f"{self.tmp.offset} of {total if total is not None else '?'} bytes"
        if self.drops > MAX_RESUMES:
            raise Transient(f"{self.where}: {why}, {self.drops} times; {of}", kind)
        log.info("download %s: %s at %s; resuming", self.where, why, of)
        raise _Again

    def _start_over(self, why: str) -> NoReturn:
        self.restarts += 1
        if self.restarts > MAX_RESTARTS:
            raise DownloadError(f"{self.where}: {why} (gave up after {self.restarts} restarts)", "http_error")
        log.info("download %s: %s; starting over from byte 0", self.where, why)
        self.hasher = _restart(self.tmp)
        self.storage.save_meta(self.tmp, {})
        raise _Again


def fetch_into(
    session: requests.Session,
    url: str,
    tmp: PartialFile,
    *,
    kind: Kind,
    settings: Settings,
    storage: Storage,
    on_progress: Callable[[], None] | None = None,
) -> tuple[str, int, str]:
    """Stream ``url`` into ``tmp`` (resuming what it holds); returns (sha256, bytes, content type)."""
    return _Fetch(session, url, tmp, kind, settings, storage, on_progress).run()
