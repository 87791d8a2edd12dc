"""CORS, compiled once per app per revision: the request path is a few look-ups.

Preflights are answered at the edge. Simple and actual requests get the allow headers added
to whatever the app (or the edge, for its own errors) answers, so a browser sees the real
status instead of a CORS failure.
"""

from __future__ import annotations

from aerodrome.platform.http_service import Cors

Headers = list[tuple[bytes, bytes]]


class CorsPolicy:
    __slots__ = (
        "_allow_all",
        "_allowed",
        "_blocks",
        "_credentials",
        "_methods",
        "_preflight_base",
        "_request_headers",
        "_star",
    )

    def __init__(self, cors: Cors, own_origins: tuple[str, ...]) -> None:
        self._allow_all = "*" in cors.origins
        self._allowed = frozenset(o.encode() for o in (*cors.origins, *own_origins) if o != "*")
        self._credentials = cors.credentials
        self._methods = frozenset(m.encode() for m in cors.methods)
        self._request_headers = frozenset(h.encode() for h in cors.headers)
        base: Headers = [
            (b"access-control-allow-methods", ", ".join(cors.methods).encode()),
            (b"access-control-max-age", str(cors.max_age).encode()),
        ]
        if cors.credentials:
            base.append((b"access-control-allow-credentials", b"true"))
        self._preflight_base = base
        # `response_block` per listed origin, rendered once. Only origins from the policy are
        # kept (a fixed set), never ones a client made up, so this cannot grow.
        self._blocks: dict[bytes, bytes] = {}
        # Any origin without credentials: every response carries the same line.
        star = self._allow_all and not cors.credentials
        self._star = b"access-control-allow-origin: *\r\n" if star else b""

    def origin_allowed(self, origin: bytes) -> bool:
        return self._allow_all or origin.lower() in self._allowed

    def websocket_origin_allowed(self, origin: bytes | None) -> bool:
        """A browser always sends Origin on a WebSocket handshake; a missing one is a
        non-browser client, which cross-site hijacking cannot use."""
        return origin is None or self.origin_allowed(origin)

    def response_headers(self, origin: bytes) -> Headers:
        """Headers for an actual response to a request that carried `origin`."""
        if not self.origin_allowed(origin):
            return []
        if self._allow_all and not self._credentials:
            return [(b"access-control-allow-origin", b"*")]
        # With credentials (or a list), the origin must be echoed, never "*", and caches
        # must key on it.
        out = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        if self._credentials:
            out.append((b"access-control-allow-credentials", b"true"))
        return out

    def response_block(self, origin: bytes) -> bytes:
        """`response_headers(origin)` as header lines for a response head."""
        if self._star:
            return self._star
        block = self._blocks.get(origin)
        if block is None:
            block = b"".join(b"%b: %b\r\n" % pair for pair in self.response_headers(origin))
            if origin in self._allowed:
                self._blocks[origin] = block
        return block

    def preflight(
        self, origin: bytes, method: bytes | None, request_headers: bytes | None
    ) -> tuple[int, Headers]:
        """(status, headers) for an OPTIONS preflight."""
        if not self.origin_allowed(origin):
            return 403, []
        if method is None or method.upper() not in self._methods:
            return 403, []
        if request_headers:
            asked = {h.strip().lower() for h in request_headers.split(b",") if h.strip()}
            if not asked <= self._request_headers:
                return 403, []
            allow = [(b"access-control-allow-headers", request_headers)]
        else:
            allow = []
        return 204, [*self.response_headers(origin), *self._preflight_base, *allow]
