"""A callback body, read without trusting it: size, nesting, id, status and ``updated_at`` checked
before anything is done with it; and ``shown``, how a value from a request may reach a log line."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from seedance_worker import errors
from seedance_worker.client import validate_task_id

MAX_BODY_BYTES = 64 * 1024  # a GET task body is a few KB
MAX_JSON_DEPTH = 32  # a task body nests 3 deep
MAX_UPDATED_AT = 2**41  # Unix seconds (or milliseconds) for ages to come; more is no time
TASK_STATUSES = frozenset({"queued", "running", "succeeded", "failed", "expired", "cancelled"})

# Strings (possessive, so an unterminated one costs one scan), brackets, and a quote that opens none.
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*+"|[\[\]{}]|"', re.DOTALL)


@dataclass(frozen=True)
class Callback:
    """What the intake takes from a callback body (the rest is not trusted, and not kept)."""

    task_id: str
    status: str  # one of TASK_STATUSES, or '' when the body had none
    updated_at: int | None

    @property
    def seen(self) -> str:
        """What identifies this callback among the job's (Ark sends each status change once)."""
        return f"{self.status}:{'' if self.updated_at is None else self.updated_at}"


def json_depth_within(raw: bytes, limit: int) -> bool:
    """Whether ``raw`` nests arrays and objects at most ``limit`` deep, found without parsing it
    (the parser would recurse once per level). False also for an unterminated string."""
    depth = 0
    for token in _JSON_TOKENS.finditer(raw):
        t = token.group()
        if t in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return False
        elif t in (b"]", b"}"):
            depth -= 1
        elif t == b'"':  # a quote that opens no terminated string: no later one can close either
            return False
    return True


def parse_callback(raw: bytes) -> Callback | str:
    """The callback in a body, or why it is refused (400): bad JSON, too deep, no valid id, or a
    status or ``updated_at`` that no task has."""
    if not json_depth_within(raw, MAX_JSON_DEPTH):
        return f"body is not JSON nested at most {MAX_JSON_DEPTH} deep"
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return "body is not JSON"
    if not isinstance(body, dict):
        return "expected a task JSON object"
    task_id = body.get("id")
    try:
        validate_task_id(task_id if isinstance(task_id, str) else "")
    except errors.SeedanceError:
        return "expected a task JSON with an id"
    status = body.get("status")
    if status is None or status == "":
        status = ""
    elif not isinstance(status, str) or status not in TASK_STATUSES:
        return "status is not a task status"
    updated_at = body.get("updated_at")
    if updated_at is not None and (
        isinstance(updated_at, bool)
        or not isinstance(updated_at, int)
        or not 0 <= updated_at <= MAX_UPDATED_AT
    ):
        return "updated_at is not a Unix time in seconds"
    return Callback(str(task_id), status, updated_at)


def shown(value: object, limit: int = 80) -> str:
    """A value from a request as it may appear in a log line: control characters and anything
    outside printable ASCII escaped (a newline cannot forge a line), at most ``limit`` characters."""
    text = str(value)
    cut = text[:limit]
    escaped = cut.encode("unicode_escape").decode("ascii")
    return escaped + ("..." if len(text) > limit else "")
