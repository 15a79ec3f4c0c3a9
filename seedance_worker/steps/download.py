"""``seedance.download_video``: store the generated video (and its last frame) once, atomically.

The video is streamed from the signed ``content.video_url`` into a partial file while its sha256 is
computed (``fetch.py``), checked against ``Content-Length`` and made visible under ``<task_id>.mp4``
by an atomic rename (``storage.py``), or, when ``SEEDANCE_DOWNLOAD_DIR`` is ``s3://bucket/prefix``,
streamed as a multipart upload whose completion is the commit (``storage_s3.py``). Right after the
commit the result is kept in Redis::

    seedance:video:{task_id}  string, JSON {"uri", "sha256", "bytes", "content_type",
                                            "last_frame_uri", "stored_at"}  (TTL SEEDANCE_JOB_TTL_S)

so a second run (a redelivery, a re-driven hand-off) finds the record and the file of the same size
and returns the same ``VideoFile`` without fetching anything.

Faults and what happens:

* connection dropped (or a body slower than SEEDANCE_DOWNLOAD_MIN_BYTES_PER_S): resumed with
  ``Range: bytes=N-`` and ``If-Range`` (a ``200``, or a range of another version, restarts at 0);
* an attempt longer than SEEDANCE_DOWNLOAD_ATTEMPT_BUDGET_S: retried (kind ``too_slow``), resuming;
* 403/404 from storage (the signed URL expired): the task is fetched again for a fresh URL
  (at most ``MAX_URL_REFRESHES`` times);
* 5xx/429 from storage, or more drops than ``fetch.MAX_RESUMES``: ``self.retry`` (the chain is kept),
  at most ``MAX_RETRIES`` times; a partial file is kept so the retry resumes it;
* a full disk (ENOSPC, EFBIG): retried like a 5xx (kind ``storage_full``);
* the URL refresh held by the API's 429 (``Retry-After``, the fleet's cool-down): retried after it
  without spending one of the ``MAX_RETRIES`` (a 429 says nothing about the download; at most
  ``MAX_HOLDS`` such holds), so a disk that was full for a while and a 429 burst do not add up to
  a recorded error;
* S3 (``storage_s3.py``): a 5xx, throttling or an unreachable endpoint is retried like a 5xx, an
  S3 4xx (AccessDenied, NoSuchBucket, a bad signature) is recorded, both as kind ``storage_error``;
  the same object being uploaded by another attempt is ``busy`` and retried;
* host not allowed or private, malformed URL, body too large, not a video, bad length, URL expired
  for good, or any other error (``failures.classify``): nothing is raised; the error goes to
  ``outcome.step_errors["download"]`` and ``video`` stays ``null`` so the rest of the chain (charge,
  notify) still runs and the notification carries the error.

Signed URLs are never logged with their query string (host and path only), and the API key is never
sent to storage hosts: downloads use their own HTTP session.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from celery import Task, shared_task

from seedance_worker import connections, keys, metrics
from seedance_worker.client import get_client
from seedance_worker.engine.handoff import extend_lease, recorded_video
from seedance_worker.errors import DownloadError, RateLimited, RetryableError, SeedanceError
from seedance_worker.logs import redact as redact
from seedance_worker.models import Outcome, TaskSnapshot, VideoFile
from seedance_worker.outage import REDIS_DOWN, survive_redis_outage
from seedance_worker.ratelimit import RateLimiter
from seedance_worker.settings import Settings, get_settings
from seedance_worker.steps.body import Kind
from seedance_worker.steps.failures import Failure, classify
from seedance_worker.steps.fetch import Expired, Transient
from seedance_worker.steps.fetch import fetch_into as fetch_into
from seedance_worker.steps.fetch import host_allowed as host_allowed
from seedance_worker.steps.storage import LocalStorage, PartialFile, Storage, StorageBusy, file_name
from seedance_worker.steps.urls import download_session, shown

log = logging.getLogger(__name__)

MAX_RETRIES = 5
MAX_HOLDS = 20  # retries for a 429 cool-down, not counted in MAX_RETRIES
REFRESH_ATTEMPTS = 4  # GETs of the task per URL refresh before the task itself is retried
MAX_URL_REFRESHES = 2
VIDEO_SUFFIX = ".mp4"
LAST_FRAME_SUFFIXES = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "webp": ".webp"}


def video_key(task_id: str) -> str:
    return keys.video(task_id)


def storage_for(settings: Settings) -> Storage:
    """Where this deployment's files go: ``s3://bucket/prefix`` or a local directory."""
    target = settings.download_dir
    if isinstance(target, str):  # the settings keep only s3:// URIs as strings
        # Imported here: a worker storing to a local directory never loads boto3 (~20 MB).
        from seedance_worker.steps.storage_s3 import S3Storage

        return S3Storage(target, settings)
    return LocalStorage(target)


