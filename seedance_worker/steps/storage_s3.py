"""Videos in an S3-compatible bucket: ``SEEDANCE_DOWNLOAD_DIR=s3://bucket/prefix``.

The same ``Storage`` protocol as the local directory (``storage.py``), with S3's own atomic commit:

* **Streamed.** ``open_partial`` hands ``fetch.py`` an ``_Upload`` as the partial file. Written
  bytes collect in memory only up to ``SEEDANCE_DOWNLOAD_S3_PART_BYTES`` (8 MiB) and then go out as
  one part of a multipart upload, so a 2 GB video costs one part of memory, never the video; the
  sha256 is computed by ``fetch.py`` on the way, as for a local file.
* **Atomic.** The upload goes straight to the final key: S3 shows nothing under a key until
  ``CompleteMultipartUpload``, which is the commit (a single-part upload for a small last frame
  too). A reader sees the whole object or none; a repeated download replaces it whole.
* **Exclusive, like the local flock.** One attempt per object uploads at a time: a Redis lease
  (``seedance:upload:{bucket}/{key}``, ``SEEDANCE_DOWNLOAD_S3_LEASE_S``, renewed as bytes are
  written) taken in ``open_partial``; another copy of the same download gets ``StorageBusy`` (its
  task retries and then finds the stored record). A SIGKILLed holder's lease runs out by itself.
* **Restarted after a crash.** Holding the lease, ``open_partial`` aborts every earlier unfinished
  upload of that key (a killed attempt's: nobody else can be writing it) and any upload under the
  prefix older than ``STALE_UPLOAD_S``. The new attempt starts at byte 0: the sha256 of an
  unfinished upload's parts cannot be recomputed, since S3 cannot read them back. A connection
  dropped *within* an attempt still resumes with ``Range`` (the hash is in memory). A bucket
  lifecycle rule ``AbortIncompleteMultipartUpload`` is the backstop for keys never retried.

Endpoint, region and credentials come from boto3's own chain (``AWS_ENDPOINT_URL``,
``AWS_REGION``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles);
none of them is ever logged or put into an error: messages name the bucket, key and S3 error code.
"""

from __future__ import annotations

import contextlib
import io
import logging
import mimetypes
import os
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, cast

import redis

from seedance_worker import connections, keys, scripts
from seedance_worker.errors import DownloadError
from seedance_worker.settings import Settings
from seedance_worker.settings_parts import s3_location
from seedance_worker.steps.fetch import Transient
from seedance_worker.steps.storage import PartialFile, StorageBusy, check_name
from seedance_worker.version import __version__

try:  # the optional extra: seedance-worker[s3]
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError
except ImportError:  # pragma: no cover - exercised only without the extra
    boto3 = None

log = logging.getLogger(__name__)

STALE_UPLOAD_S = 24 * 3600.0  # an unfinished upload this old under the prefix is abandoned
SWEEP_EVERY_S = 3600.0
_swept_at = -SWEEP_EVERY_S  # monotonic time of this process's last sweep of the prefix
HEAD_BYTES = 64
_NOT_FOUND = ("404", "NoSuchKey", "NotFound")
_THROTTLED = ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout")
_clients: dict[tuple[int, int, float, float], Any] = {}


def s3_client(settings: Settings) -> Any:
    """One boto3 S3 client per process (and timeouts): its endpoint and keys are boto3's own chain."""
    if boto3 is None:
        raise DownloadError(
            "SEEDANCE_DOWNLOAD_DIR is an s3:// URI but boto3 is not installed: "
            "pip install 'seedance-worker[s3]'",
            "storage_error",
        )
    # Keyed by what shapes the client, so a changed AWS_* environment (a test) gets a new one; the
    # key holds a hash of those values only.
    chain = hash(tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))))
    key = (os.getpid(), chain, settings.http_connect_timeout_s, settings.download_timeout_s)
    client = _clients.get(key)
    if client is None:
        extra: dict[str, Any] = {}
        if not os.environ.keys() & {"AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"}:
            # A few quick retries of a request; the task's own retries back off for longer.
            extra["retries"] = {"mode": "standard", "max_attempts": 3}
        config = Config(
            connect_timeout=settings.http_connect_timeout_s,
            read_timeout=settings.download_timeout_s,
            user_agent_extra=f"seedance-worker/{__version__}",
            **extra,
        )
        # A fresh session per process: a boto3 client is not safe to share across a fork.
        client = boto3.session.Session().client("s3", config=config)
        _clients.clear()
        _clients[key] = client
    return client


