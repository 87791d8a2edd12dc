"""In-process edge for tests: a worker, a test CA, an upstream app, all on one event loop in
a background thread, on loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import uvloop
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aerodrome.edge.routes import EdgeConfig, Route, RouteTable, build_route
from aerodrome.edge.worker import Snapshot, Worker
from aerodrome.platform.http_service import HttpService
from aerodrome.runtime.agent import free_port


class TestCA:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aerodrome test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, hostname: str) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    def client_context(self, tmp: Path) -> ssl.SSLContext:
        path = tmp / "ca.pem"
        path.write_bytes(self.pem)
        return ssl.create_default_context(cafile=str(path))


class EchoApp(asyncio.Protocol):
    """A tiny upstream: answers every request with JSON describing what it received."""

    in_flight = 0  # `/sleep/N` requests being answered, across connections
    peak = 0
    connections = 0  # accepted so far: each connection's number is in its answers

    def _woken(self) -> None:
        EchoApp.in_flight -= 1
        body = json.dumps({"peak": EchoApp.peak}).encode()
        self.transport.write(  # type: ignore[attr-defined]
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
            % (len(body), body)
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        EchoApp.connections += 1
        self.connection = EchoApp.connections
        self.transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.headers: list[list[str]] = []
        self.url = b""
        self.body = b""

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()  # type: ignore[attr-defined]

    def on_message_begin(self) -> None:
        self.headers, self.url, self.body = [], b"", b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append([name.decode().lower(), value.decode()])

    def on_headers_complete(self) -> None:
        if self.url == b"/early":  # answers at once, without reading the body first
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly"
            )

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        path = self.url.decode()
        if path == "/early":
            return  # answered already
        if path.startswith("/status/"):
            status = int(path.split("/")[2])
            self.transport.write(  # type: ignore[attr-defined]
                f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode()
            )
            return
        if path == "/hang":
            return  # never answers: the edge's upstream timeout must
        if path == "/continue":  # an interim response first, in the same write
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal"
            )
            return
        if path == "/continue-http10":  # an HTTP/1.1 interim response, then an HTTP/1.0 answer
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 5\r\n\r\nfinal"
            )
            return
        if path.startswith("/sleep/"):  # answers after N ms, saying how many were in flight
            EchoApp.in_flight += 1
            EchoApp.peak = max(EchoApp.peak, EchoApp.in_flight)
            asyncio.get_running_loop().call_later(int(path.split("/")[2]) / 1000, self._woken)
            return
        if path == "/hop-headers":  # hop-by-hop headers, spelled three ways, and one to keep
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKEEP-ALIVE: timeout=5\r\n"
                b"proxy-connection: keep-alive\r\nX-Kept: yes\r\nTransfer-ENCODING: chunked\r\n"
                b"\r\n5\r\nhello\r\n0\r\n\r\n"
            )
            return
        if path in SPLIT_HEADS:  # a head in pieces, each its own write, 20 ms apart
            loop = asyncio.get_running_loop()
            for i, piece in enumerate(SPLIT_HEADS[path]):
                loop.call_later(0.02 * i, self.transport.write, piece)  # type: ignore[attr-defined]
            return
        if path == "/chunked":
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            return
        body = json.dumps(
            {
                "method": self.parser.get_method().decode(),
                "path": path,
                "headers": self.headers,
                "body": self.body.decode("latin-1"),
                "connection": self.connection,
            }
        ).encode()
        self.transport.write(  # type: ignore[attr-defined]
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
            % (len(body), body)
        )


# Response heads that reach the edge in several reads: cut inside a name, inside a hop-by-hop
# line, before the blank line; and an interim response whose final head follows in the next.
SPLIT_HEADS = {
    "/split-head": (
        b"HTTP/1.1 200 OK\r\nX-Fir",
        b"st: one\r\nConnection: keep-alive\r\nX-Sec",
        b"ond: two\r\nKeep-Al",
        b"ive: timeout=5\r\nContent-Length: 4\r\n",
        b"\r\ndone",
    ),
    "/split-continue": (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Af",
        b"ter: yes\r\nContent-Length: 5\r\n\r\nfinal",
    ),
}


@dataclass
class EdgeHarness:
    loop: asyncio.AbstractEventLoop
    worker: Worker
    config: EdgeConfig
    ca: TestCA
    upstream: tuple[str, int]
    ws_upstream: tuple[str, int]
    snapshot: dict[str, Any] = field(default_factory=dict)

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def set_routes(self, routes: dict[str, Route], http01: dict[str, bytes] | None = None) -> None:
        revision = self.worker.table.revision + 1
        certs = {host: self.ca.issue(host) for host in routes}
        self.snapshot["value"] = (RouteTable(revision, routes, http01 or {}), certs, {})
        self.run(self.worker.refresh())

    def route(
        self,
        app: str,
        service: HttpService | None = None,
        upstreams: tuple[tuple[str, int], ...] | None = None,
    ) -> Route:
        hostname = f"{app}.{self.config.domain}"
        return build_route(
            self.config,
            hostname,
            app,
            f"app_{app}",
            self.upstream if upstreams is None else upstreams,
            service or HttpService(),
        )


def start_edge(tmp: Path, **config: Any) -> tuple[EdgeHarness, Callable[[], None]]:
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    ca = TestCA()
    edge_config = EdgeConfig(
        domain="test.internal", https_port=free_port(), http_port=free_port(), **config
    )
    snapshot: dict[str, Any] = {"value": (RouteTable(0, {}), {}, {})}

    def load() -> Snapshot:
        return snapshot["value"]  # type: ignore[no-any-return]

    worker = Worker(
        edge_config,
        loop,
        load,
        lambda: snapshot["value"][0].revision,
        access_log=tmp / "access.log",
        stats_file=tmp / "stats.json",
        poll_interval=0.05,
    )
    upstream_port, ws_port = free_port(), free_port()

    async def boot() -> Any:
        server = await loop.create_server(EchoApp, "127.0.0.1", upstream_port)

        async def echo(ws: Any) -> None:
            await ws.send(
                json.dumps({"path": ws.request.path, "headers": dict(ws.request.headers)})
            )
            async for message in ws:
                await ws.send(message)

        ws_server = await websockets.serve(echo, "127.0.0.1", ws_port, max_size=2**22)
        await worker.start("127.0.0.1")
        return server, ws_server

    servers = asyncio.run_coroutine_threadsafe(boot(), loop).result(30)
    harness = EdgeHarness(
        loop,
        worker,
        edge_config,
        ca,
        (("127.0.0.1", upstream_port),),
        ("127.0.0.1", ws_port),
        snapshot,
    )

    def stop() -> None:
        async def shutdown() -> None:
            await worker.stop()
            servers[0].close()
            servers[1].close()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return harness, stop


@dataclass
class StaticEdge:
    https_port: int
    http_port: int
    client_context: ssl.SSLContext


@contextlib.contextmanager
def static_edge(
    tmp: Path, upstream: int, workers: int = 1, env: dict[str, str] | None = None
) -> Iterator[StaticEdge]:
    """`python -m aerodrome.edge --static` in a subprocess: web.test routed to `upstream`,
    its certificate from a fresh test CA."""
    from tests.cli.upstreams import wait_for_port  # it imports this module

    ca = TestCA()
    chain, key = ca.issue("web.test")
    (tmp / "chain.pem").write_bytes(chain)
    (tmp / "key.pem").write_bytes(key)
    routes = {
        "routes": {"web.test": {"upstreams": [f"127.0.0.1:{upstream}"]}},
        "certificates": {"web.test": {"chain": "chain.pem", "key": "key.pem"}},
    }
    (tmp / "routes.json").write_text(json.dumps(routes))
    https, http, metrics = free_port(), free_port(), free_port()
    argv = [sys.executable, "-m", "aerodrome.edge", "--static", str(tmp / "routes.json")]
    argv += ["--host", "127.0.0.1", "--https-port", str(https), "--http-port", str(http)]
    argv += ["--metrics-port", str(metrics), "--run-dir", str(tmp / "run")]
    argv += ["--workers", str(workers)]
    edge = subprocess.Popen(argv, env={**os.environ, **(env or {})}, cwd=tmp)
    try:
        wait_for_port(https)
        wait_for_port(http)
        # Every worker listening, not just the first: each publishes its counters once it
        # serves (until then the kernel gives all connections to the others).
        deadline = time.monotonic() + 30
        while len(list((tmp / "run").glob("worker-*.json"))) < workers:
            assert edge.poll() is None and time.monotonic() < deadline, "edge workers not up"
            time.sleep(0.05)
        yield StaticEdge(https, http, ca.client_context(tmp))
    finally:
        edge.terminate()
        edge.wait(10)