@dataclass(frozen=True)
class _Stored:
    uri: str
    sha256: str
    bytes: int
    content_type: str


def _fresh_url(task_id: str, kind: Kind, settings: Settings) -> str | None:
    # This GET is an API call like a poll: it waits for the fleet-wide limiter and honours a 429
    # cool-down (retrying the task after it) instead of hitting an API that asked for quiet.
    limiter = RateLimiter(connections.get_redis(settings), settings)
    permit = limiter.acquire()
    if permit.kind == "cooldown":
        raise Transient("the API asked for a pause (429)", "url_expired", permit.wait_s)
    time.sleep(min(permit.wait_s, settings.poll_countdown_cap_s))
    attempt = 0
    while True:
        try:
            snap = get_client(settings).get_task(task_id)
            break
        except RateLimited as exc:
            wait = exc.retry_after_s if exc.retry_after_s is not None else settings.poll_min_interval_s
            limiter.cool_down(wait)
            raise Transient("could not refresh the download URL: RateLimited", "url_expired", wait) from None
        except RetryableError as exc:
            # A 5xx or a timeout on this one GET should not spend a whole task retry (with its
            # download restart): try it again a few times here, backing off.
            attempt += 1
            if attempt >= REFRESH_ATTEMPTS:
                raise Transient(
                    f"could not refresh the download URL: {type(exc).__name__}", "url_expired"
                ) from None
            time.sleep(min(0.5 * 2**attempt, 4.0) * random.uniform(0.5, 1.0))
        except SeedanceError as exc:
            raise DownloadError(
                f"the download URL expired and the task could not be fetched again ({type(exc).__name__})",
                "url_expired",
            ) from None
    content = snap.content
    if content is None:
        return None
    return content.video_url if kind == "video" else content.last_frame_url


def _store_one(
    task_id: str,
    name: str,
    url: str,
    *,
    kind: Kind,
    storage: Storage,
    session: requests.Session,
    settings: Settings,
) -> _Stored:
    """Fetch ``url`` into ``name`` and commit it; an expired signed URL is swapped for a fresh one."""
    refreshes = 0
    while True:
        try:
            tmp = storage.open_partial(name)
        except StorageBusy:
            raise Transient(f"{name} is being downloaded by another worker", "busy") from None
        try:
            return _fetch_and_commit(
                task_id, name, url, tmp, kind=kind, storage=storage, session=session, settings=settings
            )
        except Expired as exc:
            url = _refresh_url(task_id, kind, exc, refreshes, tmp, storage=storage, settings=settings)
            refreshes += 1


def _fetch_and_commit(
    task_id: str,
    name: str,
    url: str,
    tmp: PartialFile,
    *,
    kind: Kind,
    storage: Storage,
    session: requests.Session,
    settings: Settings,
) -> _Stored:
    """One fetch into ``tmp`` made visible as ``name``; ``Expired`` leaves ``tmp`` to the caller."""
    committed = False
    try:
        sha, size, media_type = fetch_into(
            session,
            url,
            tmp,
            kind=kind,
            settings=settings,
            storage=storage,
            on_progress=lambda: extend_lease(task_id, settings),
        )
        uri = storage.commit(name, tmp)
        committed = True
        metrics.downloaded_bytes(size, kind)
        log.info(
            "download task=%s %s stored %s bytes=%d sha256=%s from=%s",
            task_id,
            kind,
            uri,
            size,
            sha[:16],
            shown(url),
        )
        return _Stored(uri, sha, size, media_type)
    except Expired:
        raise  # the caller asks for a fresh URL while it still holds the partial file
    except DownloadError:
        storage.discard(tmp)
        raise
    except BaseException:
        if not committed:
            storage.release(tmp)
        raise


