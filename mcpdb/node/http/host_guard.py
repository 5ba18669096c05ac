"""Which requests a browser could have been tricked into sending, refused before anything else runs.

A node on loopback without a token serves everyone as root, so a web page on
any site must never reach it:

- **One value each**: ``Host``, ``Origin``, ``Content-Type``,
  ``Content-Length`` and ``Authorization`` may appear once (400 otherwise):
  this gate and the frameworks behind it must read the same value.
- **DNS rebinding**: a page on ``evil.example`` re-resolves its own name to
  127.0.0.1 and then talks to the node "same-origin"; its requests carry
  ``Host: evil.example``. Every request's Host must be a well-formed
  ``host[:port]`` naming this node: a loopback name, the address it listens
  on (when that is a wildcard, any IP literal, since an IP cannot be rebound:
  a page whose origin is an IP was served by whoever answers there), the host
  of ``--advertise-url``, or a name allowed with ``--allowed-host`` (a
  reverse proxy's). Otherwise 421. (An absolute-form request target's
  authority stands in for Host: mcpdb.node.http.protocol.)
- **Cross-site requests**: a page on another origin may send "simple"
  requests (form posts, ``fetch`` with a text body) without a CORS
  preflight. A request carrying ``Origin`` must come from exactly (scheme,
  host and port) the request's own origin (its Host, on the scheme's default
  port when Host has none), the origin of ``--advertise-url``, or an origin
  given with ``--allowed-origin``; otherwise 403. The dashboard at /ui is
  same-origin, so it keeps working.
- **Writes a form could send**: a body sent with POST, PUT, PATCH or DELETE
  must be declared ``application/json`` (415 otherwise), and a POST without a
  body (``/v1/node/drain``) must carry ``Content-Type: application/json`` or
  ``Authorization: Bearer``: a cross-site form or a ``no-cors`` fetch can
  send neither, even from a browser that sends no Origin. (PUT, PATCH and
  DELETE are never "simple": a browser asks first, and the node grants no
  CORS preflight.)
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from mcpdb.node.config import split_host_port

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# The methods that may change state: their bodies are bounded by the gate and must be JSON.
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SINGLE_HEADERS = frozenset({b"host", b"origin", b"content-type", b"content-length", b"authorization"})
_READ_HEADERS = _SINGLE_HEADERS | {b"transfer-encoding"}
_NAME_RE = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_PORT_RE = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class HostRefusal:
    status: int
    error: str
    message: str


def parse_authority(authority: str) -> tuple[str, int | None] | None:
    """``(host, port)`` of a strict ``host[:port]`` (host lower-cased, an IPv6 literal bracketed in the text
    and bare in the result), or None for anything else: text after ``]``, a bare IPv6 address, userinfo,
    a path, an empty or out-of-range port."""
    text = authority.lower()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or "%" in host or not _is_ip(host) or ":" not in host:
            return None
    else:
        host = text.partition(":")[0]
        rest = text[len(host) :]
        if not _NAME_RE.fullmatch(host):
            return None
    if not rest:
        return host, None
    port_text = rest.removeprefix(":")
    if port_text == rest or not _PORT_RE.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def parse_origin(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of a serialized HTTP(S) origin (``scheme://host[:port]``, the port filled in
    from the scheme), or None (``null`` from a sandboxed frame or a file, a path, another scheme)."""
    scheme, separator, authority = origin.partition("://")
    scheme = scheme.lower()
    parsed = parse_authority(authority) if separator and scheme in _DEFAULT_PORTS else None
    if parsed is None:
        return None
    host, port = parsed
    return scheme, host, port or _DEFAULT_PORTS[scheme]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostGuard:
    """The header, Host, Origin and Content-Type rules of one node (see the module docstring)."""

    def __init__(
        self, http_addr: str, advertise_url: str | None, allowed_hosts: Iterable[str], allowed_origins: Iterable[str]
    ) -> None:
        bound, _ = split_host_port(http_addr, "--http-addr")
        self._any_ip = bound.lower() in _WILDCARDS
        names = {name.strip().lower().strip("[]") for name in allowed_hosts if name.strip()}
        self._origins = {parsed for parsed in map(parse_origin, allowed_origins) if parsed is not None}
        advertised = parse_origin(advertise_url.rstrip("/")) if advertise_url else None
        if advertised is not None:
            self._origins.add(advertised)
            names.add(advertised[1])
        self._names = LOOPBACK_NAMES | names | ({bound.lower()} if not self._any_ip else set())

    def allows_host(self, name: str) -> bool:
        """Whether a Host's (already parsed) name may address this node."""
        if name in self._names:
            return True
        if _is_ip(name):
            return self._any_ip or ipaddress.ip_address(name).is_loopback
        return False

    def refusal(self, method: str, raw_headers: Iterable[tuple[bytes, bytes]]) -> HostRefusal | None:
        """Why this request (its method and its ASGI header list) must be refused, or None."""
        headers: dict[bytes, bytes] = {}
        for name, value in raw_headers:
            if name in _READ_HEADERS:
                if name in headers and name in _SINGLE_HEADERS:
                    return HostRefusal(400, "repeated_header", f"the {name.decode()} header may appear only once")
                headers[name] = value
        host = headers.get(b"host", b"").decode("latin-1")
        authority = parse_authority(host)
        if authority is None or not self.allows_host(authority[0]):
            return HostRefusal(
                421,
                "misdirected_request",
                f"Host {host!r} does not name this node; a reverse proxy's name must be allowed "
                "with --allowed-host (requests from a page that rebound its DNS name are refused)",
            )
        origin = headers.get(b"origin")
        if origin is not None and not self._allows_origin(origin.decode("latin-1"), authority):
            return HostRefusal(
                403,
                "cross_origin_refused",
                f"requests from a page on {origin.decode('latin-1')!r} are refused: only this "
                "node's own pages (same origin), its --advertise-url and origins allowed with "
                "--allowed-origin may send them",
            )
        if method not in WRITE_METHODS:
            return None
        content_type = headers.get(b"content-type")
        if _has_body(headers):
            if not _is_json(content_type):
                return HostRefusal(
                    415, "unsupported_media_type", "a request body must be sent as Content-Type: application/json"
                )
        elif method == "POST" and not _is_json(content_type) and not _is_bearer(headers.get(b"authorization")):
            return HostRefusal(
                415,
                "unsupported_media_type",
                "a POST without a body must carry Content-Type: application/json or a bearer "
                "token (a cross-site form can send neither), e.g. curl --json ''",
            )
        return None

    def _allows_origin(self, origin: str, authority: tuple[str, int | None]) -> bool:
        parsed = parse_origin(origin)
        if parsed is None:
            return False
        scheme, host, port = parsed
        same_origin = (host, port) == (authority[0], authority[1] or _DEFAULT_PORTS[scheme])
        return same_origin or parsed in self._origins


def _has_body(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length")
    if length is not None:
        return length.strip() not in (b"", b"0")
    return b"transfer-encoding" in headers


def _is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(b";")[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


def _is_bearer(authorization: bytes | None) -> bool:
    """A bearer credential, which a browser never attaches by itself (unlike Basic or a cookie)."""
    return authorization is not None and authorization[:7].lower() == b"bearer "
