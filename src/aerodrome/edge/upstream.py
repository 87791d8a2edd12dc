"""Connections to upstreams: keep-alive pools for requests, dedicated ones for WebSockets.

A connection goes back to the pool only when its response was read to the end and both
sides agreed to keep it alive; anything else is closed, so a half-read response can never
be mistaken for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

import httptools

from aerodrome.edge.tlsstream import no_write

if TYPE_CHECKING:
    from aerodrome.edge.proxy import EdgeProtocol, Exchange

Address = tuple[str, int]
MAX_IDLE_PER_ADDRESS: Final = 256
HIGH_WATER: Final = 256 * 1024
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


# Response header lines the edge does not relay (Transfer-Encoding among them: the edge
# frames the body it relays itself), lowercase, for `header_lines`.
LEFT_OUT: Final = tuple(sorted(HOP_BY_HOP))


def header_lines(
    raw: bytes, start: int, cut: tuple[bytes, ...]
) -> tuple[int, list[bytes], bool, bool]:
    """Read the header lines of the response head at `raw[start:]`, which the parser has
    accepted whole (each line ends in CRLF; each header line is `name:value`).

    Returns where a message after this head would begin, the header lines to relay as pieces
    of `raw` (runs of whole lines, as the app wrote them, with the lines whose lowercase name
    is in `cut` left out), whether the head has a Content-Length, and whether its
    Transfer-Encoding (the last, if several) names chunked. Raises ValueError if the head is
    not whole after all.

    `_heads.c` is the same function in C, which the compiled edge uses: in compiled Python
    each `bytes.find` or `index` is a generic call that parses its arguments, and a scan
    written with them costs more than httptools' call per header line (docs/decisions/0008).
    """
    while raw.startswith(b"\r\n", start):  # empty lines before a message: the parser skips them
        start += 2
    pos = raw.index(b"\n", start) + 1  # after the status line
    pieces: list[bytes] = []
    kept = pos  # the start of the lines kept and not yet in `pieces`
    has_length = chunked = False
    while not raw.startswith(b"\r\n", pos):
        after = raw.index(b"\n", pos) + 1
        colon = raw.index(b":", pos, after)
        name = raw[pos:colon].lower()
        if name == b"content-length":
            has_length = True
        else:
            if name == b"transfer-encoding":
                chunked = b"chunked" in raw[colon:after].lower()
            if name in cut:
                if kept < pos:
                    pieces.append(raw[kept:pos])
                kept = after
        pos = after
    if kept < pos:
        pieces.append(raw[kept:pos])
    return pos + 2, pieces, has_length, chunked


def _header_lines_built() -> Callable[
    [bytes, int, tuple[bytes, ...]], tuple[int, list[bytes], bool, bool]
]:
    """`_heads.c`'s `header_lines` when it is built (with the compiled modules), else the
    Python one."""
    try:
        from aerodrome.edge._heads import header_lines as built
    except ImportError:
        return header_lines
    return built


READ_HEADER_LINES: Final = _header_lines_built()


class Upstream:
    """One upstream address in a worker's pool: its idle connections, the requests holding a
    slot there, and the requests waiting in line for one. Clients hold these objects (see
    `UpstreamPool.resolve`), so the request path makes no look-up by address."""

    __slots__ = ("address", "idle", "outstanding", "waiting")

    def __init__(self, address: Address) -> None:
        self.address = address
        self.idle: list[UpstreamConnection] = []
        self.outstanding = 0
        self.waiting: deque[tuple[EdgeProtocol, Exchange]] = deque()


class UpstreamConnection:  # an asyncio.Protocol by its methods: see EdgeProtocol
    __slots__ = (
        "client",
        "closed",
        "feed",
        "finished",
        "fresh",
        "head_request",
        "http11",
        "in_head",
        "interim",
        "keep_alive",
        "parser",
        "parser_keep_alive",
        "parser_status",
        "pool",
        "raw",
        "raw_start",
        "reused",
        "server",
        "status",
        "stray",
        "transport",
        "tunnel",
        "write",
    )

    def __init__(self, pool: UpstreamPool, server: Upstream) -> None:
        self.pool = pool
        self.server = server  # the upstream this connection is to
        self.transport: asyncio.Transport | None = None
        # The transport's `write`, looked up once (compiled code would look it up by name
        # per call); `no_write` until connected and once lost.
        self.write: Callable[[bytes], object] = no_write
        self._use_parser(httptools.HttpResponseParser(self))
        self.client: EdgeProtocol | None = None
        self.tunnel: EdgeProtocol | None = None
        # The client whose response this read completed: told once the whole read is parsed.
        self.finished: EdgeProtocol | None = None
        self.stray = False  # bytes came after a complete response: never reuse
        # The bytes holding the response head being read, from `raw_start` on: the read being
        # parsed or, for a head split across reads, the head's part from earlier reads and
        # this read. Let go of once a read is parsed, unless a head is still arriving.
        self.raw = b""
        self.raw_start = 0
        self.in_head = False  # a message has begun and its head is not all in yet
        self.closed = False
        self.reused = False
        self.head_request = False
        self.keep_alive = True
        # Whether the response now being read is HTTP/1.1, by its first bytes (a cheaper test
        # than the parser's version string); `fresh` until those have been seen. After an
        # interim response (100 Continue) the final one's version is the parser's.
        self.fresh = True
        self.http11 = False
        self.interim = False
        self.status = 0

    def _use_parser(self, parser: httptools.HttpResponseParser) -> None:
        """Parse with `parser` from now on; its methods used per response are looked up once,
        here, not by name per call."""
        self.parser = parser
        self.feed = parser.feed_data
        self.parser_status = parser.get_status_code
        self.parser_keep_alive = parser.should_keep_alive

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = stream = cast(asyncio.Transport, transport)  # uvloop's: duck-typed
        self.write = stream.write
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.tunnel_write(data)
            return
        client = self.client
        if client is None:  # bytes on an idle pooled connection: it is not usable
            self.close()
            return
        if self.fresh:
            self.fresh = False
            self.interim = False
            self.http11 = data.startswith(b"HTTP/1.1 ")  # (else never pooled: see below)
        if self.in_head:  # a head begun in an earlier read
            self.raw = self.raw[self.raw_start :] + data
        else:
            self.raw = data
        self.raw_start = 0
        try:
            self.feed(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.raw = b""
            client.upstream_upgraded(self, data[upgrade.args[0] :])
            return
        except httptools.HttpParserError:  # (a callback's error too, `header_lines`' among them)
            self.raw = b""
            self.finished = None
            self.close()
            client.upstream_failed(self, 502, "the app sent an invalid HTTP response")
            client.flush()
            return
        if not self.in_head:
            self.raw = b""  # (a read may be a large part of a body: not held on to)
        finished = self.finished
        if finished is not None:
            # The response is complete and this read parsed to its end. Back to the pool
            # first, so the request that the freed slot goes to (`UpstreamPool.end`) reuses
            # this connection; never one the app sent more than the response on.
            self.finished = None
            if self.keep_alive and not self.closed and not self.stray:
                self.pool.release(self)
            else:
                self.close()
            finished.response_complete(self)
        if client.out:  # everything this read produced goes out as one write
            client.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.write = no_write
        self.pool.forget(self)
        # The parser holds this protocol's bound methods: drop it so the pair is freed by
        # reference counting instead of waiting for the cycle collector.
        self._use_parser(_CLOSED)
        if self.tunnel is not None:
            self.tunnel.tunnel_closed()
        elif self.client is not None:
            client, self.client = self.client, None
            client.upstream_failed(self, 502, "the app closed the connection")

    def eof_received(self) -> bool | None:
        return None  # the upstream is done sending: close (a tunnel's client side follows)

    def pause_writing(self) -> None:
        peer = self.tunnel or self.client
        if peer is not None:
            peer.pause_reading_for_peer()

    def resume_writing(self) -> None:
        peer = self.tunnel or self.client
        if peer is not None:
            peer.resume_reading_for_peer()

    # -- httptools callbacks ------------------------------------------------------------------
    # No `on_header`: without one, httptools makes no call per header line. The parser still
    # checks each line (a bare CR or LF, obsolete line folding, a bad name or value: an
    # invalid response) and the framing; once it has the whole head, `header_lines` reads the
    # lines to relay from the raw bytes.

    def on_message_begin(self) -> None:
        self.in_head = True
        if self.client is None:  # a message after the response, in the same read
            self.stray = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        status = self.status = self.parser_status()
        http11 = self.http11 if not self.interim else self.parser.get_http_version() == "1.1"
        self.keep_alive = http11 and self.parser_keep_alive()
        # (never pool an HTTP/1.0 upstream connection)
        if status < 200:
            self.interim = True
        # (An interim response's next message begins where its head ends: `raw_start`.)
        self.raw_start, head, has_length, chunked = READ_HEADER_LINES(
            self.raw, self.raw_start, LEFT_OUT
        )
        client = self.client
        if client is None:
            return
        client.response_head(self, status, head, chunked, has_length)
        if self.head_request and status >= 200:
            # A HEAD response has no body whatever its Content-Length says: finish here and
            # start a fresh parser for the next response on this connection.
            self._use_parser(httptools.HttpResponseParser(self))
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        client = self.client
        if client is not None:
            client.response_body(body)

    def on_message_complete(self) -> None:
        if self.status < 200:
            # An interim response (100 Continue: the final one follows), or a switch of
            # protocols (the connection becomes a tunnel, never pooled).
            return
        client, self.client = self.client, None
        self.finished = client  # `data_received` finishes the exchange after this read

    # -- used by the client side --------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if not self.closed:
            self.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Splice(asyncio.Protocol):
    """The protocol of each transport of an established WebSocket tunnel.

    Its `data_received` is the other transport's `write` itself, so what one side reads,
    uvloop hands straight to the other side's write, with no Python frame per read (about
    two per relayed message otherwise). The rest (backpressure, the end of the connection)
    goes to the side's own protocol as before; it still holds both transports.
    """

    __slots__ = ("data_received", "owner")

    def __init__(
        self, write: Callable[[bytes], object], owner: EdgeProtocol | UpstreamConnection
    ) -> None:
        self.data_received = write  # type: ignore[method-assign, assignment]
        self.owner = owner

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self.owner.eof_received()

    def pause_writing(self) -> None:
        self.owner.pause_writing()

    def resume_writing(self) -> None:
        self.owner.resume_writing()


# What a closed connection's `parser` becomes (see `connection_lost`): bytes after the close
# never reach it, and it references no protocol.
_CLOSED = httptools.HttpResponseParser(object())


class UpstreamPool:
    """Per-worker keep-alive pools, one `Upstream` per address, with outstanding-request
    counts.

    A request holds a slot at its upstream from `begin` (or a grant) until `end`. When an
    app's `hard_limit` has every upstream full, the request waits in line at each of them
    (`wait`); `end` hands its slot straight to the first one still waiting, so a freed slot is
    never taken by a later arrival, and nobody polls.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, connect_timeout: float = 5.0) -> None:
        self.loop = loop
        self.connect_timeout = connect_timeout
        self.upstreams: dict[Address, Upstream] = {}

    def resolve(self, addresses: tuple[Address, ...]) -> tuple[Upstream, ...]:
        """The pool's entries for a route's addresses (created on first use)."""
        upstreams = []
        for address in addresses:
            upstream = self.upstreams.get(address)
            if upstream is None:
                upstream = self.upstreams[address] = Upstream(address)
            upstreams.append(upstream)
        return tuple(upstreams)

    def pick(self, upstreams: tuple[Upstream, ...]) -> Upstream:
        """Least outstanding requests first; ties go to the first registered."""
        best = upstreams[0]
        for upstream in upstreams:
            if upstream.outstanding < best.outstanding:
                best = upstream
        return best

    def begin(self, upstream: Upstream) -> None:
        upstream.outstanding += 1

    def end(self, upstream: Upstream) -> None:
        """The request holding a slot at `upstream` is done with it: the first request still
        waiting there takes it over (its count unchanged), else the count goes down."""
        line = upstream.waiting
        while line:
            client, ex = line.popleft()
            if client.waiting is ex:  # not timed out, not gone, not served elsewhere
                client.slot_granted(ex, upstream)
                return
        upstream.outstanding -= 1

    def wait(self, client: EdgeProtocol, ex: Exchange, upstreams: tuple[Upstream, ...]) -> None:
        """Queue `ex` for the first slot to free at any of `upstreams`. The client marks it
        as `client.waiting`; clearing that withdraws it (entries are dropped lazily)."""
        for upstream in upstreams:
            line = upstream.waiting
            if len(line) >= 64 and len(line) % 64 == 0:  # shed withdrawn entries now and then
                live = [entry for entry in line if entry[0].waiting is entry[1]]
                line.clear()
                line.extend(live)
            line.append((client, ex))

    def take_idle(self, upstream: Upstream) -> UpstreamConnection | None:
        idle = upstream.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    async def connect(self, upstream: Upstream) -> UpstreamConnection:
        conn = UpstreamConnection(self, upstream)
        await asyncio.wait_for(
            self.loop.create_connection(lambda: cast(asyncio.Protocol, conn), *upstream.address),
            self.connect_timeout,
        )
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        idle = conn.server.idle
        if len(idle) >= MAX_IDLE_PER_ADDRESS:
            conn.close()
        else:
            idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        idle = conn.server.idle
        if idle and conn in idle:
            idle.remove(conn)

    def close_all(self) -> None:
        for upstream in self.upstreams.values():
            for conn in upstream.idle:
                conn.close()
            upstream.idle.clear()