def s3_failure(exc: Exception, what: str, where: str) -> Exception:
    """The download step's view of an S3 error: ``Transient`` (retry) or ``DownloadError``."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = f"S3 {what} {where} failed: {code or 'HTTP'} (HTTP {status})"
        if code == "NoSuchUpload":
            return Transient(message + ": the upload was taken over by another attempt", "busy")
        if status >= 500 or status == 429 or code in _THROTTLED:
            return Transient(message, "storage_error")
        return DownloadError(message, "storage_error")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return DownloadError(f"S3 {what} {where} failed: {type(exc).__name__}", "storage_error")
    # Connection refused, timeouts, a dropped connection: the store may be back soon. The class
    # name only: a botocore message can quote the endpoint URL.
    return Transient(f"S3 {what} {where} failed: {type(exc).__name__}", "storage_error")


class _Lease:
    """Who uploads one object right now: a Redis string holding the attempt's random token."""

    def __init__(self, r: redis.Redis, key: str, ttl_s: float) -> None:
        self.r = r
        self.key = key
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.token = secrets.token_hex(16)
        self.renewed_at = 0.0

    def acquire(self) -> bool:
        self.renewed_at = time.monotonic()
        return bool(self.r.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def renew_if_due(self) -> None:
        """Extend the lease once a third of it has passed; ``Transient(busy)`` if another has it."""
        if time.monotonic() - self.renewed_at < self.ttl_ms / 3000:
            return
        self.renewed_at = time.monotonic()
        if not scripts.load(self.r, __package__ or "", "upload_lease")(
            keys=[self.key], args=[self.token, self.ttl_ms]
        ):
            raise Transient(f"the upload lease of {self.key} ran out and another attempt took it", "busy")

    def release(self) -> None:
        # Best effort: a lease that cannot be released (Redis away) runs out by itself.
        with contextlib.suppress(redis.RedisError):
            scripts.load(self.r, __package__ or "", "upload_lease")(keys=[self.key], args=[self.token, 0])


class _Upload:
    """The partial "file" of one S3 object: a multipart upload fed part by part.

    It offers what ``fetch.py`` uses of a partial file: ``write``, ``flush``, ``seek(0)`` plus
    ``truncate()`` (start over: the upload so far is aborted) and ``head`` (the first bytes, for
    the signature check). Nothing is sent until a part is full or the upload is completed.
    """

    def __init__(self, storage: S3Storage, key: str, lease: _Lease) -> None:
        self.storage = storage
        self.key = key
        self.lease = lease
        self.content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.pending = io.BytesIO()  # the part being filled; sent as it is, without a copy
        self.size = 0
        self.first = b""
        self.closed = False

    def write(self, data: bytes) -> int:
        if len(self.first) < HEAD_BYTES:
            self.first += bytes(data[: HEAD_BYTES - len(self.first)])
        self.pending.write(data)
        self.size += len(data)
        self.lease.renew_if_due()
        if self.pending.tell() >= self.storage.part_bytes:
            self._send_part()
        return len(data)

    def head(self, n: int) -> bytes:
        return self.first[:n]

    def flush(self) -> None:
        """Nothing to do: bytes are durable only once their part is sent, and a restart redoes them."""

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if (offset, whence) in ((0, os.SEEK_END), (self.size, os.SEEK_SET)):
            return self.size
        if (offset, whence) == (0, os.SEEK_SET):
            return 0  # fetch.py's restart: truncate() follows
        raise OSError(f"an S3 upload cannot seek to {offset} (whence {whence})")

    def truncate(self, size: int | None = None) -> int:
        if size not in (None, 0):
            raise OSError("an S3 upload can only start over, not be cut short")
        self.abort()
        self.closed = False
        self.parts, self.pending, self.size, self.first = [], io.BytesIO(), 0, b""
        return 0

    def read(self, size: int = -1) -> bytes:
        raise OSError("an unfinished S3 upload cannot be read back")

    def _send_part(self) -> None:
        s = self.storage
        if self.upload_id is None:
            made = s.call(
                "CreateMultipartUpload",
                self.key,
                s.client.create_multipart_upload,
                Bucket=s.bucket,
                Key=self.key,
                ContentType=self.content_type,
            )
            self.upload_id = str(made["UploadId"])
        body, self.pending = self.pending, io.BytesIO()
        body.seek(0)
        number = len(self.parts) + 1
        sent = s.call(
            "UploadPart",
            self.key,
            s.client.upload_part,
            Bucket=s.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=body,
        )
        self.parts.append({"PartNumber": number, "ETag": sent["ETag"]})
        self.lease.renew_if_due()

    def complete(self) -> None:
        """Send the last part and complete the upload: the object appears whole under its key."""
        if self.pending.tell() or not self.parts:
            self._send_part()
        s = self.storage
        s.call(
            "CompleteMultipartUpload",
            self.key,
            s.client.complete_multipart_upload,
            Bucket=s.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self.parts},
        )
        self.upload_id = None
        self.closed = True

    def abort(self) -> None:
        """Drop the parts sent so far (best effort: a failed abort is cleaned up by the next attempt)."""
        upload_id, self.upload_id, self.closed = self.upload_id, None, True
        self.pending = io.BytesIO()
        if upload_id is not None:
            self.storage.abort_upload(self.key, upload_id)

    def close(self) -> None:
        if not self.closed:
            self.abort()


