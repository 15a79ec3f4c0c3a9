"""Reading one API answer's body: a byte cap, gzip/deflate decoded under the same cap, and the
secrets the server was given (the API key, the intake token in a callback URL) scrubbed out
before anything parses, stores or prints it.

The cap counts decoded bytes and decoding never produces more than the room left under it
(zlib's ``max_length``), so a small gzip bomb costs at most the cap in memory whatever urllib3
version is installed. Only the codings the client asks for (``ACCEPT_ENCODING``) are accepted.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from urllib.parse import quote

import requests

ACCEPT_ENCODING = "gzip, deflate"
CHUNK_BYTES = 64 * 1024
REDACTED = b"[redacted]"
# Shorter values could match inside a signed video URL and break it; real keys and tokens are long.
MIN_SCRUB_CHARS = 8


class BodyRefused(Exception):
    """The body broke a rule (over the cap, a coding not asked for, corrupt compression)."""


class _Inflater:
    """gzip (one member after another) or deflate (zlib-wrapped or raw), never past ``room``."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self.raw_fallback = coding == "deflate"  # some servers send deflate without the zlib header
        self.wbits = zlib.MAX_WBITS if coding == "deflate" else 16 + zlib.MAX_WBITS
        self.started = False
        self.members = 0
        self.d = zlib.decompressobj(self.wbits)

    def feed(self, data: bytes, room: int) -> bytes:
        """Decoded bytes of ``data``: at most ``room + 1`` (one more tells the caller it is over)."""
        out = bytearray()
        while data and len(out) <= room:
            try:
                out += self.d.decompress(data, room + 1 - len(out))
            except zlib.error as exc:
                if self.raw_fallback and not self.started:
                    self.raw_fallback, self.wbits = False, -zlib.MAX_WBITS
                    self.d = zlib.decompressobj(self.wbits)
                    continue
                if self.members:
                    return bytes(out)  # bytes after a complete gzip member are ignored, as urllib3 does
                raise BodyRefused(f"corrupt {self.coding} body ({exc})") from None
            self.started = True
            if self.d.eof:
                self.members += 1
                data = self.d.unused_data
                self.d = zlib.decompressobj(self.wbits)
            else:
                data = self.d.unconsumed_tail
        return bytes(out)


def _inflater(header: str) -> _Inflater | None:
    codings = [c.strip().lower() for c in header.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) > 1:
        raise BodyRefused(f"stacked Content-Encoding {', '.join(codings)} refused")
    if codings[0] not in ("gzip", "x-gzip", "deflate"):
        raise BodyRefused(f"Content-Encoding {codings[0][:40]!r} refused (asked for {ACCEPT_ENCODING})")
    return _Inflater(codings[0])


def _too_large(cap_bytes: int) -> BodyRefused:
    return BodyRefused(f"body over SEEDANCE_API_MAX_BODY_BYTES={cap_bytes}")


def read_body(resp: requests.Response, cap_bytes: int) -> bytes:
    """The decoded body of a ``stream=True`` response; ``BodyRefused`` past ``cap_bytes``.

    Transport failures while reading (urllib3's ``ReadTimeoutError``, ``ProtocolError``) propagate.
    """
    inflater = _inflater(resp.headers.get("Content-Encoding", ""))
    declared = resp.headers.get("Content-Length", "")
    if inflater is None and declared.isdigit() and int(declared) > cap_bytes:
        raise _too_large(cap_bytes)  # refused before a byte of it is read
    out = bytearray()
    for chunk in resp.raw.stream(CHUNK_BYTES, decode_content=False):
        out += inflater.feed(chunk, cap_bytes - len(out)) if inflater is not None else chunk
        if len(out) > cap_bytes:
            raise _too_large(cap_bytes)
    return bytes(out)


def secret_forms(raws: Iterable[str | None]) -> list[bytes]:
    """The ways a secret can appear in a JSON body or a URL: raw, URL-quoted, JSON-escaped."""
    forms: set[str] = set()
    for raw in raws:
        if raw and len(raw) >= MIN_SCRUB_CHARS:
            forms.update({raw, quote(raw, safe=""), json.dumps(raw)[1:-1]})
    # Longest first: a form that contains another is replaced whole.
    return sorted((f.encode() for f in forms), key=len, reverse=True)


def scrub(body: bytes, forms: Iterable[bytes]) -> bytes:
    for form in forms:
        if form in body:
            body = body.replace(form, REDACTED)
    return body


def scrub_text(text: str, forms: Iterable[bytes]) -> str:
    return scrub(text.encode("utf-8", "surrogateescape"), forms).decode("utf-8", "replace")
