"""The client side of the edge: one `EdgeProtocol` per accepted connection.

HTTP/1.1 is parsed with httptools; each request is routed by Host through the current
route table, the app's policies applied (HTTPS redirect, HSTS, CORS, forwarded headers,
limits), and proxied to an upstream from the worker's keep-alive pool. A WebSocket upgrade
gets its own upstream connection and becomes a byte tunnel with backpressure both ways.
Requests on one connection are answered in order; a connection never sees another's data.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Final, cast

import httptools

from aerodrome.edge.tlsstream import TlsStream
from aerodrome.edge.upstream import HIGH_WATER, HOP_BY_HOP, Splice, Upstream, UpstreamConnection

if TYPE_CHECKING:
    from aerodrome.edge.routes import Route, RouteTable
    from aerodrome.edge.worker import Worker

Headers = list[tuple[bytes, bytes]]

_lower: Final = bytes.lower  # (a C static when compiled: no look-up by name per call)


def header_table(
    kinds: Mapping[bytes, int], common: Iterable[bytes], default: int
) -> dict[bytes, tuple[int, bytes]]:
    """Header names as they usually arrive, lowercase or with each word capitalized, mapped
    to (kind, lowercase name): `kinds`' names and the `common` ones (of kind `default`). One
    look-up of a name as received then gives both, without lowering it (which allocates);
    any other spelling is lowered first."""
    table = {}
    for lower in (*common, *kinds):
        entry = (kinds.get(lower, default), lower)
        table[lower] = entry
        table[b"-".join(word.capitalize() for word in lower.split(b"-"))] = entry
    return table


# Headers the edge sets itself; copies from an untrusted client are dropped.
FORWARDED: Final = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"forwarded",
        b"x-real-ip",
        b"aero-client-ip",
        b"aero-region",
        b"aero-request-id",
    }
)
# Request headers that need more than relaying, by kind; any other header is relayed as is.
# (`Final` throughout: compiled code then reads these as constants, not as module attributes
# looked up on every use.)
_HOST: Final = 0
_ORIGIN: Final = 1
_TRANSFER_ENCODING: Final = 2
_CONTENT_LENGTH: Final = 3
_UPGRADE: Final = 4
_HOP: Final = 5
_FORWARDED: Final = 6
_AC_REQUEST_METHOD: Final = 7
_AC_REQUEST_HEADERS: Final = 8
_RELAY: Final = -1
SPECIAL_HEADERS: Final[dict[bytes, int]] = {
    **dict.fromkeys(HOP_BY_HOP, _HOP),
    **dict.fromkeys(FORWARDED, _FORWARDED),
    b"host": _HOST,
    b"origin": _ORIGIN,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"content-length": _CONTENT_LENGTH,
    b"upgrade": _UPGRADE,
    b"access-control-request-method": _AC_REQUEST_METHOD,
    b"access-control-request-headers": _AC_REQUEST_HEADERS,
}
# The usual spellings of common request header names: one look-up of the name as received
# gives its kind and lowercase form (`header_table`).
REQUEST_HEADERS: Final = header_table(
    SPECIAL_HEADERS,
    (
        b"user-agent",
        b"accept",
        b"accept-language",
        b"accept-encoding",
        b"cookie",
        b"authorization",
        b"referer",
        b"cache-control",
        b"pragma",
        b"content-type",
        b"if-none-match",
        b"if-modified-since",
        b"dnt",
        b"priority",
        b"sec-fetch-site",
        b"sec-fetch-mode",
        b"sec-fetch-dest",
        b"sec-fetch-user",
        b"sec-ch-ua",
        b"sec-ch-ua-mobile",
        b"sec-ch-ua-platform",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"upgrade-insecure-requests",
        b"x-requested-with",
    ),
    _RELAY,
)


def request_header(name: bytes) -> tuple[int, bytes]:
    """A request header name's kind and lowercase form: one look-up in `REQUEST_HEADERS` for
    the usual spellings; any other is lowered and looked up in `SPECIAL_HEADERS`."""
    entry = REQUEST_HEADERS.get(name)
    if entry is not None:
        return entry
    lower = _lower(name)
    return SPECIAL_HEADERS.get(lower, _RELAY), lower


STATUS_LINES: Final = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
# The code an edge-made error's body gives: 404 -> b"not_found".
ERROR_CODES: Final = {
    s.value: s.phrase.lower().replace(" ", "_").replace("-", "_").encode() for s in HTTPStatus
}
ACME_PREFIX: Final = b"/.well-known/acme-challenge/"
# A C static in the compiled module: no look-up by name per call. time.monotonic is the clock
# the event loop's time() reads too (CLOCK_MONOTONIC; the loop's is cached per iteration), so a
# reading of either can place a deadline.
_monotonic: Final = time.monotonic
MAX_QUEUED: Final = 8


# What a closed connection's `parser` becomes: it references no protocol.
_CLOSED_PARSER = httptools.HttpRequestParser(object())


def unread_body(ex: Exchange) -> bool:
    """Whether part of the request's body has not arrived yet."""
    return not ex.body_done and (ex.chunked_in or bool(ex.content_length))


