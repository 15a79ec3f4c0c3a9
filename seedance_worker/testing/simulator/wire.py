"""What goes back on the wire: ``ApiError`` (raised by any handler), ``Reply`` (what the server
writes), request ids, compact JSON, and the two error envelopes (Ark JSON, TOS XML).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

ERROR_TYPES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "RequestEntityTooLarge",
    429: "TooManyRequests",
    500: "InternalServerError",
}
RPM_MESSAGE = (
    "The Requests Per Minute (RPM) limit of the associated endpoint for your account has been exceeded."
)


class ApiError(Exception):
    """An Ark error answer; ``fault`` names the injected fault behind it, if any."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str = "",
        headers: Sequence[tuple[str, str]] = (),
        fault: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = list(headers)
        self.fault = fault


@dataclass
class Reply:
    """One response, before the server writes it."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    fault: str | None = None
    task_id: str | None = None
    drop_after: int | None = None
    close: bool = False
    content_length: int | None = None  # for HEAD responses


def new_request_id() -> str:
    # "02" + 13-digit ms epoch + hex, 53 chars, like the live service.
    return f"02{int(time.time() * 1000):013d}{secrets.token_hex(19)}"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def error_reply(
    status: int,
    code: str,
    message: str,
    param: str,
    rid: str,
    headers: Sequence[tuple[str, str]] = (),
    fault: str | None = None,
) -> Reply:
    err = {
        "code": code,
        "message": f"{message} Request id: {rid}",
        "param": param,
        "type": ERROR_TYPES.get(status, "BadRequest"),
    }
    return Reply(status, dumps({"error": err}), headers=list(headers), fault=fault)


def rate_limited(retry_after_s: int, fault: str) -> ApiError:
    return ApiError(
        429,
        "RateLimitExceeded.EndpointRPMExceeded",
        RPM_MESSAGE,
        headers=[("Retry-After", str(int(retry_after_s)))],
        fault=fault,
    )


def tos_error(code: str, message: str, rid: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>{rid}</RequestId>"
        f"<HostId>tos-ap-southeast-1.simulator</HostId><EC>0003-00000001</EC></Error>"
    ).encode()