def _refresh_url(
    task_id: str,
    kind: Kind,
    exc: Expired,
    refreshes: int,
    tmp: PartialFile,
    *,
    storage: Storage,
    settings: Settings,
) -> str:
    """A fresh signed URL for the next attempt, ``tmp`` kept for it (discarded if there is none)."""
    try:
        if refreshes >= MAX_URL_REFRESHES:
            raise DownloadError(
                f"{exc} after {refreshes} fresh URLs: the signed URL stays expired", "url_expired"
            ) from None
        log.info("download task=%s %s: %s; asking the API for a fresh URL", task_id, kind, exc)
        fresh = _fresh_url(task_id, kind, settings)
        if not fresh:
            raise DownloadError(f"{exc}, and the task has no {kind} URL any more", "url_expired") from None
    except DownloadError:
        storage.discard(tmp)
        raise
    except BaseException:
        storage.release(tmp)
        raise
    storage.release(tmp)
    return fresh


def drop_partial(storage: Storage, name: str) -> None:
    """Remove the partial file of a download we give up on (unless another worker is writing it)."""
    try:
        tmp = storage.open_partial(name)
    except (StorageBusy, DownloadError, OSError, Transient):
        return
    storage.discard(tmp)


def _last_frame_name(task_id: str, url: str) -> str:
    try:
        ext = urlsplit(url).path.rsplit(".", 1)[-1].lower()
    except ValueError:  # a malformed URL: its fetch is refused, the name only needs to be safe
        ext = ""
    return file_name(task_id, ".last_frame" + LAST_FRAME_SUFFIXES.get(ext, ".png"))


def _snapshot(out: Outcome, settings: Settings) -> TaskSnapshot | None:
    try:
        snap = out.snapshot_model()
    except ValueError:
        snap = None
    if snap is not None and snap.video_url:
        return snap
    # The outcome carried no usable snapshot (a trimmed hand-off): ask the API once.
    try:
        return get_client(settings).get_task(out.task_id)
    except RetryableError as exc:
        raise Transient(f"could not fetch the task for its video URL: {type(exc).__name__}") from None
    except SeedanceError as exc:
        raise DownloadError(
            f"the outcome has no video URL and the task could not be fetched: {exc}", "no_video_url"
        ) from None


def stored_video(task_id: str, settings: Settings, storage: Storage) -> VideoFile | None:
    """The VideoFile of an earlier completed download, when its record and its file still agree."""
    video = recorded_video(task_id, settings)
    if video is None or storage.size(file_name(task_id, VIDEO_SUFFIX)) != video.bytes:
        return None
    return video


def _save_record(task_id: str, video: VideoFile, settings: Settings) -> None:
    record = {**video.model_dump(mode="json"), "stored_at": time.time()}
    blob = json.dumps(record, separators=(",", ":"))
    connections.get_redis(settings).set(video_key(task_id), blob, ex=settings.job_ttl_s)


def _store_last_frame(
    task_id: str,
    frame_url: str,
    video: VideoFile,
    notes: dict[str, dict[str, Any]],
    *,
    storage: Storage,
    session: requests.Session,
    settings: Settings,
) -> VideoFile:
    """The video with its last frame, or as it was (and a note) when the frame could not be stored."""
    name = _last_frame_name(task_id, frame_url)
    try:
        frame = _store_one(
            task_id, name, frame_url, kind="last_frame", storage=storage, session=session, settings=settings
        )
    except REDIS_DOWN:
        raise
    except Exception as exc:
        # The video is what was paid for; a missing last frame does not fail the step (nor retry
        # it: the video's record is kept, so a retry would return at once without the frame).
        failure = classify(exc)
        log.warning("download task=%s last frame not stored: %s", task_id, failure.message)
        drop_partial(storage, name)
        notes["last_frame"] = failure.step_error()
        return video
    video = video.model_copy(update={"last_frame_uri": frame.uri})
    _save_record(task_id, video, settings)
    return video


def fetch_outputs(
    out: Outcome, settings: Settings, storage: Storage | None = None
) -> tuple[VideoFile, dict[str, dict[str, Any]]]:
    """Download the video (and last frame) of a succeeded outcome; returns it and non-fatal errors."""
    settings = settings.for_account(out.account)  # a fresh URL is asked of the task's own account
    storage = storage or storage_for(settings)
    task_id = out.task_id
    name = file_name(task_id, VIDEO_SUFFIX)  # refuses a hostile id before anything else happens
    done = stored_video(task_id, settings, storage)
    if done is not None:
        log.info("download task=%s already stored at %s; nothing to do", task_id, done.uri)
        return done, {}
    extend_lease(task_id, settings)
    snap = _snapshot(out, settings)
    video_url = snap.video_url if snap else None
    if not video_url:
        raise DownloadError("the succeeded task has no content.video_url", "no_video_url")
    notes: dict[str, dict[str, Any]] = {}
    with download_session(settings) as session:
        stored = _store_one(
            task_id, name, video_url, kind="video", storage=storage, session=session, settings=settings
        )
        video = VideoFile(
            uri=stored.uri, sha256=stored.sha256, bytes=stored.bytes, content_type=stored.content_type
        )
        _save_record(task_id, video, settings)
        frame_url = snap.content.last_frame_url if snap and snap.content else None
        if frame_url:
            video = _store_last_frame(
                task_id, frame_url, video, notes, storage=storage, session=session, settings=settings
            )
    return video, notes


