"""The one HTTP client for the Ark task API (requests, one pooled Session per process).

Every non-2xx response and every transport failure becomes a class of ``errors.py``; this is the
only module that knows HTTP status codes. The API key lives in the Session's headers only: it is
never put into an exception, a log line or a repr.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from seedance_worker import errors, metrics
from seedance_worker.models import CreateRequest, TaskList, TaskSnapshot
from seedance_worker.settings import Settings, get_settings
from seedance_worker.version import __version__

log = logging.getLogger(__name__)

USER_AGENT = f"seedance-worker/{__version__} (+python-requests/{requests.__version__})"
TASKS_PATH = "/contents/generations/tasks"
_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def validate_task_id(task_id: str) -> str:
    """Refuse ids that could not be a remote task id (and could escape a URL path or a file name)."""
    if not isinstance(task_id, str) or not _TASK_ID.match(task_id):
        raise errors.InvalidRequest(
            f"malformed task id {task_id!r}: expected letters, digits and '-_.:' (like cgt-2025...-abcde)"
        )
    return task_id


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as delta-seconds or an HTTP-date (RFC 9110 10.2.3); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class ArkClient:
    """Thin, typed wrapper over the four task endpoints."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.session = session or requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(
            {
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            }
        )

    def __repr__(self) -> str:
        return f"ArkClient(base_url={self.base_url!r})"

    @classmethod
    def from_settings(cls, settings: Settings) -> ArkClient:
        return cls(
            settings.api_base_url,
            settings.api_key_value(),
            connect_timeout_s=settings.http_connect_timeout_s,
            read_timeout_s=settings.http_read_timeout_s,
        )

    def close(self) -> None:
        self.session.close()

    # --- endpoints --------------------------------------------------------------------------------

    def get_task(self, task_id: str) -> TaskSnapshot:
        validate_task_id(task_id)
        body = self._request("GET", f"{TASKS_PATH}/{quote(task_id, safe='')}", task_id=task_id)
        snap: TaskSnapshot = self._parse(TaskSnapshot, body, task_id)
        if snap.id != task_id:
            raise errors.BadResponse(f"asked for task {task_id} but the API answered with {snap.id}")
        return snap

    def list_tasks(
        self,
        *,
        task_ids: Iterable[str] | None = None,
        status: str | None = None,
        model: str | None = None,
        service_tier: str | None = None,
        page_num: int = 1,
        page_size: int = 10,
    ) -> TaskList:
        params: list[tuple[str, str]] = [("page_num", str(page_num)), ("page_size", str(page_size))]
        for tid in task_ids or ():
            params.append(("filter.task_ids", validate_task_id(tid)))
        if status:
            params.append(("filter.status", status))
        if model:
            params.append(("filter.model", model))
        if service_tier:
            params.append(("filter.service_tier", service_tier))
        body = self._request("GET", TASKS_PATH, params=params)
        listing: TaskList = self._parse(TaskList, body, None)
        return listing

    def create_task(self, request: CreateRequest | Mapping[str, Any]) -> str:
        """POST a create request once. A timeout or 5xx raises ``SubmitAmbiguous``, never a retry."""
        req = request if isinstance(request, CreateRequest) else CreateRequest.model_validate(request)
        try:
            body = self._request("POST", TASKS_PATH, json_body=req.to_body())
        except (errors.RequestTimeout, errors.ServerError, errors.BadResponse) as exc:
            # The server may have made the task before failing: posting again could pay twice.
            raise errors.SubmitAmbiguous(
                f"create request outcome unknown ({type(exc).__name__}): the task may exist",
                exc.status,
                exc.code,
                exc.request_id,
            ) from None
        except errors.ConnectionFailed as exc:
            if exc.code == "connect":  # never reached the server: safe to say nothing was made
                raise
            raise errors.SubmitAmbiguous(
                "create request outcome unknown (connection dropped after sending)",
                None,
                None,
                exc.request_id,
            ) from None
        task_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise errors.SubmitAmbiguous("create answered 2xx without a task id", 200, None, None)
        return task_id

    def delete_task(self, task_id: str) -> None:
        validate_task_id(task_id)
        self._request("DELETE", f"{TASKS_PATH}/{quote(task_id, safe='')}", task_id=task_id)

    # --- plumbing ---------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: list[tuple[str, str]] | None = None,
        json_body: dict[str, Any] | None = None,
        task_id: str | None = None,
    ) -> Any:
        url = self.base_url + path
        try:
            resp = self.session.request(method, url, params=params, json=json_body, timeout=self.timeout)
        except requests.exceptions.ConnectTimeout:
            metrics.http_response("connection")
            raise errors.ConnectionFailed(f"{method} {path}: connect timeout", None, "connect") from None
        except requests.exceptions.Timeout:
            metrics.http_response("timeout")
            raise errors.RequestTimeout(
                f"{method} {path}: read timeout after {self.timeout[1]:g} s"
            ) from None
        except requests.exceptions.ConnectionError as exc:
            metrics.http_response("connection")
            kind = "connect" if _never_sent(exc) else "dropped"
            raise errors.ConnectionFailed(
                f"{method} {path}: connection failed ({_short(exc)})", None, kind
            ) from None
        except requests.exceptions.RequestException as exc:
            raise errors.ConnectionFailed(f"{method} {path}: {type(exc).__name__}", None, None) from None
        request_id = resp.headers.get("X-Request-Id")
        metrics.http_response(str(resp.status_code))
        if resp.status_code >= 400:
            raise _status_error(resp, method, path, request_id, task_id)
        if not resp.content:
            return {}
        try:
            return resp.json()
        except ValueError:
            raise errors.BadResponse(
                f"{method} {path}: body is not JSON ({len(resp.content)} bytes)",
                resp.status_code,
                None,
                request_id,
            ) from None

    @staticmethod
    def _parse(model: Any, body: Any, task_id: str | None) -> Any:
        from pydantic import ValidationError

        try:
            return model.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise errors.BadResponse(
                f"unexpected response body{' for ' + task_id if task_id else ''}: {where}: {first['msg']}"
            ) from None