def status_line(status: int) -> bytes:
    return STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode()


class Exchange:
    """One request and its response on a client connection."""

    __slots__ = (
        "ac_request_headers",
        "ac_request_method",
        "body_done",
        "body_size",
        "chunked_in",
        "chunks",
        "content_length",
        "error",
        "forwarded_for",
        "forwarded_host",
        "head",
        "header_size",
        "host",
        "keep_alive",
        "method",
        "origin",
        "out_bytes",
        "out_chunked",
        "request_id",
        "response_started",
        "retried",
        "route",
        "started",
        "status",
        "upgrade",
        "upstream",
        "url",
        "websocket",
    )

    def __init__(self, request_id: bytes) -> None:
        self.request_id = request_id
        self.url = b""
        # The request's header lines as they will be relayed upstream (hop-by-hop and
        # untrusted forwarding headers left out), rendered as they are parsed.
        self.head: list[bytes] = []
        self.header_size = 0
        self.method = b""
        self.host = b""
        self.origin: bytes | None = None
        self.ac_request_method: bytes | None = None
        self.ac_request_headers: bytes | None = None
        self.forwarded_for = b""  # a trusted proxy's X-Forwarded-For, with ", "
        self.forwarded_host = b""  # Host without its port, set when the request is routed
        self.keep_alive = True
        self.upgrade = False  # an Upgrade header came
        self.websocket = False  # ... asking for a WebSocket
        self.chunked_in = False
        self.content_length: int | None = None
        self.body_size = 0
        self.body_done = False
        self.chunks: list[bytes] | None = None  # body read before an upstream is attached
        self.error: tuple[int, str] | None = None
        self.route: Route | None = None
        self.upstream: UpstreamConnection | None = None
        self.response_started = False
        self.out_chunked = False
        self.out_bytes = 0
        self.status = 0
        self.started = _monotonic()
        self.retried = False


