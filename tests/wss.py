"""A WebSocket client over TLS for tests, safe with TLS 1.3.

websockets' sync client reads in a thread of its own while the caller writes, and over `wss://`
both go through one `ssl.SSLSocket`: two threads in one OpenSSL connection, which OpenSSL does
not allow. It shows with TLS 1.3. The server's session tickets arrive just after the handshake,
and when the reading thread handles them while the caller's thread writes the upgrade request,
the request can be lost: the server never sees it and, after its header timeout, answers 408 (or
the client gives up waiting). With websockets' own asyncio server and no aerodrome code, 4 of
2,000 handshakes stalled so with both cores busy; none over TLS 1.2, which sends no tickets
after the handshake.

Here the TLS is done by `SerializedTls`: every call into the TLS connection holds one lock, and
none waits on the network while holding it (the socket is non-blocking; waits are `select`s).
websockets is handed the already-encrypted stream as if it were a plain socket, so it is given
a `ws://` URL: the connection is `wss://` all the same.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from typing import Any, cast

import websockets.sync.client as ws_client
from websockets.typing import Origin

WAIT = 0.1  # a wait's slice: a closed socket is noticed within this


class SerializedTls:
    """The calls websockets' sync connection makes on its socket, over one TLS connection,
    one thread at a time."""

    def __init__(self, tls: ssl.SSLSocket) -> None:
        tls.setblocking(False)
        self.tls = tls
        self.lock = threading.Lock()
        self.timeout: float | None = None  # for sends, as websockets sets it when closing

    @property
    def family(self) -> int:
        return self.tls.family

    def fileno(self) -> int:
        return self.tls.fileno()

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.tls.setsockopt(level, option, value)

    def getsockname(self) -> Any:
        return self.tls.getsockname()

    def getpeername(self) -> Any:
        return self.tls.getpeername()

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def recv(self, size: int) -> bytes:
        while True:
            with self.lock:
                try:
                    return self.tls.recv(size)
                except ssl.SSLWantReadError:
                    pass  # a partial record, or only session tickets: wait for more
            select.select([self.tls], [], [], WAIT)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while view:
            # (Not sent: retried with the same bytes, as OpenSSL requires.)
            with self.lock, contextlib.suppress(ssl.SSLWantWriteError, ssl.SSLWantReadError):
                view = view[self.tls.send(view) :]
            if view:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError("the server stopped reading")
                select.select([], [self.tls], [], WAIT)

    def shutdown(self, how: int) -> None:
        with self.lock:
            self.tls.shutdown(how)

    def close(self) -> None:
        with self.lock:
            self.tls.close()


def connect(
    host: str,
    port: int,
    path: str,
    *,
    context: ssl.SSLContext,
    origin: str | None,
    timeout: float = 10.0,
    **kwargs: Any,
) -> ws_client.ClientConnection:
    """A WebSocket to `wss://host:port/path`, reached at 127.0.0.1 (names under `.localhost`
    do not resolve here) with SNI `host`, trusting `context`."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        tls = context.wrap_socket(raw, server_hostname=host)  # the handshake, within `timeout`
    except BaseException:
        raw.close()
        raise
    connection: ws_client.ClientConnection = ws_client.connect(
        f"ws://{host}:{port}{path}",  # TLS is on already: see the module's docstring
        sock=cast(socket.socket, SerializedTls(tls)),
        origin=None if origin is None else Origin(origin),
        open_timeout=timeout,
        **kwargs,
    )
    return connection