def _never_sent(exc: Exception) -> bool:
    text = repr(exc)
    return any(s in text for s in ("NewConnectionError", "Connection refused", "Name or service not known"))


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "..."


def _status_error(
    resp: requests.Response, method: str, path: str, request_id: str | None, task_id: str | None
) -> errors.SeedanceError:
    status = resp.status_code
    code: str | None = None
    message = ""
    param: str | None = None
    try:
        body = resp.json()
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            code = err.get("code") or None
            message = str(err.get("message") or "")
            param = err.get("param") or None
    except (ValueError, json.JSONDecodeError):
        message = resp.text[:200]
    text = f"{method} {path}: {message or resp.reason or 'error'}".strip()
    if status == 429:
        return errors.RateLimited(
            text, status, code, request_id, param, parse_retry_after(resp.headers.get("Retry-After"))
        )
    if status >= 500:
        return errors.ServerError(text, status, code, request_id, param)
    if status in (400, 422):
        return errors.InvalidRequest(text, status, code, request_id, param)
    if status == 401:
        return errors.AuthenticationFailed(text, status, code, request_id, param)
    if status == 403:
        return errors.PermissionDenied(text, status, code, request_id, param)
    if status == 404 and task_id is not None:
        return errors.TaskNotFound(text, None, status, code, request_id)
    if status == 408:
        return errors.RequestTimeout(text, status, code, request_id, param)
    return errors.UnexpectedStatus(text, status, code, request_id, param)


# One client per process: prefork children get their own after fork (requests Sessions are not
# fork-safe), so the cache is keyed by pid.
_clients: dict[tuple[int, str, int], ArkClient] = {}
_clients_lock = threading.Lock()


def get_client(settings: Settings | None = None) -> ArkClient:
    settings = settings or get_settings()
    key = (os.getpid(), settings.api_base_url, hash(settings.api_key_value()))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = ArkClient.from_settings(settings)
            _clients[key] = client
        return client


def reset_clients(*, close: bool = True) -> None:
    """Forget the cached clients; a forked child passes ``close=False`` (the sockets are the parent's)."""
    with _clients_lock:
        if close:
            for c in _clients.values():
                c.close()
        _clients.clear()
