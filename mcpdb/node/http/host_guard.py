"""Which requests a browser could have been tricked into sending, refused before anything else runs.

A node on loopback without a token serves everyone as root, so a web page on
any site must never reach it:

- **DNS rebinding**: a page on ``evil.example`` re-resolves its own name to
  127.0.0.1 and then talks to the node "same-origin"; its requests carry
  ``Host: evil.example``. Every request's Host must name this node: a
  loopback name, the address it listens on (when that is a wildcard, any IP
  literal, since an IP cannot be rebound: a page whose origin is an IP was
  served by whoever answers there), the host of ``--advertise-url``, or a
  name allowed with ``--allowed-host`` (a reverse proxy's). Otherwise 421.
- **Cross-site requests**: a page on another origin may send "simple"
  requests (form posts, ``fetch`` with a text body) without a CORS
  preflight. A request carrying ``Origin`` must be same-origin (its host and
  port are the request's Host) or come from an allowed host; otherwise 403.
  The dashboard at /ui is same-origin, so it keeps working.
- A body sent with POST, PUT or PATCH must be declared
  ``application/json`` (415 otherwise): a cross-site form or a ``text/plain``
  fetch can never carry a write, even from a browser that sends no Origin.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from mcpdb.node.config import split_host_port

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})
_DEFAULT_PORTS = {"http": "80", "https": "443"}


@dataclass(frozen=True)
class HostRefusal:
    status: int
    error: str
    message: str


def _hostname(authority: str) -> str:
    """The host of ``host[:port]`` or ``[v6]:port``, lower-cased, without brackets."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    if authority.count(":") > 1:  # a bare IPv6 address
        return authority
    return authority.partition(":")[0]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _origin_authority(origin: str) -> tuple[str, str] | None:
    """``(host:port, default port)`` of an Origin header (its port spelled out), or None if it names no
    HTTP origin (e.g. ``null`` from a sandboxed frame or a file)."""
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    try:
        port = parts.port
    except ValueError:
        return None
    default = _DEFAULT_PORTS[parts.scheme]
    return f"{host}:{port or default}", default


def _with_port(authority: str, default: str) -> str:
    """A Host header as ``host:port``, the scheme's default port filled in."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority if "]:" in authority else f"{authority}:{default}"
    if authority.count(":") > 1:
        return f"[{authority}]:{default}"
    return authority if ":" in authority else f"{authority}:{default}"


class HostGuard:
    """The Host, Origin and Content-Type rules of one node (see the module docstring)."""

    def __init__(self, http_addr: str, advertise_url: str | None, allowed_hosts: Iterable[str]) -> None:
        bound, _ = split_host_port(http_addr, "--http-addr")
        self._any_ip = bound.lower() in _WILDCARDS
        self._configured = {name.strip().lower().strip("[]") for name in allowed_hosts if name.strip()}
        if advertise_url:
            advertised = urlsplit(advertise_url).hostname
            if advertised:
                self._configured.add(advertised.lower())
        self._names = LOOPBACK_NAMES | self._configured | ({bound.lower()} if not self._any_ip else set())

    def allows_host(self, host: str) -> bool:
        name = _hostname(host)
        if name in self._names:
            return True
        if _is_ip(name):
            return self._any_ip or ipaddress.ip_address(name).is_loopback
        return False

    def refusal(self, method: bytes, headers: Mapping[bytes, bytes]) -> HostRefusal | None:
        """Why this request must be refused, or None."""
        host = headers.get(b"host", b"").decode("latin-1")
        if not host or not self.allows_host(host):
            return HostRefusal(421, "misdirected_request",
                               f"Host {host!r} does not name this node; a reverse proxy's name must be allowed "
                               "with --allowed-host (requests from a page that rebound its DNS name are refused)")
        origin = headers.get(b"origin")
        if origin is not None and not self._allows_origin(origin.decode("latin-1"), host):
            return HostRefusal(403, "cross_origin_refused",
                               f"requests from a page on {origin.decode('latin-1')!r} are refused: only this "
                               "node's own pages (same origin) or hosts allowed with --allowed-host may send them")
        if method in _BODY_METHODS and _has_body(headers) and not _is_json(headers.get(b"content-type")):
            return HostRefusal(415, "unsupported_media_type",
                               "a request body must be sent as Content-Type: application/json")
        return None

    def _allows_origin(self, origin: str, host: str) -> bool:
        parsed = _origin_authority(origin)
        if parsed is None:
            return False
        authority, default_port = parsed
        return authority == _with_port(host, default_port) or _hostname(authority) in self._configured


def _has_body(headers: Mapping[bytes, bytes]) -> bool:
    length = headers.get(b"content-length")
    if length is not None:
        return length.strip() not in (b"", b"0")
    return b"transfer-encoding" in headers


def _is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(b";")[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))
