"""``GET /files/{id}.mp4|.png``: the signed-URL checks (TOS-style XML errors), first-download expiry,
dropped connections, ranges, and the bytes behind them (cached per task and size).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from datetime import UTC, datetime

from seedance_worker.testing.simulator.config import Shared, SimConfig
from seedance_worker.testing.simulator.faults import FaultGate
from seedance_worker.testing.simulator.media import make_mp4, make_png
from seedance_worker.testing.simulator.state import TaskBook
from seedance_worker.testing.simulator.task import Task
from seedance_worker.testing.simulator.urls import UrlSigner
from seedance_worker.testing.simulator.wire import Reply, tos_error

# Larger videos are rebuilt per request rather than held in memory.
_CACHE_LIMIT = 8 * 1024 * 1024
_HTML_403 = b"<!DOCTYPE html><html><body><h1>403 Forbidden</h1><p>Access denied.</p></body></html>"


def parse_range(header: str | None, total: int) -> tuple[int, int] | str | None:
    """``(start, end)`` inclusive, ``"invalid"`` (416) or None (serve everything)."""
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    if m.group(1) == "":
        n = int(m.group(2))
        if n == 0:
            return "invalid"
        return max(0, total - n), total - 1
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else total - 1
    if start >= total or end < start:
        return "invalid"
    return start, min(end, total - 1)


class Downloads:
    """Serves the files of succeeded tasks (also of deleted ones, as the real bucket does)."""

    def __init__(self, shared: Shared, book: TaskBook, faults: FaultGate, signer: UrlSigner) -> None:
        self._shared = shared
        self._book = book
        self._faults = faults
        self._signer = signer
        self._cache: dict[tuple[str, int], bytes] = {}

    def forget(self, task_id: str) -> None:
        """Drop a purged task's cached files (called under the lock)."""
        for key in [k for k in self._cache if k[0] == task_id]:
            self._cache.pop(key, None)

    def body(self, t: Task, kind: str) -> tuple[bytes, str]:
        """The bytes and content type served for one of the task's files."""
        if kind == "last_frame":
            return make_png(t.id), "image/png"
        cfg = self._shared.config
        ctype = str(t.overrides.get("video_content_type", cfg.video_content_type))
        body = t.overrides.get("video_body")
        if isinstance(body, bytes):
            return body, ctype
        if ctype.startswith("text/html"):
            return _HTML_403, ctype
        size = int(t.overrides.get("video_bytes", cfg.video_bytes))
        key = (t.id, size)
        cached = self._cache.get(key)
        if cached is None:
            duration = t.echo.get("duration", 5)
            if "frames" in t.echo:
                duration = max(1, int(t.echo["frames"]) // 24)
            cached = make_mp4(t.id, int(duration), size)
            if len(cached) <= _CACHE_LIMIT:
                self._cache[key] = cached
        return cached, ctype

    def serve(
        self,
        method: str,
        task_id: str,
        path: str,
        query: dict[str, list[str]],
        range_header: str | None,
        rid: str,
        cfg: SimConfig,
    ) -> Reply:
        kind = "last_frame" if path.endswith(".png") else "video"
        fault = self._fault(task_id, cfg)
        params = {k: v[-1] for k, v in query.items() if v}
        with self._shared.lock:
            found = self._admit_locked(method, task_id, path, params, kind, rid, fault, cfg)
        if isinstance(found, Reply):
            return found
        t, drop = found
        resp = self._ranged(t, kind, range_header, rid, fault)
        if resp.status == 416:
            return resp
        if method == "HEAD":
            resp.content_length = len(resp.body)
            resp.body = b""
        if drop is not None:
            resp.drop_after = int(drop)
            resp.fault = resp.fault or "drop"
        return resp

    def _fault(self, task_id: str, cfg: SimConfig) -> str | None:
        if not cfg.faults_apply_to_files:
            return None
        if cfg.latency_s > 0:
            time.sleep(cfg.latency_s)
        with self._shared.lock:
            fault = self._faults.decide("file", task_id, cfg)
        if fault == "timeout":
            time.sleep(cfg.timeout_sleep_s)
        return fault

    def _admit_locked(
        self,
        method: str,
        task_id: str,
        path: str,
        params: dict[str, str],
        kind: str,
        rid: str,
        fault: str | None,
        cfg: SimConfig,
    ) -> Reply | tuple[Task, int | None]:
        """The TOS refusal for this URL, or the task and after how many bytes to drop the connection."""

        def tos(status: int, code: str, message: str, fault: str | None = None) -> Reply:
            return Reply(
                status, tos_error(code, message, rid), "application/xml", fault=fault, task_id=task_id
            )

        t = self._book.find_locked(task_id, deleted_too=True)
        if t is None or not t.urls:
            return tos(404, "NoSuchKey", "The specified key does not exist.", fault)
        sig = params.get("X-Tos-Signature", "")
        if not sig or not hmac.compare_digest(sig, self._signer.signature(path, params)):
            return tos(
                403, "SignatureDoesNotMatch", "The request signature we calculated does not match.", fault
            )
        try:
            date = datetime.strptime(params.get("X-Tos-Date", ""), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            expires = int(params.get("X-Tos-Expires", "0"))
        except ValueError:
            return tos(403, "AccessDenied", "Request has expired", fault)
        if sig in t.revoked or self._shared.clock() > date.timestamp() + expires:
            return tos(403, "AccessDenied", "Request has expired", fault or "expired_url")
        if cfg.expire_first_download and kind not in t.downloaded:
            t.downloaded.add(kind)
            t.revoked.add(sig)
            t.needs_fresh_urls = True
            return tos(403, "AccessDenied", "Request has expired", "expire_first_download")
        t.downloaded.add(kind)
        drop = t.overrides.get("drop_connection_after_bytes", cfg.drop_connection_after_bytes)
        if drop is not None and method != "HEAD":
            n = t.drops.get(kind, 0)
            if cfg.drop_connection_max is not None and n >= cfg.drop_connection_max:
                drop = None
            else:
                t.drops[kind] = n + 1
        return t, drop

    def _ranged(self, t: Task, kind: str, range_header: str | None, rid: str, fault: str | None) -> Reply:
        body, ctype = self.body(t, kind)
        total = len(body)
        etag = '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'
        headers = [("Accept-Ranges", "bytes"), ("ETag", etag), ("x-tos-request-id", rid)]
        rng = parse_range(range_header, total)
        if isinstance(rng, str):
            return Reply(416, b"", ctype, [("Content-Range", f"bytes */{total}")], fault, t.id)
        status = 200
        if rng is not None:
            start, end = rng
            body = body[start : end + 1]
            headers.append(("Content-Range", f"bytes {start}-{end}/{total}"))
            status = 206
        return Reply(status, body, ctype, headers, fault, t.id)
