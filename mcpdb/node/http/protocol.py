"""The HTTP/1.1 protocol a node serves: uvicorn's httptools one, with an absolute-form target's authority as Host.

RFC 9112 3.2.2: a server must accept ``GET http://name/path HTTP/1.1`` and
then use the target's authority, not the Host header. uvicorn keeps only the
path in the ASGI scope, so the request gate would check a Host the request
does not address: a page could name ``evil.example`` in the target and the
node's own address in Host. Here the target's authority replaces every Host
header before the scope reaches the gate, which then judges it like any Host
(mcpdb.node.http.host_guard). It reads the protocol's ``url`` and ``headers``
as parsed so far, uvicorn internals: uvicorn is pinned (0.54.x) for them, and
tests/test_host_guard.py's absolute-form probe fails if they change.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class AbsoluteFormHost(HttpToolsProtocol):
    """uvicorn's httptools protocol; an absolute-form target's authority becomes the request's Host."""

    def on_headers_complete(self) -> None:
        _, separator, rest = self.url.partition(b"://")
        if separator and not self.url.startswith(b"/"):
            authority = rest.split(b"/", 1)[0].split(b"?", 1)[0]
            # The same list is the scope's "headers".
            self.headers[:] = [(name, value) for name, value in self.headers if name != b"host"]
            self.headers.append((b"host", authority))
        super().on_headers_complete()
