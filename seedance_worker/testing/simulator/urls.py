"""Signed, expiring download URLs in the shape of TOS pre-signed links: issued when a task succeeds
(or is re-read after an expired download), checked by the file endpoint.
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from seedance_worker.testing.simulator.config import FILES_PREFIX, Shared
from seedance_worker.testing.simulator.task import Task


class UrlSigner:
    """HMAC-signs file paths with ``SimConfig.url_secret``; ``own_url`` is the base when no
    ``public_url`` is configured (it changes once the server has a port)."""

    def __init__(self, shared: Shared, own_url: Callable[[], str]) -> None:
        self._shared = shared
        self._own_url = own_url

    def signature(self, path: str, params: Mapping[str, str]) -> str:
        canonical = (
            path + "?" + "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "X-Tos-Signature")
        )
        secret = self._shared.config.url_secret.encode()
        return hmac.new(secret, canonical.encode(), hashlib.sha256).hexdigest()

    def sign(self, path: str, at: float, gen: int) -> str:
        cfg = self._shared.config
        date = datetime.fromtimestamp(at, UTC)
        params = {
            "X-Tos-Algorithm": "TOS4-HMAC-SHA256",
            "X-Tos-Credential": f"AKLTSIM{gen:04d}/{date:%Y%m%d}/ap-southeast-1/tos/request",
            "X-Tos-Date": f"{date:%Y%m%dT%H%M%SZ}",
            "X-Tos-Expires": str(int(cfg.url_ttl_s)),
            "X-Tos-SignedHeaders": "host",
        }
        params["X-Tos-Signature"] = self.signature(path, params)
        base = cfg.public_url or self._own_url()
        return f"{base.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"

    def issue(self, t: Task, at: float) -> None:
        """A new generation of URLs for the task's files (the old ones stay valid until they expire)."""
        t.url_gen += 1
        t.urls["video"] = self.sign(f"{FILES_PREFIX}{t.id}.mp4", at, t.url_gen)
        if t.return_last_frame:
            t.urls["last_frame"] = self.sign(f"{FILES_PREFIX}{t.id}.png", at, t.url_gen)
        t.needs_fresh_urls = False
