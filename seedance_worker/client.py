"""The one HTTP client for the Ark task API (requests, one pooled Session per process).

Every non-2xx response and every transport failure becomes a class of ``errors.py``; this is the
only module that knows HTTP status codes. The API key lives in the Session's headers only: it is
never put into an exception, a log line or a repr, and a server that echoes it (or the intake
token of a callback URL) back has it scrubbed from the body before anything reads it.

A body is read with a cap (``SEEDANCE_API_MAX_BODY_BYTES``, decoded bytes; see client_body.py).
No redirect is followed: the key would go wherever ``Location`` says and a 307 would re-POST a
create, so a 3xx is ``RedirectRefused`` (``SubmitAmbiguous`` for a create).
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
from urllib.parse import quote, urljoin

import requests
import urllib3
from requests.adapters import HTTPAdapter

from seedance_worker import errors, metrics
from seedance_worker.client_body import (
    ACCEPT_ENCODING,
    BodyRefused,
    read_body,
    scrub,
    scrub_text,
    secret_forms,
)
from seedance_worker.logs import redact
from seedance_worker.models import CreateRequest, TaskList, TaskSnapshot
from seedance_worker.settings import Settings, get_settings
from seedance_worker.settings_parts import masked_url
from seedance_worker.version import __version__

log = logging.getLogger(__name__)

USER_AGENT = f"seedance-worker/{__version__} (+python-requests/{requests.__version__})"
TASKS_PATH = "/contents/generations/tasks"
_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
ERROR_MESSAGE_MAX_CHARS = 300  # of a server's error message, in exceptions and `last_error`
LIST_MAX_PAGE_SIZE = 500  # the API's bound on page_size


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
    """Thin, typed wrapper over the four task endpoints (list twice: by ids, and one page)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        secrets: Iterable[str | None] = (),
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.max_body_bytes = max_body_bytes
        self._secret_forms = secret_forms([api_key, *secrets])
        self.session = session or requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(
            {
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json",
                "Accept-Encoding": ACCEPT_ENCODING,
                "User-Agent": USER_AGENT,
            }
        )

    def __repr__(self) -> str:
        return f"ArkClient(base_url={masked_url(self.base_url)!r})"

    @classmethod
    def from_settings(cls, settings: Settings) -> ArkClient:
        return cls(
            settings.api_base_url,
            settings.api_key_value(),
            connect_timeout_s=settings.http_connect_timeout_s,
            read_timeout_s=settings.http_read_timeout_s,
            max_body_bytes=settings.api_max_body_bytes,
            # The intake token travels in the callback URL of every create: the API may echo it.
            secrets=[settings.intake_token.get_secret_value() if settings.intake_token else None],
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
        task_ids: Iterable[str],
        *,
        service_tier: str | None = None,
        model: str | None = None,
        page_size: int = 100,
    ) -> dict[str, TaskSnapshot]:
        """Read many tasks with one list call: the snapshot of each asked-for id the API returned.

        An id missing from the answer (not visible under this tier or model, older than 7 days,
        or a gateway that drops it) is simply absent: read it with ``get_task``. Items the answer
        carries for ids that were not asked for (a gateway ignoring ``filter.task_ids``) are
        dropped. A 404 or 405 on the list path is ``ListUnsupported``: this API has no list.
        """
        ids = list(dict.fromkeys(validate_task_id(t) for t in task_ids))
        if not 1 <= page_size <= LIST_MAX_PAGE_SIZE:
            raise errors.InvalidRequest(f"page_size {page_size} outside [1, {LIST_MAX_PAGE_SIZE}]")
        if len(ids) > page_size:
            # Every asked-for id must fit on the one page this call reads.
            raise errors.InvalidRequest(f"{len(ids)} ids do not fit one list page of {page_size}")
        if not ids:
            return {}
        listing = self.list_page(task_ids=ids, model=model, service_tier=service_tier, page_size=page_size)
        wanted = set(ids)
        found: dict[str, TaskSnapshot] = {}
        for snap in listing.items:
            if snap.id in wanted:
                found.setdefault(snap.id, snap)
        return found

    def list_page(
        self,
        *,
        task_ids: Iterable[str] | None = None,
        status: str | None = None,
        model: str | None = None,
        service_tier: str | None = None,
        page_num: int = 1,
        page_size: int = 10,
    ) -> TaskList:
        """One page of the list endpoint with any of its filters (``list_tasks`` reads by ids)."""
        params: list[tuple[str, str]] = [("page_num", str(page_num)), ("page_size", str(page_size))]
        for tid in task_ids or ():
            params.append(("filter.task_ids", validate_task_id(tid)))
        if status:
            params.append(("filter.status", status))
        if model:
            params.append(("filter.model", model))
        if service_tier:
            params.append(("filter.service_tier", service_tier))
        body = self._request("GET", TASKS_PATH, params=params, list_call=True)
        listing: TaskList = self._parse(TaskList, body, None)
        return listing

    def create_task(self, request: CreateRequest | Mapping[str, Any]) -> str:
        """POST a create request once. A timeout, 5xx or redirect is ``SubmitAmbiguous``, never a retry."""
        req = request if isinstance(request, CreateRequest) else CreateRequest.model_validate(request)
        try:
            body = self._request("POST", TASKS_PATH, json_body=req.to_body())
        except (errors.RequestTimeout, errors.ServerError, errors.BadResponse, errors.RedirectRefused) as exc:
            # The server may have made the task before failing (or before redirecting: 303 is
            # "created, look there"): posting again could pay twice.
            what = type(exc).__name__
            if isinstance(exc, errors.RedirectRefused):
                what += f": {exc.message}"
            raise errors.SubmitAmbiguous(
                f"create request outcome unknown ({what}): the task may exist",
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
        list_call: bool = False,
    ) -> Any:
        resp = self._send(method, path, params, json_body)
        try:
            metrics.http_response(str(resp.status_code))
            body, refused = self._read(resp, method, path)
        finally:
            resp.close()  # a refused body is not drained: the connection is dropped, not reused
        request_id = resp.headers.get("X-Request-Id")
        status = resp.status_code
        if status >= 400:
            if list_call and status in (404, 405):
                raise _list_unsupported(resp, body, path, request_id, self._secret_forms)
            raise _status_error(resp, body, method, path, request_id, task_id, self._secret_forms)
        if 300 <= status < 400:
            raise _redirect_error(resp, method, path, request_id, self._secret_forms)
        if refused is not None:
            raise errors.BadResponse(f"{method} {path}: {refused}", status, None, request_id)
        if not body:
            return {}
        try:
            return json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
            raise errors.BadResponse(
                f"{method} {path}: body is not JSON ({len(body)} bytes)", status, None, request_id
            ) from None

    def _send(
        self, method: str, path: str, params: list[tuple[str, str]] | None, json_body: dict[str, Any] | None
    ) -> requests.Response:
        """The response with its headers read (the body is read by ``_read``)."""
        url = self.base_url + path
        try:
            return self.session.request(
                method, url, params=params, json=json_body, timeout=self.timeout,
                stream=True, allow_redirects=False,
            )  # fmt: skip
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

    def _read(self, resp: requests.Response, method: str, path: str) -> tuple[bytes, str | None]:
        """The body, scrubbed of secrets; or ``b""`` and why it was refused. A transport failure
        while reading raises like one before the answer (a create's is then ambiguous)."""
        try:
            return scrub(read_body(resp, self.max_body_bytes), self._secret_forms), None
        except BodyRefused as exc:
            return b"", str(exc)
        except urllib3.exceptions.ReadTimeoutError:
            raise errors.RequestTimeout(
                f"{method} {path}: read timeout after {self.timeout[1]:g} s (reading the body)"
            ) from None
        except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as exc:
            raise errors.ConnectionFailed(
                f"{method} {path}: connection broke while reading the body ({_short(exc)})", None, "dropped"
            ) from None

    @staticmethod
    def _parse(model: Any, body: Any, task_id: str | None) -> Any:
        from pydantic import ValidationError

        subject = f"unexpected response body{' for ' + task_id if task_id else ''}"
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise errors.BadResponse(f"{subject}: {where}: {first['msg']}"[:500]) from None
        except (ArithmeticError, ValueError, TypeError, RecursionError) as exc:
            # Whatever a body makes the parser raise is a bad body to back off on, not a crash.
            raise errors.BadResponse(f"{subject}: {type(exc).__name__}") from None