class EdgeProtocol:
    """An `asyncio.Protocol` by its methods (uvloop calls them by name), not by inheritance:
    a class without a Python base compiles to a native one (see `native`), whose attributes
    are C struct fields instead of dictionary entries."""

    def __init__(self, worker: Worker, tls: bool) -> None:
        self.worker = worker
        self.config = worker.config
        self.loop = worker.loop
        self.clock = worker.loop.time  # a bound method: no look-up per call
        self.tls = tls
        self.port = self.config.https_port if tls else self.config.http_port
        self.transport: asyncio.Transport | None = None
        # The transport again when it is the edge's own TLS layer, whose methods compiled
        # code calls directly instead of by name.
        self.stream: TlsStream | None = None
        self.parser = parser = httptools.HttpRequestParser(self)
        # The parser's methods used per request, looked up once (see `_drop_parser`).
        self.feed = parser.feed_data
        self.get_method = parser.get_method
        self.should_keep_alive = parser.should_keep_alive
        self.client_ip = ""
        self.client_label = b""  # client_ip as the access log writes it
        self.log_tail = b""  # the end of this connection's access-log lines (`Worker.log_tail`)
        self.sni: str | None = None
        self.trusted_peer = False
        self.current: Exchange | None = None  # being parsed
        self.active: Exchange | None = None  # being answered
        self.waiting: Exchange | None = None  # the active one, in line for an upstream slot
        self.queue: deque[Exchange] = deque()
        self.header_bytes = 0
        # One lazy timer per connection: moving a deadline is an assignment; the timer
        # re-arms itself for the remainder when it fires early.
        self.timer: asyncio.TimerHandle | None = None
        self.timer_when = 0.0  # when `timer` fires
        self.deadline = 0.0
        self.deadline_kind: str | None = None
        self.out: list[bytes] = []
        self.tunnel: UpstreamConnection | None = None
        self.tunnel_pending = b""
        self.closing = False
        self.feeding = False  # inside the parser, on a read's bytes
        self.last_pending = False  # the last response waits for the read's end: `_close_after`
        self.client_eof = False
        self.reading_paused = False
        self.ws_idle: float = 0.0
        self.last_activity = 0.0
        # Keep-alive clients send the same Host each time: (table, Host, hostname, route, Host
        # without its port, the route's upstreams in the pool) of the last look-up, valid
        # while the worker's table is the same object.
        self.host_cache: (
            tuple[RouteTable, bytes, str, Route | None, bytes, tuple[Upstream, ...]] | None
        ) = None
        # The constant parts of the forwarding headers for this client (see `_request_head`).
        self.forwarded: tuple[bytes, bytes] | None = None

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = stream = cast(asyncio.Transport, transport)  # uvloop's: duck-typed
        if isinstance(transport, TlsStream):
            self.stream = transport
        stream.set_write_buffer_limits(high=HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else ""
        self.client_label = self.client_ip.encode()
        self.log_tail = self.worker.log_tail(self.client_label, self.tls, websocket=False)
        self.trusted_peer = self.client_ip in self.config.trusted_proxies
        if self.tls:
            sslobj = transport.get_extra_info("ssl_object")
            if sslobj is not None:
                self.sni = self.worker.tls.hostname_of(sslobj)
                self.worker.metrics.tls_handshakes += 1
        self.worker.metrics.open_connections += 1
        self._deadline(self.config.header_timeout, "header")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.worker.metrics.open_connections -= 1
        self.deadline_kind = None
        # The parser and the timer hold bound methods of this protocol: let go of both, so a
        # closed connection (and the TLS objects it references) is freed by reference
        # counting, not left for the cycle collector.
        self._drop_parser()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.tunnel is not None:
            self.worker.metrics.websockets_open -= 1
            tunnel, self.tunnel = self.tunnel, None
            tunnel.tunnel = None
            tunnel.close()
            return
        self._leave_line()
        for ex in (self.active, *self.queue):
            if ex is not None and ex.upstream is not None:
                conn, ex.upstream = ex.upstream, None
                conn.client = None
                self.worker.pool.end(conn.server)
                conn.close()  # its response will never be read: never reuse it
        self.active = None
        self.queue.clear()

    def _drop_parser(self) -> None:
        closed = _CLOSED_PARSER
        self.parser = closed
        self.feed = closed.feed_data
        self.get_method = closed.get_method
        self.should_keep_alive = closed.should_keep_alive

    def eof_received(self) -> bool | None:
        """The client half-closed: answer what it already asked, then close."""
        if self.tunnel is not None:
            self.tunnel.close()
            return None
        self.client_eof = True
        if self.active is not None or self.queue:
            return True  # keep the transport open for the responses in flight
        return None

    def pause_writing(self) -> None:
        peer = self.tunnel or (self.active.upstream if self.active else None)
        if peer is not None and peer.transport is not None:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.tunnel or (self.active.upstream if self.active else None)
        if peer is not None and peer.transport is not None:
            peer.transport.resume_reading()

    def pause_reading_for_peer(self) -> None:
        if self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading_for_peer(self) -> None:
        if self.transport is not None and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.last_activity = self.clock()
            self.tunnel.send(data)
            return
        if self.closing:
            return
        self.header_bytes += len(data)
        self.feeding = True
        try:
            self.feed(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.feeding = False
            self.tunnel_pending = data[upgrade.args[0] :]
        except httptools.HttpParserError as error:
            self.feeding = False
            self._refuse(400, f"malformed request: {error}".split(" (")[0])
        else:
            self.feeding = False
            # Headers still incomplete after all this data: stop before they grow further.
            current = self.current
            if (
                current is not None
                and not current.method
                and self.header_bytes > self.config.max_header_bytes
            ):
                self._refuse(431, "request headers are too large")
        if self.last_pending and self.transport is not None:
            self.last_pending = False
            # Quiet if nothing followed the last request in this read.
            self._close(self.transport, quiet=self.current is None and not self.tunnel_pending)
        if self.out:  # usually empty: the request went upstream
            self.flush()

    # -- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.current = ex = Exchange(self.worker.request_id())
        if self.active is None:  # else the active request's upstream deadline stands
            self._deadline(self.config.header_timeout, "header", ex.started)

    def on_url(self, url: bytes) -> None:
        ex = self.current
        assert ex is not None
        ex.url += url
        if len(ex.url) > self.config.max_header_bytes:
            ex.error = (414, "the request URL is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.current
        assert ex is not None
        kind, lower = request_header(name)
        if kind == _RELAY or self._special_header(ex, kind, lower, value):
            # Relayed: the line as it goes upstream, in four pieces (appends build no tuple).
            head = ex.head
            head.append(lower)
            head.append(b": ")
            head.append(value)
            head.append(b"\r\n")
        ex.header_size += len(name) + len(value) + 4
        if ex.header_size > self.config.max_header_bytes:
            ex.error = (431, "request headers are too large")

    def _special_header(self, ex: Exchange, kind: int, name: bytes, value: bytes) -> bool:
        """Take note of a header the edge acts on; whether it is relayed upstream."""
        if kind == _HOST:
            if ex.host:
                ex.error = (400, "more than one Host header")
            ex.host = value
        elif kind == _ORIGIN:
            ex.origin = value
        elif kind == _TRANSFER_ENCODING:  # hop-by-hop: re-framed, never relayed
            if value.strip().lower() != b"chunked":
                ex.error = (501, "only the chunked transfer coding is supported")
            ex.chunked_in = True
            return False
        elif kind == _CONTENT_LENGTH:
            ex.content_length = int(value)
        elif kind == _UPGRADE:  # hop-by-hop; the edge sets its own for a WebSocket
            ex.upgrade = True
            if value.strip().lower() == b"websocket":
                ex.websocket = True
            return False
        elif kind == _HOP:
            return False
        elif kind == _FORWARDED:
            # The edge sets these itself. A trusted proxy's X-Forwarded-For is extended and
            # its other forwarding headers are relayed; nobody else's are.
            if not self.trusted_peer:
                return False
            if name == b"x-forwarded-for":
                ex.forwarded_for = value + b", "
                return False
        elif kind == _AC_REQUEST_METHOD and ex.ac_request_method is None:
            ex.ac_request_method = value  # the first one counts
        elif kind == _AC_REQUEST_HEADERS and ex.ac_request_headers is None:
            ex.ac_request_headers = value
        return True

    def on_headers_complete(self) -> None:
        ex = self.current
        assert ex is not None
        if self.deadline_kind == "header":  # (a pipelined head: the active request's stands)
            self.deadline_kind = None
        self.header_bytes = 0
        ex.method = self.get_method()
        ex.keep_alive = self.should_keep_alive()
        # (llhttp upgrades only for an Upgrade header with Connection: upgrade, or a CONNECT)
        if not (ex.upgrade or ex.method == b"CONNECT") or not self.parser.should_upgrade():
            ex.websocket = False  # an Upgrade header alone asks for nothing
        elif not ex.websocket:
            ex.error = (400, "only WebSocket upgrades are supported")
        if not ex.host and ex.error is None:
            ex.error = (400, "the Host header is missing")
        if ex.content_length is not None and ex.content_length > self.config.max_body_bytes:
            ex.error = (413, f"request body is larger than {self.config.max_body_bytes} bytes")
        if self.active is None and not self.queue and not self.closing:
            self.active = ex  # (the usual case: nothing in line before it; as `_next` does)
            if self.reading_paused:
                self.resume_reading_for_peer()
            self._dispatch(ex)
            return
        self.queue.append(ex)
        if len(self.queue) > MAX_QUEUED:
            self.pause_reading_for_peer()
        if self.active is None:
            self._next()

    def on_body(self, body: bytes) -> None:
        ex = self.current
        assert ex is not None
        ex.body_size += len(body)
        if ex.body_size > self.config.max_body_bytes:
            if ex.error is None:
                ex.error = (413, f"request body is larger than {self.config.max_body_bytes} bytes")
            if ex is self.active and not ex.response_started:
                self._abandon_upstream(ex)
                self._send_error(ex, 413, ex.error[1], close=True)
            return
        if ex.upstream is not None:
            ex.upstream.send(b"%x\r\n%b\r\n" % (len(body), body) if ex.chunked_in else body)
        elif ex.error is None:
            if ex.chunks is None:
                ex.chunks = []
            ex.chunks.append(body)
            if ex.body_size > HIGH_WATER:  # all of it is buffered until an upstream is attached
                self.pause_reading_for_peer()

    def on_message_complete(self) -> None:
        ex = self.current
        assert ex is not None
        ex.body_done = True
        self.current = None
        self.header_bytes = 0  # what follows is the next request's head, not this body
        if ex.upstream is not None and ex.chunked_in:
            ex.upstream.send(b"0\r\n\r\n")

    # -- answering ----------------------------------------------------------------------------

    def _next(self) -> None:
        if not self.queue or self.closing:
            return
        ex = self.queue.popleft()
        self.active = ex
        if self.reading_paused and len(self.queue) <= MAX_QUEUED:
            self.resume_reading_for_peer()
        self._dispatch(ex)

    def _dispatch(self, ex: Exchange) -> None:
        if ex.error is not None:
            self._send_error(ex, ex.error[0], ex.error[1], close=True)
            return
        table = self.worker.table
        cache = self.host_cache
        if cache is None or cache[0] is not table or cache[1] != ex.host:
            host = ex.host.split(b":", 1)[0]
            hostname = host.lower().decode("latin-1")
            found = table.routes.get(hostname)
            upstreams = self.worker.pool.resolve(found.upstreams) if found is not None else ()
            cache = self.host_cache = (table, ex.host, hostname, found, host, upstreams)
        hostname, route = cache[2], cache[3]
        ex.forwarded_host = cache[4]
        if not self.tls and ex.url.startswith(ACME_PREFIX):
            self._acme_http01(ex)
            return
        if self.tls and self.sni is not None and self.sni != hostname:
            # Host must match the name the TLS connection was made for (no domain fronting).
            self._send_error(ex, 421, "this connection was made for another hostname")
            return
        if route is None:
            self._send_error(ex, 404, "no app is served at this hostname")
            return
        ex.route = route
        if not self.tls and (route.service.force_https or ex.websocket):
            # WebSockets only over TLS: a ws:// handshake is sent to wss:// (browsers
            # reconnect to the new URL).
            self._redirect(ex, route.https_location + ex.url)
            return
        if ex.origin is not None and ex.method == b"OPTIONS":
            method = ex.ac_request_method
            if method is not None:
                status, headers = route.cors.preflight(ex.origin, method, ex.ac_request_headers)
                self._send_simple(ex, status, headers, b"")
                return
        if ex.websocket and not route.cors.websocket_origin_allowed(ex.origin):
            self._send_error(ex, 403, "this Origin may not open a WebSocket to this app")
            return
        upstreams = cache[5]
        if not upstreams:
            self._send_error(ex, 503, "no machine is serving this app", retry_after=True)
            return
        self._proxy(ex, route, upstreams)

    def _proxy(self, ex: Exchange, route: Route, upstreams: tuple[Upstream, ...]) -> None:
        pool = self.worker.pool
        upstream = upstreams[0] if len(upstreams) == 1 else pool.pick(upstreams)
        hard = route.hard_limit
        if hard and upstream.outstanding >= hard:
            # Every machine of the app is at its hard limit: wait in line for the first slot
            # to free (`slot_granted`), or answer 503 at the queue timeout.
            self.waiting = ex
            pool.wait(self, ex, upstreams)
            self._deadline(self.config.queue_timeout, "queue")
            return
        pool.begin(upstream)
        self._use_slot(ex, upstream)

    def _leave_line(self) -> None:
        """Withdraw the waiting request from the line for a slot (its entries there are
        dropped lazily, so let go of its buffered body now)."""
        if self.waiting is not None:
            self.waiting.chunks = None
            self.waiting = None

    def slot_granted(self, ex: Exchange, upstream: Upstream) -> None:
        """A slot at `upstream` freed while `ex` waited in line: it is ex's now."""
        self.waiting = None
        self.deadline_kind = None
        self._use_slot(ex, upstream)

    def _use_slot(self, ex: Exchange, upstream: Upstream) -> None:
        conn = None if ex.websocket else self.worker.pool.take_idle(upstream)
        if conn is not None:
            self._attach(ex, conn)
        else:
            self.loop.create_task(self._connect(ex, upstream))

    async def _connect(self, ex: Exchange, upstream: Upstream) -> None:
        try:
            conn = await self.worker.pool.connect(upstream)
        except (TimeoutError, OSError):
            self.worker.pool.end(upstream)
            if ex is self.active and not self.closing:
                self._send_error(ex, 502, "the app is not reachable")
            return
        if ex is not self.active or self.closing:
            self.worker.pool.end(upstream)
            conn.close()
            return
        self._attach(ex, conn)

    def _attach(self, ex: Exchange, conn: UpstreamConnection) -> None:
        ex.upstream = conn
        conn.client = self
        conn.fresh = True
        conn.head_request = ex.method == b"HEAD"
        head = self._request_head(ex)
        chunks = ex.chunks
        if chunks is None and not ex.chunked_in:
            conn.send(head)  # the usual request: no body, or none of it read yet
        else:
            payload = [head]
            for chunk in chunks or ():
                payload.append(b"%x\r\n%b\r\n" % (len(chunk), chunk) if ex.chunked_in else chunk)
            ex.chunks = None
            if ex.body_done and ex.chunked_in:
                payload.append(b"0\r\n\r\n")
            conn.send(b"".join(payload))
        self._deadline(self.config.upstream_timeout, "upstream")
        # Reading may have paused while the body was buffered: the upstream takes it now
        # (unless its own buffer is full: then its resume_writing resumes us).
        if (
            self.reading_paused
            and len(self.queue) <= MAX_QUEUED
            and conn.transport is not None
            and conn.transport.get_write_buffer_size() < HIGH_WATER
        ):
            self.resume_reading_for_peer()

    def _request_head(self, ex: Exchange) -> bytes:
        forwarded = self.forwarded
        if forwarded is None:
            forwarded = self.forwarded = self._forwarded_parts()
        return b"".join(
            [
                ex.method,
                b" ",
                ex.url,
                b" HTTP/1.1\r\n",
                *ex.head,
                b"transfer-encoding: chunked\r\n" if ex.chunked_in else b"",
                b"connection: upgrade\r\nupgrade: websocket\r\n" if ex.websocket else b"",
                b"x-forwarded-for: ",
                ex.forwarded_for,
                forwarded[0],
                ex.forwarded_host,
                forwarded[1],
                ex.request_id,
                b"\r\n\r\n",
            ]
        )

    def _forwarded_parts(self) -> tuple[bytes, bytes]:
        """What the forwarding headers say about this connection, rendered once: the parts
        around X-Forwarded-Host and Aero-Request-Id, which change per request."""
        ip = self.client_label
        proto = b"https" if self.tls else b"http"
        return (
            b"%b\r\nx-forwarded-proto: %b\r\nx-forwarded-host: " % (ip, proto),
            b"\r\nx-forwarded-port: %d\r\naero-client-ip: %b\r\naero-region: %b\r\n"
            b"aero-request-id: " % (self.port, ip, self.worker.region),
        )

    # -- upstream callbacks -------------------------------------------------------------------

    def response_head(
        self,
        conn: UpstreamConnection,
        status: int,
        head: list[bytes],
        chunked: bool,
        has_length: bool,
    ) -> None:
        """The upstream's response head, its header lines already rendered (`head`)."""
        ex = self.active
        if ex is None or ex.upstream is not conn:
            return
        self.deadline_kind = None
        if 100 <= status < 200 and status != 101:
            return  # interim responses (100 Continue) are not relayed
        ex.status = status
        ex.response_started = True
        out = self.out  # the head goes out with the body read with it, in one write
        out.append(status_line(status))
        out += head
        if status == 101:
            out.append(b"connection: upgrade\r\nupgrade: websocket\r\n")
        elif ex.keep_alive and (
            chunked
            or not (has_length or status in (204, 304) or ex.method == b"HEAD" or status < 200)
        ):
            ex.out_chunked = True
            out.append(b"transfer-encoding: chunked\r\n")
            # else: close-delimited body for an HTTP/1.0 client
        if not ex.keep_alive and status != 101:
            out.append(b"connection: close\r\n")
        self._our_headers(ex, out)
        out.append(b"\r\n")

    def response_body(self, body: bytes) -> None:
        ex = self.active
        if ex is None:
            return
        ex.out_bytes += len(body)
        self.out.append(b"%x\r\n%b\r\n" % (len(body), body) if ex.out_chunked else body)

    def response_complete(self, conn: UpstreamConnection) -> None:
        ex = self.active
        if ex is None or ex.upstream is not conn:
            return
        if ex.out_chunked:
            self.out.append(b"0\r\n\r\n")
        ex.upstream = None
        if unread_body(ex):  # the app answered before it had the whole body: not in step
            conn.close()
        self.worker.pool.end(conn.server)
        self._finish(ex)

    def upstream_failed(self, conn: UpstreamConnection, status: int, message: str) -> None:
        ex = self.active
        if ex is None or ex.upstream is not conn:
            return
        ex.upstream = None
        self.deadline_kind = None
        if (
            not ex.response_started
            and conn.reused
            and not ex.retried
            and ex.body_size == 0
            and ex.method in (b"GET", b"HEAD", b"OPTIONS")
        ):
            # An idle pooled connection the app had just closed: retry once on a new one,
            # in the same slot.
            ex.retried = True
            self.loop.create_task(self._connect(ex, conn.server))
            return
        self.worker.pool.end(conn.server)
        if ex.response_started:
            ex.keep_alive = False
            self._finish(ex)  # the body was cut: the client sees the connection close
            return
        self._send_error(ex, status, message)

    def _upstream_timeout(self, ex: Exchange) -> None:
        if ex.upstream is None or ex.response_started:
            return
        self._abandon_upstream(ex)
        self._send_error(ex, 504, "the app did not answer in time")

    def _abandon_upstream(self, ex: Exchange) -> None:
        if self.waiting is ex:
            self._leave_line()
        conn, ex.upstream = ex.upstream, None
        if conn is not None:
            conn.client = None
            self.worker.pool.end(conn.server)
            conn.close()

    # -- WebSocket tunnel ---------------------------------------------------------------------

    def upstream_upgraded(self, conn: UpstreamConnection, leftover: bytes) -> None:
        ex = self.active
        if ex is None or ex.upstream is not conn or ex.status != 101:
            conn.close()
            return
        self.deadline_kind = None
        conn.client = None
        conn.tunnel = self
        self.tunnel = conn
        self.worker.pool.end(conn.server)  # a tunnel holds no request slot
        self.worker.metrics.websockets_open += 1
        self.worker.metrics.websockets_total += 1
        self._log(ex, websocket=True)
        self.flush()  # the 101 head
        if leftover:
            self.tunnel_write(leftover)
        if self.tunnel_pending:
            conn.send(self.tunnel_pending)
            self.tunnel_pending = b""
        route = ex.route
        idle = route.service.websocket_idle_timeout if route is not None else 0.0
        if idle:  # every read must note the time: the tunnel stays in Python
            self.ws_idle = idle
            self.last_activity = self.clock()
            self._deadline(idle, "websocket")
        else:
            self._splice(conn)

    def _splice(self, conn: UpstreamConnection) -> None:
        """Join the two transports: each one's reads are written to the other by uvloop
        itself (see `Splice`), so relaying a message runs no Python at all."""
        client, upstream = self.transport, conn.transport
        if client is None or upstream is None or client.is_closing() or conn.closed:
            return
        client.set_protocol(Splice(upstream.write, self))
        upstream.set_protocol(Splice(client.write, conn))

    def tunnel_write(self, data: bytes) -> None:
        self.last_activity = self.clock()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def tunnel_closed(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- edge-made responses ------------------------------------------------------------------

    def _our_headers(self, ex: Exchange, parts: list[bytes]) -> None:
        parts.append(b"aero-request-id: ")  # (per response: appends build no list)
        parts.append(ex.request_id)
        parts.append(b"\r\n")
        route = ex.route
        if route is None:
            return
        if self.tls:
            parts.append(route.hsts_line)
        if ex.origin is not None:
            parts.append(route.cors.response_block(ex.origin))

    def _send_simple(
        self,
        ex: Exchange,
        status: int,
        headers: Headers,
        body: bytes,
        content_type: bytes = b"application/json",
        close: bool = False,
    ) -> None:
        ex.status = status
        ex.response_started = True
        if close:
            ex.keep_alive = False
        parts = [status_line(status)]
        for name, value in headers:
            parts += [name, b": ", value, b"\r\n"]
        if body:
            parts += [b"content-type: ", content_type, b"\r\n"]
        parts += [b"content-length: ", str(len(body)).encode(), b"\r\n"]
        if not ex.keep_alive:
            parts.append(b"connection: close\r\n")
        self._our_headers(ex, parts)
        parts += [b"\r\n", body]
        self.out.append(b"".join(parts))  # `flush` sends it, in one TLS record where it can
        ex.out_bytes = len(body)
        self._finish(ex)

    def _send_error(
        self,
        ex: Exchange,
        status: int,
        message: str,
        *,
        close: bool = False,
        retry_after: bool = False,
    ) -> None:
        body = b'{"error": {"code": "%s", "message": "%s", "request_id": "%s"}}' % (
            ERROR_CODES[status],
            message.replace('"', "'").encode(),
            ex.request_id,
        )
        headers = [(b"retry-after", b"1")] if retry_after else []
        self.worker.metrics.edge_errors += 1
        self._send_simple(ex, status, headers, body, close=close)

    def _redirect(self, ex: Exchange, location: bytes) -> None:
        self._send_simple(ex, 301, [(b"location", location)], b"")

    def _acme_http01(self, ex: Exchange) -> None:
        token = ex.url[len(ACME_PREFIX) :].split(b"?", 1)[0].decode("latin-1")
        answer = self.worker.table.http01.get(token)
        if answer is None:
            self._send_error(ex, 404, "no such challenge")
        else:
            self._send_simple(ex, 200, [], answer, content_type=b"text/plain")

    def _refuse(self, status: int, message: str) -> None:
        """A request too broken to route: answer if nothing is in flight, then close."""
        if self.closing:
            return  # the connection's last response is made: nothing more is answered
        ex = self.current or Exchange(self.worker.request_id())
        self.current = None
        self.queue.clear()
        if self.active is None or not self.active.response_started:
            if self.active is not None:
                self._abandon_upstream(self.active)
            self.active = ex
            self._send_error(ex, status, message, close=True)
        elif self.transport is not None:
            self.transport.close()

    # -- bookkeeping --------------------------------------------------------------------------

    def _finish(self, ex: Exchange) -> None:
        if unread_body(ex):
            ex.keep_alive = False  # answered before its body arrived: the rest is unread
        if self.active is ex:
            self.active = None
        if not ex.keep_alive or self.closing or (self.client_eof and not self.queue):
            self.closing = True
            self._log(ex)
            if self.transport is not None:
                self._close_after(ex, self.transport)
            return
        self.flush()
        now = self._log(ex)
        if self.queue:
            self._next()
        elif self.current is None:
            self._deadline(self.config.idle_timeout, "idle", now)
        else:  # the next request is arriving: its headers have the usual time
            self._deadline(self.config.header_timeout, "header")

    def _close_after(self, ex: Exchange, transport: asyncio.Transport) -> None:
        """Send what is left of the response to `ex`, the connection's last, and close.

        On TLS, when nothing more can be coming (the request was read to the end and no other
        one is in flight), the response, close_notify and the close go out in one write and
        the edge does not wait for the client's close_notify, like nginx. Otherwise it lingers
        a little, reading and discarding, so that a client still sending reads the response
        before a reset could destroy it.
        """
        if (
            self.feeding
            and self.current is ex
            and not unread_body(ex)
            and not self.should_keep_alive()
        ):
            # Answered from its head alone (an edge-made response) while the read holding it
            # is being parsed, and the client asked to close: whether anything follows the
            # request is known once the whole read is (`data_received`). A close the edge
            # forces on a keep-alive client lingers: more requests may be on their way.
            self.last_pending = True
            return
        self._close(transport, quiet=ex.body_done and self.current is None)

    def _close(self, transport: asyncio.Transport, quiet: bool) -> None:
        """Send what is left and close: at once if the client is `quiet` (it cannot be
        sending anything more) and no request is queued, else lingering."""
        stream = self.stream
        if stream is not None and quiet and not self.queue:
            stream.write_last(self._take_out())
            return
        self.flush()
        transport.close()

    def _log(self, ex: Exchange, websocket: bool = False) -> float:
        """Count and log the exchange; the clock's reading at its end."""
        tail = self.log_tail
        if websocket:
            tail = self.worker.log_tail(self.client_label, self.tls, websocket)
        return self.worker.record(ex, ex.route, tail)

    def flush(self) -> None:
        if not self.out:
            return
        data = self._take_out()
        stream = self.stream
        if stream is not None:
            stream.write(data)  # (nothing, once it is closing)
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _take_out(self) -> bytes:
        """What the connection has to send, as one bytes object (one TLS record when small)."""
        out = self.out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def _deadline(self, seconds: float, kind: str, now: float = -1.0) -> None:
        """Move the connection's deadline to `seconds` from `now` (a clock reading the caller
        has; by default, the loop's time). The one timer never sleeps longer than the header
        timeout, so the usual deadlines (header, upstream, idle) never need a new timer; only a
        shorter one does."""
        deadline = (self.clock() if now < 0 else now) + seconds
        self.deadline = deadline
        self.deadline_kind = kind
        timer = self.timer
        if timer is not None:
            if self.timer_when <= deadline + 0.05:
                return
            timer.cancel()
        self._arm(min(seconds, self.config.header_timeout))

    def _arm(self, seconds: float) -> None:
        self.timer = timer = self.loop.call_later(seconds, self._on_timer)
        self.timer_when = timer.when()

    def _on_timer(self) -> None:
        self.timer = None
        kind = self.deadline_kind
        if kind is None or self.transport is None:
            return
        deadline = self.deadline
        if kind == "websocket":
            deadline = self.last_activity + self.ws_idle
        remaining = deadline - self.clock()
        if remaining > 0.001:
            self._arm(min(remaining, self.config.header_timeout))
            return
        self.deadline_kind = None
        if kind == "header":
            if self.active is None and not self.queue:
                self._refuse(408, "the request headers did not arrive in time")
        elif kind == "idle":
            if self.active is None and self.current is None:
                self.transport.close()
        elif kind == "upstream":
            if self.active is not None:
                self._upstream_timeout(self.active)
                self.flush()
        elif kind == "queue":
            ex = self.waiting
            if ex is not None and ex is self.active:
                self._leave_line()
                self._send_error(ex, 503, "the app is at its concurrency limit", retry_after=True)
        else:  # an idle WebSocket past its configured timeout
            self.transport.close()
