"""One edge worker process: its own listeners (SO_REUSEPORT), event loop, pool and table.

The worker follows the store: when the revision moves it compiles a new route table and
certificate set off the event loop, then swaps them in with one assignment. Counters are
plain integers on the hot path and are published to a small JSON file once a second for the
metrics endpoint; access-log lines are buffered and appended in batches.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from aerodrome.edge.proxy import EdgeProtocol
from aerodrome.edge.routes import NO_APP_LOG, EdgeConfig, RouteTable
from aerodrome.edge.tls import TlsManager
from aerodrome.edge.tlsstream import TlsStream
from aerodrome.edge.upstream import UpstreamPool
from aerodrome.ids import new_id

if TYPE_CHECKING:
    from aerodrome.edge.proxy import Exchange
    from aerodrome.edge.routes import Route

_JSON_BOOL: Final = {True: b"true", False: b"false"}
_THOUSANDTHS: Final = tuple(b"%03d" % n for n in range(1000))  # (%03d takes a slow path)
_monotonic: Final = time.monotonic  # (a C static in the compiled module: no look-up per call)
_PLAIN_PATH: Final = re.compile(rb"[\x20\x21\x23-\x5b\x5d-\x7e]*")  # printable ASCII, no " or \
ACCESS_LOG_BUFFER: Final = 64 * 1024
# (Typed as a tuple of any length: compiled code then loops over it by index, no iterator.)
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# What a worker needs from the store each revision: (table, certificates, tls-alpn challenges).
Snapshot = tuple[RouteTable, Mapping[str, tuple[bytes, bytes]], Mapping[str, tuple[bytes, bytes]]]


@dataclass
class Metrics:
    open_connections: int = 0
    tls_handshakes: int = 0
    websockets_open: int = 0
    websockets_total: int = 0
    edge_errors: int = 0
    # Keyed by the app's name as bytes (`Route.app_label`), as the request path has it.
    requests: dict[bytes, dict[int, int]] = field(default_factory=dict)  # app -> status -> n
    latency: dict[bytes, list[float]] = field(default_factory=dict)  # app -> [bucket counts, sum]
    # The last app observed and its two entries: a connection's requests usually go to one.
    _app: bytes | None = None
    _counts: dict[int, int] = field(default_factory=dict)
    _buckets: list[float] = field(default_factory=list)

    def observe(self, app: bytes, status: int, seconds: float) -> None:
        if app is not self._app:
            self._select(app)
        counts = self._counts
        counts[status] = counts.get(status, 0) + 1
        buckets = self._buckets
        index = 0  # the first bucket holding `seconds` (most requests stop at the first)
        for bound in LATENCY_BUCKETS:
            if seconds <= bound:
                break
            index += 1
        buckets[index] += 1
        buckets[-1] += seconds

    def _select(self, app: bytes) -> None:
        counts = self.requests.get(app)
        if counts is None:
            counts = self.requests[app] = {}
            self.latency[app] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        self._app = app
        self._counts = counts
        self._buckets = self.latency[app]

    def to_json(self) -> dict[str, Any]:
        return {
            "open_connections": self.open_connections,
            "tls_handshakes": self.tls_handshakes,
            "websockets_open": self.websockets_open,
            "websockets_total": self.websockets_total,
            "edge_errors": self.edge_errors,
            "requests": [
                [app.decode(), status, n]
                for app, counts in self.requests.items()
                for status, n in counts.items()
            ],
            "latency": {app.decode(): buckets for app, buckets in self.latency.items()},
        }


class AccessLog:
    """JSON lines, appended in batches; paths without query strings, never a credential.

    Lines go into one buffer, written out whenever it holds `ACCESS_LOG_BUFFER` bytes and once
    a second (nginx's `buffer=64k flush=1s`). Holding a whole second's lines instead (megabytes
    at tens of thousands of requests per second, written at once) stalled the worker for
    milliseconds and pushed the request path's memory out of the CPU's caches. The file is
    reopened after each timed flush, so a rotated log is followed within a second."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.buffer = bytearray()
        self._fd = -1
        self._failing = False

    def add(self, line: bytes) -> None:
        if self.path is not None:
            self.buffer += line
            if len(self.buffer) >= ACCESS_LOG_BUFFER:
                self._write()

    def flush(self) -> None:
        """Write what is buffered and let go of the file (the next write opens it again)."""
        self._write()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _write(self) -> None:
        if not self.buffer or self.path is None:
            return
        buffer, done = self.buffer, 0
        try:
            if self._fd < 0:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            while done < len(buffer):  # a regular file takes it all at once; a full disk may not
                done += os.write(self._fd, buffer[done:] if done else buffer)
            self._failing = False
        except OSError as exc:  # a full disk must not take the requests down with it
            if not self._failing:  # said once, until a write succeeds again
                print(f"edge: access log lines dropped: {exc.strerror}", flush=True)
            self._failing = True
        finally:
            del buffer[:]


def log_path(url: bytes) -> bytes:
    """A request target as the access log shows it: its path alone, as the inside of a JSON
    string.

    The query string is dropped (it may carry credentials); so is an absolute-form target's
    scheme://user:password@host. Only the path can hold arbitrary text, so only it goes
    through the JSON encoder, and only when it holds more than printable ASCII."""
    end = url.find(b"?")
    raw_path = url if end < 0 else url[:end]
    if not raw_path.startswith(b"/"):
        raw_path = b"/" + raw_path.partition(b"://")[2].partition(b"/")[2]
    if _PLAIN_PATH.fullmatch(raw_path):
        return raw_path
    return json.dumps(raw_path.decode("latin-1"))[1:-1].encode()


class Worker:
    def __init__(
        self,
        config: EdgeConfig,
        loop: asyncio.AbstractEventLoop,
        load: Callable[[], Snapshot],
        revision: Callable[[], int],
        *,
        access_log: Path | None = None,
        stats_file: Path | None = None,
        poll_interval: float = 0.5,
        ticket_seed: bytes | None = None,
    ) -> None:
        self.config = config
        self.loop = loop
        self.region = config.region.encode()
        self.tls = TlsManager(config.default_hostname, ticket_seed)
        self.pool = UpstreamPool(loop)
        self.metrics = Metrics()
        self.access_log = AccessLog(access_log)
        self.stats_file = stats_file
        self._load = load
        self._revision = revision
        self._poll_interval = poll_interval
        self.table = RouteTable(-1, {})
        self.servers: list[asyncio.base_events.Server] = []
        # Request ids: a random per-worker prefix and a counter from 2**40, so that its hex
        # digits are always eleven without a padded format (%010x takes a slow path).
        self._requests = 1 << 40
        self._rid_prefix = b"req_" + new_id("req")[4:18].encode()
        self._stamp_second = 0
        self._stamp = b""
        # The last request target and its log form: a client's requests often repeat one.
        self._url = b""
        self._path = b"/"
        # Wall-clock seconds from the monotonic clock the request times already use: one
        # clock read per request. Re-read each second, so a clock step shows within one.
        self._wall_offset = time.time() - time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []

    def request_id(self) -> bytes:
        """Unique per platform: a random per-worker prefix and a counter (cheap per request).
        Bytes, as it is sent: it goes into headers, and into the log as ASCII."""
        self._requests += 1
        return b"%b%x" % (self._rid_prefix, self._requests)

    def record(self, ex: Exchange, route: Route | None, tail: bytes) -> float:
        """Count the finished exchange and log it; `tail` is the end of its log line, the
        connection's own (`log_tail`). Returns the monotonic clock's reading it used."""
        now = _monotonic()
        elapsed = now - ex.started
        self.metrics.observe(route.app_label if route else b"-", ex.status, elapsed)
        if self.access_log.path is None:
            return now
        second = int(now + self._wall_offset)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = (
                b'{"time": "%b", "request_id": "'
                % time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second)).encode()
            )
        url = ex.url
        if url != self._url:
            self._url = url
            self._path = log_path(url)
        micros = int(elapsed * 1_000_000)  # milliseconds written from an int: cheaper than %f
        # The method is one llhttp accepted (letters only); the rest is the edge's own.
        self.access_log.add(
            b'%b%b%b%b", "path": "%b", "status": %d, "bytes": %d, "ms": %d.%b%b'
            % (
                self._stamp,
                ex.request_id,
                route.log_app if route else NO_APP_LOG,
                ex.method,
                self._path,
                ex.status,
                ex.out_bytes,
                micros // 1000,
                _THOUSANDTHS[micros % 1000],
                tail,
            )
        )
        return now

    @staticmethod
    def log_tail(client_ip: bytes, tls: bool, websocket: bool) -> bytes:
        """The end of an access-log line, the same for every request on one connection."""
        return b', "client_ip": "%b", "tls": %b, "websocket": %b}\n' % (
            client_ip,
            _JSON_BOOL[tls],
            _JSON_BOOL[websocket],
        )

    def apply(self, snapshot: Snapshot) -> None:
        table, certificates, challenges = snapshot
        self.tls.update(certificates, challenges)
        self.table = table  # one assignment: requests after this line see the new table

    async def refresh(self) -> None:
        snapshot = await self.loop.run_in_executor(None, self._load)
        self.apply(snapshot)

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                revision = await self.loop.run_in_executor(None, self._revision)
                if revision != self.table.revision:
                    await self.refresh()
            except Exception as exc:  # the store is away: keep serving the last table
                print(f"edge: could not refresh routes: {type(exc).__name__}", flush=True)

    async def _publish(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._wall_offset = time.time() - time.monotonic()
            self.access_log.flush()
            self.tls.rotate_tickets()
            if self.stats_file is not None:
                tmp = self.stats_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.metrics.to_json()))
                tmp.replace(self.stats_file)

    async def start(self, host: str = "0.0.0.0") -> None:  # noqa: S104 - the edge listens
        await self.refresh()
        for port, tls in ((self.config.https_port, True), (self.config.http_port, False)):
            if not port:
                continue
            # TLS is the edge's own layer over plain TCP (see `tlsstream`), not the loop's.
            factory = self._tls_connection if tls else self._plain_connection
            server = await self.loop.create_server(
                cast(Callable[[], asyncio.Protocol], factory),
                sock=listening_socket(host, port),
                backlog=4096,
            )
            self.servers.append(server)
        self._tasks = [
            self.loop.create_task(self._follow()),
            self.loop.create_task(self._publish()),
        ]

    def _tls_connection(self) -> TlsStream:
        # A handshake has the time a request's headers have (nginx's `client_header_timeout`).
        return TlsStream(self.loop, self.tls.default, self._https_app, self.config.header_timeout)

    def _https_app(self) -> EdgeProtocol:
        return EdgeProtocol(self, True)

    def _plain_connection(self) -> EdgeProtocol:
        return EdgeProtocol(self, False)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for server in self.servers:
            server.close()
        self.pool.close_all()
        self.access_log.flush()


def listening_socket(host: str, port: int) -> socket.socket:
    """Every worker binds the same port; the kernel spreads new connections among them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock
