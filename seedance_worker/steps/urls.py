"""Which download URLs may be fetched, judged by the parser that connects.

``urllib.parse`` and urllib3 disagree on some URLs: ``http://127.0.0.1:8000\\@x.volces.com/v.mp4`` is
host ``x.volces.com`` to the former and ``127.0.0.1`` to the latter (it ends the authority at the
backslash), and requests connects with urllib3. So a URL is judged the way requests will fetch it
(``PreparedRequest.prepare_url``, then urllib3's ``parse_url``), and anything both parsers could read
differently is refused outright:

* whitespace or a control character anywhere, or a ``\\``, ``@`` or non-ASCII character in the
  authority: ``invalid_url`` (a signed storage URL never has them); so is a URL that does not parse
  (a port out of range, a bad IPv6 literal);
* a scheme other than http(s), or a host outside ``SEEDANCE_DOWNLOAD_ALLOWED_HOSTS``:
  ``host_not_allowed``;
* a host that resolves to a loopback, private, link-local or otherwise non-global address:
  ``host_not_allowed``, unless ``SEEDANCE_DOWNLOAD_ALLOW_PRIVATE_HOSTS=true``. The name is resolved
  before the request, and the address a connection actually reaches is checked again when it is made
  (``download_session``), so a name that re-resolves to ``127.0.0.1`` in between (DNS rebinding)
  is refused too. A connection to a proxy (``HTTPS_PROXY``) is the operator's choice and is not
  checked; the target name still is.

Every redirect hop goes through ``judge`` again (``fetch._get``).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from fnmatch import fnmatchcase
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import LocationParseError
from urllib3.util import Url, parse_url

from seedance_worker.errors import DownloadError
from seedance_worker.settings import Settings

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_HOSTNAME = re.compile(r"^[a-z0-9.\-]+$")
_IPV6_LITERAL = re.compile(r"^\[[0-9a-f:.]+\]$")
_SHOWN_MAX = 200
_OPT_IN = "SEEDANCE_DOWNLOAD_ALLOW_PRIVATE_HOSTS=true"


def _unsafe_char(c: str) -> bool:
    return c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")


def shown(url: str) -> str:
    """``scheme://host[:port]/path`` as requests would fetch it, for messages; never raises.

    Signed URLs carry their credentials in the query string, which is never shown. A URL that does
    not parse is shown up to its query, its unsafe characters escaped.
    """
    try:
        parts = _connect_view(url)
    except (DownloadError, LocationParseError, requests.exceptions.RequestException, ValueError):
        raw = re.split(r"[?#]", url, maxsplit=1)[0]
        text = "".join(c.encode("unicode_escape").decode() if _unsafe_char(c) else c for c in raw)
        return text[:_SHOWN_MAX]
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{parts.host}{port}{parts.path or ''}"[:_SHOWN_MAX]


def _authority(url: str) -> str:
    """The widest reading of the authority: up to the first ``/``, ``?`` or ``#`` (urllib.parse)."""
    rest = url.split("//", 1)[1] if "//" in url else ""
    return re.split(r"[/?#]", rest, maxsplit=1)[0]


def _connect_view(url: str) -> Url:
    """The URL as requests sends it (IDNA host, quoted path), parsed by urllib3 as it connects."""
    prepared = requests.models.PreparedRequest()
    prepared.prepare_url(url, None)
    return parse_url(prepared.url or "")


def _invalid(url: str, why: str) -> DownloadError:
    return DownloadError(f"refusing to download from {shown(url)}: {why}", "invalid_url")


def _parse(url: str) -> Url:
    """The parsed URL; DownloadError(invalid_url) for anything the parsers could read differently."""
    bad = next((c for c in url if _unsafe_char(c)), None)
    if bad is not None:
        raise _invalid(url, f"the URL contains whitespace or a control character ({bad!r})")
    authority = _authority(url)
    odd = next((c for c in authority if c in "\\@" or not c.isascii()), None)
    if odd is not None:
        raise _invalid(url, f"the URL's authority contains {odd!r}, which parsers read differently")
    try:
        parts = _connect_view(url)
    except (LocationParseError, requests.exceptions.RequestException, ValueError) as exc:
        raise _invalid(url, f"the URL does not parse ({type(exc).__name__})") from None
    if parts.port == 0:
        raise _invalid(url, "port 0")
    return parts


def _host_of(parts: Url) -> str | None:
    host = (parts.host or "").lower().rstrip(".")
    if _IPV6_LITERAL.match(host):
        return host
    return host if host and _HOSTNAME.match(host) else None


def _matches(host: str, patterns: list[str]) -> bool:
    return any(p.strip() == "*" or fnmatchcase(host, p.strip().lower().rstrip(".")) for p in patterns)


def host_allowed(url: str, patterns: list[str]) -> bool:
    """Whether ``url`` is http(s) and the host requests would connect to matches a pattern."""
    try:
        parts = _parse(url)
    except DownloadError:
        return False
    host = _host_of(parts)
    return parts.scheme in ("http", "https") and host is not None and _matches(host, patterns)


def _non_global(address: str) -> str | None:
    """What kind of non-public address ``address`` is (``"loopback"``...), or None if it is global."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for label, flag in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("private", ip.is_private),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return label
    return None if ip.is_global else "non-global"


def refuse_private(host: str, address: str, url: str | None = None) -> None:
    """DownloadError(host_not_allowed) when ``address`` (what ``host`` resolved to) is not public."""
    label = _non_global(address)
    if label is not None:
        where = shown(url) if url else host
        what = f"resolves to {address}, a {label} address"
        if host.strip("[]") == address:
            what = f"is a {label} address"
        raise DownloadError(
            f"refusing to download from {where}: {host} {what} (set {_OPT_IN} to allow it)",
            "host_not_allowed",
        )


def _resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to; a lookup failure is a connection error (retried)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise requests.exceptions.ConnectionError(f"cannot resolve {host}: {exc}") from None
    return [str(info[4][0]) for info in infos]


def judge(url: str, settings: Settings) -> None:
    """Refuse ``url`` unless requests would fetch it from an allowed (and, by default, public) host."""
    parts = _parse(url)
    host = _host_of(parts)
    if parts.scheme not in ("http", "https"):
        raise DownloadError(f"refusing to download from {shown(url)}: only http(s) URLs", "host_not_allowed")
    if host is None or not _matches(host, settings.download_allowed_hosts):
        raise DownloadError(
            f"refusing to download from {shown(url)}: host not in SEEDANCE_DOWNLOAD_ALLOWED_HOSTS",
            "host_not_allowed",
        )
    if settings.download_allow_private_hosts:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for address in _resolve(host, port):
        refuse_private(host, address, url)


# --- the connection-time check ---------------------------------------------------------------------


def _checked(conn: HTTPConnection, sock: socket.socket) -> socket.socket:
    if conn.proxy is not None:
        return sock  # connected to the operator's proxy; the target name was judged before
    try:
        refuse_private(conn.host, str(sock.getpeername()[0]))
    except DownloadError:
        sock.close()
        raise
    return sock


class _PublicHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _checked(self, super()._new_conn())


class _PublicHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _checked(self, super()._new_conn())


class _PublicHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection


class _PublicOnlyAdapter(HTTPAdapter):
    """Connections that refuse (DownloadError, not retried) a peer with a non-public address."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _PublicHTTPPool, "https": _PublicHTTPSPool}


def download_session(settings: Settings) -> requests.Session:
    """The HTTP session of downloads: no API key, and (by default) public peers only."""
    session = requests.Session()
    if not settings.download_allow_private_hosts:
        adapter = _PublicOnlyAdapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return session
