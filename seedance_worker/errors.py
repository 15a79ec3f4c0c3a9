"""One exception tree for the whole package.

``SeedanceError`` is the root. ``RetryableError`` means "the same call may work later" (the poll
loop backs off and tries again); ``TerminalError`` means "trying again will not help". Only
``client.py`` maps HTTP responses onto these classes.

Every error is picklable and JSON-friendly through its ``args`` (Celery rebuilds exceptions from
``type(exc)(*exc.args)``), and none of them ever holds the API key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from seedance_worker.models import Outcome

__all__ = [
    "ApiError",
    "AuthenticationFailed",
    "BadResponse",
    "ConfigError",
    "ConnectionFailed",
    "DownloadError",
    "GenerationCancelled",
    "GenerationExpired",
    "GenerationFailed",
    "InvalidRequest",
    "ListUnsupported",
    "PermissionDenied",
    "RateLimited",
    "RedirectRefused",
    "RequestTimeout",
    "RetryableError",
    "SeedanceError",
    "ServerError",
    "SubmitAmbiguous",
    "TaskNotFound",
    "TerminalError",
    "WebhookDeadline",
]


class SeedanceError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(SeedanceError):
    """A setting is unknown or has a bad value; raised at start-up, naming the setting."""


class RetryableError(SeedanceError):
    """The call failed in a way that may pass later (rate limit, 5xx, network, bad body)."""


class TerminalError(SeedanceError):
    """The call failed for good; repeating it will fail the same way."""


class ApiError(SeedanceError):
    """Mixin data for errors that came from (or while talking to) the Ark API.

    ``status`` is the HTTP status (``None`` when no response arrived), ``code`` the API's
    ``error.code``, ``request_id`` the server's ``X-Request-Id``.
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, status, code, request_id, param)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.param = param

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None:
            parts.append(f"http={self.status}")
        if self.code:
            parts.append(f"code={self.code}")
        if self.param:
            parts.append(f"param={self.param}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class RateLimited(ApiError, RetryableError):
    """HTTP 429. ``retry_after_s`` comes from the ``Retry-After`` header when the server sent one."""

    def __init__(
        self,
        message: str,
        status: int | None = 429,
        code: str | None = None,
        request_id: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, status, code, request_id, param)
        self.args = (message, status, code, request_id, param, retry_after_s)
        self.retry_after_s = retry_after_s


class ServerError(ApiError, RetryableError):
    """HTTP 5xx."""


class ConnectionFailed(ApiError, RetryableError):
    """The connection could not be made or broke before a response arrived."""


class RequestTimeout(ApiError, RetryableError):
    """The connect or read timeout ran out."""


class BadResponse(ApiError, RetryableError):
    """A 2xx whose body is not the JSON we expect (truncated, not an object, wrong types)."""


class InvalidRequest(ApiError, TerminalError):
    """HTTP 400/422 (or a request our own validation refused before sending)."""


class AuthenticationFailed(ApiError, TerminalError):
    """HTTP 401: the API key is missing or wrong."""


class PermissionDenied(ApiError, TerminalError):
    """HTTP 403: no permission, overdue account, or an operation the task's state does not allow."""


class UnexpectedStatus(ApiError, TerminalError):
    """Any other non-2xx status."""


class ListUnsupported(UnexpectedStatus):
    """HTTP 404 or 405 on the list path: the API (a gateway, a proxy) has no list call. Detected
    once, it means "read each task with its own GET", not that any task is gone."""


class RedirectRefused(UnexpectedStatus):
    """HTTP 3xx: the client follows no redirect, so the API key never goes to another host and a
    create is never sent twice (a redirected create is ``SubmitAmbiguous``)."""


class SubmitAmbiguous(ApiError, TerminalError):
    """A create request may or may not have made a remote task (timeout or 5xx after sending).

    Never retried blindly: a second POST can make a second paid video. The idempotency record keeps
    the key in the ``ambiguous`` state so an operator can look the task up (``list``) and decide.
    """


class DownloadError(TerminalError):
    """The video could not be stored: host not allowed, too large, not a video, bad length."""

    def __init__(self, message: str, kind: str = "download_failed") -> None:
        super().__init__(message, kind)
        self.message = message
        self.kind = kind

    def __str__(self) -> str:
        return self.message


class WebhookDeadline(RetryableError):
    """A webhook POST got no status line and headers within its wall-clock deadline
    (``SEEDANCE_NOTIFY_TIMEOUT_S``): its socket was shut, the attempt counts as failed."""


class GenerationFailed(TerminalError):
    """The remote task ended without a video: failed, or (subclasses) expired, cancelled, not found.

    ``.outcome`` carries the terminal Outcome. Built from ``(message, outcome_dict)`` so Celery's
    result backend can rebuild it on ``AsyncResult.get()``.
    """

    def __init__(self, message: str, outcome: dict[str, Any] | None = None) -> None:
        super().__init__(message, outcome)
        self.message = message
        self._outcome = outcome or {}

    @property
    def outcome(self) -> Outcome:
        from seedance_worker.models import Outcome

        return Outcome.model_validate(self._outcome)

    def __str__(self) -> str:
        return self.message


class GenerationExpired(GenerationFailed):
    """The remote task expired (or outlived its deadline plus grace without an answer)."""


class GenerationCancelled(GenerationFailed):
    """The remote task was cancelled."""


class TaskNotFound(GenerationFailed, ApiError):
    """The API does not know the task id (HTTP 404): deleted, purged after 7 days, or never made."""

    def __init__(
        self,
        message: str,
        outcome: dict[str, Any] | None = None,
        status: int | None = 404,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        ApiError.__init__(self, message, status, code, request_id)
        self.args = (message, outcome, status, code, request_id)
        self.message = message
        self._outcome = outcome or {}

    def __str__(self) -> str:
        return ApiError.__str__(self)
