"""TLS for the edge's client connections, over a plain TCP transport.

`TlsStream` is the protocol of an accepted TCP connection and, once the handshake is done,
the transport of the app protocol it creates (an `EdgeProtocol`): the app sees the usual
`write`, `close`, `pause_reading`, `get_extra_info` and friends, and is made only for a
connection whose handshake succeeded.

Why not the event loop's own TLS layer (`create_server(ssl=...)`): per new connection it
costs about 45 µs more CPU than this one, the largest part of the edge's gap to nginx on
new and resumed connections (measured with `openssl s_time -reuse` against two bare servers,
docs/decisions/0006-edge.md); per request the two cost the same. It also has no way to close
without waiting for the client's close_notify, and it drops what the app writes after the
client's close_notify, though TLS lets a server answer a half-closed client.

The TLS work itself is OpenSSL's, through the standard `ssl` module over memory BIOs:
records are decrypted as they arrive and handed to the app in one `data_received` per TCP
read; what the app writes is encrypted at once and handed to the TCP transport, whose write
buffer is the only one (so its flow control is the app's).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

from aerodrome.edge.tls import server_connection

if TYPE_CHECKING:
    from aerodrome.edge.proxy import EdgeProtocol

# One read's plaintext bound (uvloop's TLS layer reads 256 KiB at a time too).
READ_SIZE: Final = 256 * 1024
# After a close that may leave the client still sending (a refused request with its body
# unread), the socket stays open, reading and discarding, so that the client reads the
# response before a reset can destroy it: until the client has been quiet this long, or at
# most LINGER_TOTAL_SECONDS (nginx's `lingering_timeout` and `lingering_time`).
LINGER_SECONDS: Final = 5.0
LINGER_TOTAL_SECONDS: Final = 30.0
# A closed connection still sending what it holds is reset after this long: a client that
# stops reading its last response does not keep the socket and its buffer.
DRAIN_SECONDS: Final = 30.0

_HANDSHAKE: Final = 0
_OPEN: Final = 1
_CLOSING: Final = 2  # close_notify sent; lingering until the client is done, or the timer
_CLOSED: Final = 3


class TlsStream:
    """One accepted TLS connection: the TCP protocol below, the app's transport above.

    Native (mypyc) class like the edge's protocols; uvloop calls its protocol methods by name.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        context: ssl.SSLContext,
        app_factory: Callable[[], EdgeProtocol],
        handshake_timeout: float,
    ) -> None:
        self.loop = loop
        self.handshake_timeout = handshake_timeout
        self.app_factory = app_factory
        self.app: Any = None  # the protocol above: `edge`, or a WebSocket tunnel's splice
        self.edge: EdgeProtocol | None = None  # the app while it is the one made here
        self.tcp: asyncio.Transport | None = None
        self.tcp_write: Callable[[bytes], object] = no_write
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = server_connection(context, self.incoming, self.outgoing)
        # The C methods of the BIOs and of the TLS connection, looked up once: compiled code
        # would otherwise look each up by name on every call.
        self.bio_write: Callable[[bytes], int] = self.incoming.write
        self.bio_read: Callable[[], bytes] = self.outgoing.read
        self.ssl_read: Callable[[int], bytes] = self.sslobj.read
        self.ssl_write: Callable[[bytes], int] = self.sslobj.write
        self.ssl_pending: Callable[[], int] = self.sslobj.pending
        self.state = _HANDSHAKE
        self.timer: asyncio.TimerHandle | None = None
        self.reading_paused = False
        self.peer_closed = False  # the client's close_notify arrived
        self.last_read = 0.0  # while lingering
        self.linger_until = 0.0

    # -- the TCP transport's protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tcp = tcp = cast(asyncio.Transport, transport)  # uvloop's TCPTransport
        self.tcp_write = tcp.write
        self.timer = self.loop.call_later(self.handshake_timeout, self._on_timer)

    def data_received(self, data: bytes) -> None:
        if self.peer_closed:
            return  # after the client's close_notify nothing is read, nor kept
        self.bio_write(data)
        if self.state == _OPEN:
            self._read()
        elif self.state == _HANDSHAKE:
            self._handshake()
        elif self.state == _CLOSING:
            self.last_read = self.loop.time()
            self._discard()

    def eof_received(self) -> bool | None:
        if self.peer_closed and self.state == _OPEN:
            return True  # close_notify, then FIN: a clean half-close; the app closes when done
        # A TCP FIN without close_notify: the stream may be truncated. Like the event loop's
        # TLS layer, treat it as a broken connection, not as the client's end of requests.
        self._close_tcp()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        app, self.app = self.app, None
        self.edge = None
        self.tcp_write = no_write
        if app is not None:
            app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.app.resume_writing()

    # -- TLS ----------------------------------------------------------------------------------

    def _handshake(self) -> None:
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ValueError):
            # No certificate for the name, no shared version or cipher, a bad record.
            self._fail()
            return
        self._flush()  # the server's last flight, or TLS 1.3's session tickets
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.state = _OPEN
        app = self.app_factory()
        self.app = self.edge = app
        app.connection_made(cast(asyncio.Transport, self))
        if self.state == _OPEN and (self.incoming.pending or self.ssl_pending()):
            self._read()  # the first request often rides with the client's Finished

    def _read(self) -> None:
        """Decrypt what has arrived and hand it to the app in one call."""
        incoming = self.incoming
        read = self.ssl_read
        data = b""
        peer_done = False
        try:
            # (Called with bytes just written to `incoming`, or to try: no test before the
            # first read. Nothing to read raises SSLWantReadError.)
            while True:
                chunk = read(READ_SIZE)
                if not chunk:
                    peer_done = True
                    break
                data = data + chunk if data else chunk
                if not (incoming.pending or self.ssl_pending()):
                    break
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            peer_done = True
        except ssl.SSLError:
            self._fail()
            return
        # What OpenSSL wrote while reading (a key update's answer, say) goes out at once.
        # Holding it for the app's next write saved nothing measurable per new connection and
        # cost WebSocket echo a quarter of its rate (bench/edge.py, 64 B messages).
        if self.outgoing.pending:
            self._flush()
        if data:
            edge = self.edge
            if edge is not None:
                edge.data_received(data)
            elif self.app is not None:
                self.app.data_received(data)
        if peer_done and not self.peer_closed:
            # The client's close_notify: it sends nothing more, and whatever it sends anyway is
            # not read (OpenSSL would leave it all in the incoming buffer). The app may still
            # answer what it asked (eof_received returns True), then closes.
            self.peer_closed = True
            if self.tcp is not None:
                self.tcp.pause_reading()
            if self.state == _OPEN and (self.app is None or not self.app.eof_received()):
                self.close(linger=False)

    def _discard(self) -> None:
        try:
            while True:
                if not self.ssl_read(READ_SIZE):
                    break
        except ssl.SSLWantReadError:
            return
        except ssl.SSLError:
            pass
        self._close_tcp()  # the client's close_notify, or garbage: either way, done

    def _flush(self) -> None:
        if self.outgoing.pending:
            self.tcp_write(self.bio_read())

    def _fail(self) -> None:
        self._flush()  # OpenSSL's alert, if it wrote one
        self._close_tcp()

    def _close_tcp(self) -> None:
        if self.state == _CLOSED:
            return
        self.state = _CLOSED
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        tcp = self.tcp
        if tcp is not None:
            holding = tcp.get_write_buffer_size()
            tcp.close()  # sends what it holds first
            if holding:
                self.timer = self.loop.call_later(DRAIN_SECONDS, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        tcp = self.tcp
        if tcp is None:
            return
        if self.state == _CLOSING:
            now = self.loop.time()
            until = min(self.last_read + LINGER_SECONDS, self.linger_until)
            if now < until:  # the client sent something meanwhile
                self.timer = self.loop.call_later(until - now, self._on_timer)
            else:
                self._close_tcp()
            return
        # A handshake that did not finish in time, or a close whose client stopped reading.
        self.state = _CLOSED
        tcp.abort()

    # -- the app's transport ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._encrypt(data):
            self.tcp_write(self.bio_read())

    def write_last(self, data: bytes) -> None:
        """Write `data`, then close_notify, in one write, and close without lingering: for a
        last response when the client cannot be sending anything more."""
        if data and not self._encrypt(data):
            return  # closed already
        self.close(linger=False)

    def _encrypt(self, data: bytes) -> bool:
        """Turn `data` into records in the outgoing buffer; False if there was nothing to
        encrypt, or the connection is not open (any longer)."""
        if self.state != _OPEN or not data:
            return False
        try:
            self.ssl_write(data)
        except ssl.SSLError:
            self._fail()
            return False
        return True

    def close(self, linger: bool = True) -> None:
        """Send close_notify and close. With `linger`, keep reading (and discarding) until
        the client closes too or has been quiet for `LINGER_SECONDS` (`LINGER_TOTAL_SECONDS`
        at most); without, or once the client's close_notify is in, close the socket at once
        (after what is buffered): for when the client cannot be sending anything more."""
        if self.state != _OPEN:
            return
        # close_notify; shutdown() then complains that the client's is not here yet.
        # (Not contextlib.suppress: its __exit__ is interpreted Python, once per connection.)
        try:  # noqa: SIM105
            self.sslobj.shutdown()
        except (ssl.SSLError, ValueError):
            pass
        self._flush()
        if not linger or self.peer_closed:
            self._close_tcp()
            return
        self.state = _CLOSING
        now = self.loop.time()
        self.last_read = now
        self.linger_until = now + LINGER_TOTAL_SECONDS
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(LINGER_SECONDS, self._on_timer)
        if self.reading_paused and self.tcp is not None:
            self.tcp.resume_reading()

    def abort(self) -> None:
        self.state = _CLOSED
        if self.tcp is not None:
            self.tcp.abort()

    def is_closing(self) -> bool:
        return self.state != _OPEN

    def pause_reading(self) -> None:
        if not self.reading_paused and self.tcp is not None:
            self.reading_paused = True
            self.tcp.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.tcp is not None:
            self.reading_paused = False
            if self.peer_closed:
                return  # stays paused: see `_read`
            self.tcp.resume_reading()
            if self.state == _OPEN and (self.incoming.pending or self.ssl_pending()):
                # Records that arrived with the read that paused the app: TCP will not
                # bring them again.
                self.loop.call_soon(self._read_if_open)

    def _read_if_open(self) -> None:
        if self.state == _OPEN and not self.reading_paused:
            self._read()

    def set_protocol(self, protocol: Any) -> None:
        self.app = protocol
        if protocol is not self.edge:
            self.edge = None

    def get_protocol(self) -> Any:
        return self.app

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self.tcp is not None:
            self.tcp.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self.tcp.get_write_buffer_size() if self.tcp is not None else 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """`ssl_object` is the TLS connection (see `tls.server_connection`); the rest is the
        TCP transport's."""
        if name == "ssl_object":
            return self.sslobj
        if self.tcp is None:
            return default
        return self.tcp.get_extra_info(name, default)


def no_write(data: bytes) -> None:
    """A transport's bound `write` before the connection is made and after it is lost
    (`TlsStream.tcp_write`, `UpstreamConnection.write`): no bound method of a closed
    transport is kept, so no reference cycle either."""