def _record_error(out: Outcome, failure: Failure) -> dict[str, Any]:
    out.video = None
    out.step_errors["download"] = failure.step_error()
    log.warning("download task=%s failed kind=%s: %s", out.task_id, failure.kind, failure.message)
    return out.wire()


def retry_countdown(retries: int, cap_s: float = 300.0) -> float:
    # Capped like every countdown (SEEDANCE_POLL_COUNTDOWN_CAP_S): a retry message waiting longer
    # than the visibility timeout would be restored and run twice.
    return min(float(min(5 * 2**retries, 300)) * random.uniform(0.8, 1.2), cap_s)


def next_attempt(retries: int, holds: int, failure: Failure, cap_s: float) -> tuple[float, int] | None:
    """(countdown, holds) of the next attempt, or None: record the error.

    ``retries`` is Celery's count of earlier attempts and ``holds`` how many of them waited out the
    API's 429 (``failure.not_before_s``): those are not counted against ``MAX_RETRIES``.
    """
    hold = failure.not_before_s > 0 and holds < MAX_HOLDS
    counted = max(0, retries - holds)
    if not hold and counted >= MAX_RETRIES:
        return None
    countdown = min(max(retry_countdown(counted, cap_s), failure.not_before_s + 0.1), cap_s)
    return countdown, holds + 1 if hold else holds


def _retry_or_record(
    task: Task, out: Outcome, failure: Failure, settings: Settings, holds: int
) -> dict[str, Any]:
    """``self.retry`` with backoff while retries are left; then the error is recorded."""
    retries = int(task.request.retries or 0)
    plan = next_attempt(retries, holds, failure, settings.poll_countdown_cap_s)
    if plan is not None:
        countdown, next_holds = plan
        tid, why = out.task_id, failure.message
        if next_holds > holds:
            log.info("download task=%s: %s; waiting it out (hold %d/%d), retry in %.0fs",
                     tid, why, next_holds, MAX_HOLDS, countdown)  # fmt: skip
        else:
            log.warning("download task=%s: %s; retry %d/%d in %.0fs",
                        tid, why, retries - holds + 1, MAX_RETRIES, countdown)  # fmt: skip
        # The chain is waiting, not lost: keep the sweeper from re-firing it meanwhile.
        extend_lease(out.task_id, settings, extra_s=countdown)
        raise task.retry(
            countdown=countdown, max_retries=MAX_RETRIES + MAX_HOLDS, kwargs={"holds": next_holds}
        ) from None
    drop_partial(storage_for(settings), file_name(out.task_id, VIDEO_SUFFIX))
    gave_up = Failure(failure.kind, f"{failure.message} (gave up after {retries - holds + 1} attempts)")
    return _record_error(out, gave_up)


@shared_task(
    bind=True,
    name="seedance.download_video",
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=MAX_RETRIES + MAX_HOLDS,
)
@survive_redis_outage
def download_video(self: Task, outcome: dict[str, Any], holds: int = 0) -> dict[str, Any]:
    """Outcome in, Outcome out with ``video`` filled (or ``step_errors["download"]`` recorded).

    ``holds``: earlier attempts that waited out a 429 (set by the step's own retries)."""
    out = Outcome.model_validate(outcome)
    if not out.succeeded:
        return outcome
    settings = get_settings()
    try:
        video, notes = fetch_outputs(out, settings)
    except REDIS_DOWN:
        raise  # survive_redis_outage waits for Redis and runs the step again
    except Exception as exc:
        failure = classify(exc)
        if failure.transient:
            return _retry_or_record(self, out, failure, settings, holds)
        return _record_error(out, failure)
    out.video = video
    out.step_errors.pop("download", None)
    out.step_errors.update(notes)
    return out.wire()
