"""The intake's callback URLs, and how a request path is authenticated.

Two forms, both under ``SEEDANCE_INTAKE_URL``:

* ``/callbacks/j/<nonce>.<mac>``, what ``submit()`` gives Ark: one URL per created task. ``nonce`` is
  32 random lowercase hex digits, bound to the task's job record once the create has returned its
  id; ``mac`` is the unpadded base64url HMAC-SHA256 of ``"seedance-callback-v1:" + nonce`` keyed
  with ``SEEDANCE_INTAKE_TOKEN``. A leaked URL opens only the job it was made for (a body naming
  another job is 404), and the token itself is never sent to Ark. The URL cannot carry an HMAC of
  the task id: Ark assigns the id in the create response, after it has taken the URL.
* ``/callbacks/<token>``, the shared path of earlier versions, for tasks created before the upgrade
  (``SEEDANCE_INTAKE_SHARED_PATH=false`` closes it once none is in flight).

Paths are never logged as they are: ``shown_path`` hides everything after ``/callbacks/``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from urllib.parse import quote

from seedance_worker import errors
from seedance_worker.intake.body import shown
from seedance_worker.settings import Settings

CALLBACK_PREFIX = "/callbacks/"
JOB_PREFIX = CALLBACK_PREFIX + "j/"
MIN_TOKEN_LEN = 16
MAC_CONTEXT = b"seedance-callback-v1:"
_JOB_PATH = re.compile(r"^(?P<nonce>[0-9a-f]{32})\.(?P<mac>[A-Za-z0-9_-]{43})$")


def token(settings: Settings) -> str:
    value = settings.intake_token.get_secret_value() if settings.intake_token else ""
    if not value:
        raise errors.ConfigError("SEEDANCE_INTAKE_TOKEN is not set: the intake needs its path token")
    if len(value) < MIN_TOKEN_LEN:
        raise errors.ConfigError(
            f"SEEDANCE_INTAKE_TOKEN is shorter than {MIN_TOKEN_LEN} characters: it is the only "
            "authentication of the callback path; use a long random value"
        )
    return value


def _base(settings: Settings) -> str:
    if not settings.intake_url:
        raise errors.ConfigError("SEEDANCE_INTAKE_URL is not set")
    return settings.intake_url


def callback_url_for(settings: Settings) -> str:
    """The shared ``callback_url`` (``/callbacks/<token>``) of earlier versions."""
    return f"{_base(settings)}{CALLBACK_PREFIX}{quote(token(settings), safe='')}"


def job_mac(settings: Settings, nonce: str) -> str:
    digest = hmac.new(token(settings).encode(), MAC_CONTEXT + nonce.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def job_callback_url(settings: Settings) -> tuple[str, str]:
    """A fresh per-task ``callback_url`` and its nonce (to bind to the job once its id is known)."""
    nonce = secrets.token_hex(16)
    return f"{_base(settings)}{JOB_PREFIX}{nonce}.{job_mac(settings, nonce)}", nonce


@dataclass(frozen=True)
class Access:
    """Who a callback path lets in: ``nonce`` for a per-task URL ('' for the shared path)."""

    nonce: str


def digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


class PathCheck:
    """Authenticates callback paths in constant time (digests of the token, the HMAC of a nonce)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._token_digest = digest(token(settings))

    def __call__(self, path: str) -> Access | None:
        rest = path[len(CALLBACK_PREFIX) :]
        if path.startswith(JOB_PREFIX):
            found = _JOB_PATH.match(path[len(JOB_PREFIX) :])
            if found and hmac.compare_digest(found["mac"], job_mac(self.settings, found["nonce"])):
                return Access(found["nonce"])
            return None
        if self.settings.intake_shared_path and hmac.compare_digest(digest(rest), self._token_digest):
            return Access("")
        return None


def shown_path(text: object, limit: int = 120) -> str:
    """``shown`` with whatever follows ``/callbacks/`` replaced (a token, or a per-task MAC)."""
    value = str(text or "")
    if CALLBACK_PREFIX in value:
        head, _, rest = value.partition(CALLBACK_PREFIX)
        tail = " " + rest.split(" ", 1)[1] if " " in rest else ""
        value = head + CALLBACK_PREFIX + "[redacted]" + tail
    return shown(value, limit)
