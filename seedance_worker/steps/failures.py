"""What a download failure means for the chain: retry the task, or record the error and go on.

Whatever goes wrong, the download step never fails its task: a failed task would stop the chain
before ``seedance.charge_usage`` and ``seedance.notify``, and the paid job would be neither charged
nor notified. So every exception (but a Redis outage, which ``survive_redis_outage`` rides out, and
Celery's own control flow) becomes a ``Failure``:

* ``Transient`` and a full disk (``ENOSPC``, ``EFBIG``, ``EDQUOT``: kind ``storage_full``) are
  retried with backoff, then recorded;
* ``DownloadError`` is recorded with its kind; a URL that requests cannot even parse is
  ``invalid_url``;
* anything else is recorded as ``internal_error`` with the exception's type and message (query
  strings removed: they may carry a signed URL's credentials).
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from typing import Any

import requests
from urllib3.exceptions import LocationParseError

from seedance_worker.errors import DownloadError
from seedance_worker.steps.fetch import Transient

STORAGE_FULL = frozenset(
    code for code in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None)) if code is not None
)
_BAD_URL = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    LocationParseError,
)
_QUERY = re.compile(r"\?[^\s'\"<>]*")
MESSAGE_MAX = 500


@dataclass(frozen=True)
class Failure:
    kind: str
    message: str
    transient: bool = False
    not_before_s: float = 0.0

    def step_error(self) -> dict[str, Any]:
        return {"type": "DownloadError", "kind": self.kind, "message": self.message}


def scrub(text: str) -> str:
    """``text`` without query strings (a signed URL's credentials), capped in length."""
    return _QUERY.sub("", text)[:MESSAGE_MAX]


def _storage_full(exc: OSError) -> Failure:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    where = f" writing {exc.filename}" if exc.filename else ""
    return Failure(
        "storage_full", f"the download dir is full ({name}: {exc.strerror}){where}", transient=True
    )


def classify(exc: Exception) -> Failure:
    """The decision for one exception out of the download (pure: no I/O)."""
    if isinstance(exc, DownloadError):
        return Failure(exc.kind, exc.message)
    if isinstance(exc, Transient):
        return Failure(exc.kind, exc.message, transient=True, not_before_s=exc.not_before_s)
    if isinstance(exc, _BAD_URL):
        return Failure("invalid_url", f"the video URL is malformed ({type(exc).__name__})")
    if isinstance(exc, OSError) and exc.errno in STORAGE_FULL:
        return _storage_full(exc)
    return Failure("internal_error", scrub(f"{type(exc).__name__}: {exc}"))