def _never_sent(exc: Exception) -> bool:
    text = repr(exc)
    return any(s in text for s in ("NewConnectionError", "Connection refused", "Name or service not known"))


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "..."


def _error_fields(body: bytes) -> tuple[str | None, str, str | None]:
    """``error.code``, ``error.message`` and ``error.param`` of an error body, each bounded."""
    try:
        parsed = json.loads(body) if body else None
    except (ValueError, RecursionError):
        return None, body[:200].decode("utf-8", "replace"), None
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(err, dict):
        return None, "", None
    code = str(err.get("code"))[:128] if err.get("code") else None
    param = str(err.get("param"))[:128] if err.get("param") else None
    message = str(err.get("message") or "")
    if len(message) > ERROR_MESSAGE_MAX_CHARS:
        message = message[:ERROR_MESSAGE_MAX_CHARS] + "..."
    return code, message, param


def _status_error(
    resp: requests.Response,
    body: bytes,
    method: str,
    path: str,
    request_id: str | None,
    task_id: str | None,
    forms: list[bytes],
) -> errors.SeedanceError:
    status = resp.status_code
    code, message, param = _error_fields(body)
    reason = scrub_text(str(resp.reason or "")[:100], forms)
    text = f"{method} {path}: {message or reason or 'error'}".strip()
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


