"""What a download body must look like before it is committed, and how an encoded one is decoded.

* Downloads ask for ``Accept-Encoding: identity``. A server that gzips (or deflates) anyway is
  decoded while streaming (``Decoder``), never more than ``SEEDANCE_DOWNLOAD_MAX_BYTES`` of output
  however small the input (a decompression bomb is ``too_large``), so the stored file and its
  sha256 are the video's own bytes. Other encodings are refused.
* The stored bytes must start like what they claim to be (``check_signature``): an ISO-BMFF
  ``ftyp`` box at byte 4 for the video, a PNG, JPEG or WebP signature for the last frame. An error
  page served as ``video/mp4`` (XML, JSON, text) is ``not_a_video`` and is not retried: a signed
  URL names one stored object, and fetching it again returns the same bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Literal

from seedance_worker.errors import DownloadError

Kind = Literal["video", "last_frame"]

SNIFF_BYTES = 12
DECODE_STEP = 1024 * 1024  # most output one decompress call makes: memory stays bounded
IDENTITY = ("", "identity")
DECODED = ("gzip", "x-gzip", "deflate")
_IMAGES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


def content_encoding(value: str | None) -> str:
    """The single content coding of a response ("" for none); DownloadError for unsupported ones."""
    coding = (value or "").strip().lower()
    if coding in IDENTITY or coding in DECODED:
        return "" if coding in IDENTITY else coding
    raise DownloadError(f"unsupported Content-Encoding {coding[:40]!r}", "http_error")


class TooLarge(Exception):
    """The decoded body would pass the size limit."""


class Decoder:
    """Turns the wire bytes of one response into the file's bytes (gzip/deflate or as they are)."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._z = zlib.decompressobj(zlib.MAX_WBITS | 32) if coding else None

    def feed(self, data: bytes, room: int) -> Iterator[bytes]:
        """The decoded pieces of ``data``, one at a time; TooLarge once they pass ``room`` bytes."""
        if self._z is None:
            if len(data) > room:
                raise TooLarge
            yield data
            return
        made = 0
        while True:
            try:
                piece = self._z.decompress(data, DECODE_STEP)
            except zlib.error:
                raise DownloadError(f"the {self.coding} body is corrupt", "http_error") from None
            made += len(piece)
            if made > room:
                raise TooLarge
            if piece:
                yield piece
            data = self._z.unconsumed_tail
            if self._z.eof and self._z.unused_data:  # another gzip member follows
                data, self._z = self._z.unused_data, zlib.decompressobj(zlib.MAX_WBITS | 32)
            elif not data and len(piece) < DECODE_STEP:
                return

    @property
    def complete(self) -> bool:
        """Whether the encoded stream ended properly (always, for an unencoded body)."""
        return self._z is None or self._z.eof


def check_signature(head: bytes, kind: Kind, where: str) -> None:
    """DownloadError(not_a_video) unless ``head`` (the file's first bytes) starts like ``kind``."""
    if kind == "video":
        if len(head) >= 8 and head[4:8] == b"ftyp":
            return
        what = "an MP4 video (no ISO-BMFF ftyp box at byte 4)"
    else:
        if head.startswith(_IMAGES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
            return
        what = "a PNG, JPEG or WebP image"
    raise DownloadError(f"{where} is not {what}; it starts with {head[:SNIFF_BYTES]!r}", "not_a_video")