class S3Storage:
    """Objects under ``s3://bucket/prefix``: ``<prefix><task_id>.mp4`` and its last frame."""

    def __init__(self, uri: str, settings: Settings, client: Any = None) -> None:
        self.bucket, self.prefix = s3_location(uri)
        self.settings = settings
        self.part_bytes = settings.download_s3_part_bytes
        self.client = client if client is not None else s3_client(settings)

    def __repr__(self) -> str:
        return f"S3Storage('s3://{self.bucket}/{self.prefix}')"

    def key(self, name: str) -> str:
        return self.prefix + check_name(name)

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    def call(self, what: str, key: str, fn: Any, **kw: Any) -> Any:
        """``fn(**kw)``, its S3 errors turned into the download step's (``s3_failure``)."""
        try:
            return fn(**kw)
        except (ClientError, BotoCoreError) as exc:
            raise s3_failure(exc, what, f"s3://{self.bucket}/{key}") from None

    def size(self, name: str) -> int | None:
        key = self.key(name)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND:
                return None
            raise s3_failure(exc, "HeadObject", f"s3://{self.bucket}/{key}") from None
        except BotoCoreError as exc:
            raise s3_failure(exc, "HeadObject", f"s3://{self.bucket}/{key}") from None
        return int(head["ContentLength"])

    def exists(self, name: str) -> bool:
        return self.size(name) is not None

    def open_partial(self, name: str) -> PartialFile:
        key = self.key(name)
        r = connections.get_redis(self.settings)
        lease = _Lease(r, keys.upload_lease(self.bucket, key), self.settings.download_s3_lease_s)
        if not lease.acquire():
            raise StorageBusy(name)
        try:
            self.abort_stale(key)
        except BaseException:
            lease.release()
            raise
        return PartialFile(name=name, fh=cast(BinaryIO, _Upload(self, key, lease)), offset=0)

    def abort_stale(self, key: str) -> int:
        """Abort ``key``'s unfinished uploads (we hold its lease: their uploaders are gone) and, at
        most once an hour per process, uploads under the prefix abandoned for ``STALE_UPLOAD_S``."""
        listed = self.call(
            "ListMultipartUploads", key, self.client.list_multipart_uploads, Bucket=self.bucket, Prefix=key
        )
        dead = [up for up in listed.get("Uploads") or [] if up.get("Key") == key]
        global _swept_at
        if time.monotonic() - _swept_at > SWEEP_EVERY_S:
            _swept_at = time.monotonic()
            dead += self._abandoned(key)
        for up in dead:
            log.info("storage: aborting an unfinished upload of s3://%s/%s", self.bucket, up["Key"])
            self.abort_upload(str(up["Key"]), str(up["UploadId"]))
        return len(dead)

    def _abandoned(self, key: str) -> list[dict[str, Any]]:
        """Uploads under the prefix started more than ``STALE_UPLOAD_S`` ago (first page only)."""
        listed = self.call(
            "ListMultipartUploads",
            key,
            self.client.list_multipart_uploads,
            Bucket=self.bucket,
            Prefix=self.prefix,
        )
        cutoff = datetime.now(UTC) - timedelta(seconds=STALE_UPLOAD_S)
        return [
            up
            for up in listed.get("Uploads") or []
            if up.get("Key") != key and isinstance(up.get("Initiated"), datetime) and up["Initiated"] < cutoff
        ]

    def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as exc:
            why = type(exc).__name__
            log.warning("storage: could not abort an upload of s3://%s/%s: %s", self.bucket, key, why)

    def save_meta(self, tmp: PartialFile, meta: dict[str, Any]) -> None:
        # Kept in memory only: a later attempt restarts the upload, it never resumes one.
        tmp.meta = dict(meta)

    def commit(self, name: str, tmp: PartialFile) -> str:
        up = _upload_of(tmp)
        try:
            up.complete()
            stored = self.size(name)
        finally:
            up.lease.release()
        if stored != up.size:
            raise DownloadError(
                f"s3://{self.bucket}/{up.key} holds {stored} bytes after the upload of {up.size}",
                "length_mismatch",
            )
        return self.uri(name)

    def discard(self, tmp: PartialFile) -> None:
        up = _upload_of(tmp)
        try:
            up.abort()
        finally:
            up.lease.release()

    def release(self, tmp: PartialFile) -> None:
        """Like ``discard``: the next attempt restarts the object (see the module docstring)."""
        self.discard(tmp)

    def problem(self) -> str | None:
        """Why the bucket cannot be used (for ``seedance-worker check``), or None."""
        try:
            # What every upload starts with (and it answers with an error code, unlike HEAD).
            self.call(
                "ListMultipartUploads",
                "",
                self.client.list_multipart_uploads,
                Bucket=self.bucket,
                Prefix=self.prefix,
                MaxUploads=1,
            )
        except (DownloadError, Transient) as exc:
            return str(exc.args[0])
        return None


def _upload_of(tmp: PartialFile) -> _Upload:
    up = cast(object, tmp.fh)
    if not isinstance(up, _Upload):
        raise TypeError(f"{tmp.name} is not an S3 upload")
    return up