def _list_unsupported(
    resp: requests.Response, body: bytes, path: str, request_id: str | None, forms: list[bytes]
) -> errors.ListUnsupported:
    code, message, _ = _error_fields(body)
    reason = scrub_text(str(resp.reason or "")[:100], forms)
    return errors.ListUnsupported(
        f"GET {path} answered {resp.status_code} ({message or reason or 'no list endpoint'}): "
        "this API has no list call; read tasks one by one",
        resp.status_code,
        code,
        request_id,
    )


def _redirect_error(
    resp: requests.Response, method: str, path: str, request_id: str | None, forms: list[bytes]
) -> errors.RedirectRefused:
    location = resp.headers.get("Location") or ""
    try:
        # Without the query string: a signed or token-carrying URL keeps its credentials there.
        where = scrub_text(redact(urljoin(resp.url, location)), forms) if location else "nowhere"
    except ValueError:
        where = "an unparsable Location"
    return errors.RedirectRefused(
        f"{method} {path}: answered {resp.status_code} redirecting to {where}; redirects are not "
        "followed (check SEEDANCE_API_BASE_URL)",
        resp.status_code,
        None,
        request_id,
    )


# One client per process and account: prefork children get their own after fork (requests Sessions
# are not fork-safe), so the cache is keyed by pid.
_clients: dict[tuple[int, str | None, str, int, int], ArkClient] = {}
_clients_lock = threading.Lock()


def get_client(settings: Settings | None = None, account: str | None = None) -> ArkClient:
    """The client of ``account`` (a name of SEEDANCE_ACCOUNTS; None: the account ``settings`` are
    for, the default one unless they came from ``Settings.for_account``). An unknown name is
    ``InvalidRequest`` naming it."""
    settings = settings or get_settings()
    if account is not None:
        settings = settings.for_account(account)
    key = (
        os.getpid(),
        settings.account,
        settings.api_base_url,
        hash(settings.api_key_value()),
        settings.api_max_body_bytes,
    )
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
