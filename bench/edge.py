# ruff: noqa: E402  (the import-path fix below must run before the imports)
"""Benchmark: the aerodrome edge against nginx as a TLS-terminating reverse proxy, in one run.

    .venv/bin/python bench/edge.py [--quick] [--json] [--workers N] [--write-readme]
                                   [--nginx-ws-buffer SIZE|default] [--keep]

Everything runs on loopback, in one invocation, with bounded durations (about 6 minutes,
`--quick` about 1 minute):

  setup      a throwaway ECDSA P-256 CA and leaf certificates for web.bench.test and
             ws.bench.test; two upstreams shared by both proxies (an nginx instance answering
             `return 200 "hello\\n"` with keep-alive, and a uvloop + `websockets` echo server in
             its own process); nginx configured like the edge (same certificates, TLS 1.2/1.3
             with the edge's TLS 1.2 suites, shared session cache and tickets, keep-alive
             upstream pool, forwarded headers, HSTS, CORS for the allowed origin, WebSocket
             Origin check and proxying, access log, one worker per edge worker); the edge
             (`python -m aerodrome.edge --static ...`) with the same routes and policies.
  sanity     both proxies must answer the same way: 200 + HSTS + CORS for the allowed origin,
             no CORS for another, 301 on plain HTTP, 101 for a WebSocket with the app's own
             Origin, 403 for another Origin, and 200 for the exact request s_time sends.
  1 http     `wrk -t1 -c50 -d10s --latency` with Host and Origin headers: keep-alive
             requests/s and p50/p99 latency; also through a bare uvloop TLS relay (the edge's
             TLS context, bytes relayed to the upstream unparsed), the floor for Python.
  2 tls      `openssl s_time -new` and `-reuse` (8 s each): one HTTP request per new TLS
             connection, without and with session resumption.
  3 ws       WebSocket echo messages/s for 64 B and 16 KiB messages: 2 client processes
             (uvloop + `websockets`), 4 connections each, each connection keeping a window of
             messages in flight.
  4 memory   5,000 idle WebSockets held open through the proxy by 4 client processes; the
             sum of PSS (`/proc/PID/smaps_rollup`; RSS from `/proc/PID/status` as a second
             figure) over the proxy's master and workers, after minus before, per WebSocket.

Rounds alternate the order of the two proxies and the report gives medians. Every process the
script starts is stopped on exit, error or Ctrl-C (process groups; nginx by its pid file).
"""

from __future__ import annotations

import sys

# `bench/` holds a file named like the standard library's `secrets` (which `websockets`
# imports): keep this folder off the import path.
sys.path[:] = [p for p in sys.path if p not in ("", __file__.rsplit("/", 1)[0])]

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import platform
import random
import re
import resource
import select
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

from aerodrome.edge.native import compiled_dir
from aerodrome.edge.tls import TLS12_CIPHERS

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
README = SCRIPT.parent / "README.md"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

WEB_HOST = "web.bench.test"
WS_HOST = "ws.bench.test"
CLIENT_ORIGIN = "https://client.example"
BAD_ORIGIN = "https://evil.example"
HSTS = "max-age=31536000"
PROXIES = ("edge", "nginx")
REFERENCE = "relay"  # scenario 1 only: a bare uvloop TLS relay (see `tls_relay`)
NAMES = {"edge": "aerodrome edge", "nginx": "nginx"}
WS_SIZES = (64, 16 * 1024)
WS_WINDOW = {64: 16, 16 * 1024: 4}
CLK_TCK = os.sysconf("SC_CLK_TCK")
SECTION_BEGIN = "<!-- edge:begin -->"
SECTION_END = "<!-- edge:end -->"


@dataclass(frozen=True)
class Plan:
    wrk_seconds: int
    wrk_warmup: int
    wrk_rounds: int
    stime_seconds: int
    stime_rounds: int
    ws_seconds: float
    ws_warmup: float
    ws_rounds: int
    ws_clients: int
    ws_connections: int  # per client process
    idle_websockets: int
    holders: int  # client processes holding the idle WebSockets

    def estimate(self) -> float:
        wrk = 3 * (self.wrk_warmup + self.wrk_rounds * (self.wrk_seconds + 0.3))  # + the relay
        stime = 2 * 2 * self.stime_rounds * (self.stime_seconds + 1.2)
        ws = 2 * len(WS_SIZES) * self.ws_rounds * (self.ws_seconds + self.ws_warmup + 1.0)
        idle = 2 * (5 + self.idle_websockets / 600)
        return 8 + wrk + stime + ws + idle


FULL = Plan(10, 2, 5, 8, 3, 4.0, 1.0, 4, 2, 4, 5000, 4)
QUICK = Plan(4, 1, 1, 3, 1, 2.0, 0.5, 1, 2, 4, 5000, 4)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- child processes: the WebSocket echo upstream and the WebSocket clients ----------------------


def child_main(role: str, spec: dict[str, Any]) -> None:
    import uvloop

    if role == "relay":  # one process per worker, like both proxies
        for _ in range(spec["workers"] - 1):
            if os.fork() == 0:
                break
    runners: dict[str, Callable[[dict[str, Any]], Any]] = {
        "ws-echo": ws_echo,
        "ws-load": ws_load,
        "ws-hold": ws_hold,
        "relay": tls_relay,
    }
    uvloop.run(runners[role](spec))


async def ws_echo(spec: dict[str, Any]) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        with contextlib.suppress(Exception):  # a client went away
            async for message in ws:
                await ws.send(message)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, os._exit, 0)  # no graceful close of 5,000 sockets
    async with serve(
        echo,
        "127.0.0.1",
        spec["port"],
        compression=None,
        max_size=None,
        ping_interval=None,
        backlog=4096,
    ):
        await asyncio.Event().wait()


async def tls_relay(spec: dict[str, Any]) -> None:
    """The reference for scenario 1: the edge's TLS context and certificate, and each client
    connection relayed byte for byte to its own upstream connection. No HTTP parsing, routing
    or policy: what uvloop's TLS and the sockets cost by themselves."""
    from aerodrome.edge.tls import hardened_context

    class DirectSSLObject(ssl.SSLObject):
        """uvloop's TLS layer calls `read`, `write` and `pending` for every record: these
        are the TLS connection's C methods instead of `SSLObject`'s Python wrappers (about
        0.3-0.7 µs per request and response), which keeps this reference at its fastest."""

        @property
        def read(self) -> Callable[..., Any]:
            return self._sslobj.read  # type: ignore[attr-defined, no-any-return]

        @property
        def write(self) -> Callable[..., Any]:
            return self._sslobj.write  # type: ignore[attr-defined, no-any-return]

        @property
        def pending(self) -> Callable[[], int]:
            return self._sslobj.pending  # type: ignore[attr-defined, no-any-return]

    ctx = hardened_context()
    ctx.sslobject_class = DirectSSLObject
    ctx.load_cert_chain(spec["chain"], spec["key"])
    loop = asyncio.get_running_loop()
    upstream = ("127.0.0.1", spec["upstream"])

    class Upstream(asyncio.Protocol):
        def __init__(self, client: asyncio.Transport) -> None:
            self.client = client

        def data_received(self, data: bytes) -> None:
            self.client.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self.client.close()

    class Client(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)
            self.upstream: asyncio.Transport | None = None
            self.pending: list[bytes] = []
            self.connecting = loop.create_task(self.connect())

        async def connect(self) -> None:
            try:
                self.upstream, _ = await loop.create_connection(
                    lambda: Upstream(self.transport), *upstream
                )
            except OSError:
                self.transport.close()
                return
            self.upstream.write(b"".join(self.pending))

        def data_received(self, data: bytes) -> None:
            if self.upstream is None:
                self.pending.append(data)
            else:
                self.upstream.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.upstream is not None:
                self.upstream.close()

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", spec["port"]))
    sock.listen(4096)
    await loop.create_server(Client, sock=sock, ssl=ctx, backlog=4096)
    await asyncio.Event().wait()


def _ws_connect(spec: dict[str, Any], ctx: ssl.SSLContext) -> Any:
    """A WebSocket to ws.bench.test through the proxy at 127.0.0.1:port, SNI and Host set."""
    from websockets.asyncio.client import connect

    port = spec["port"]
    return connect(
        f"wss://{WS_HOST}:{port}/",
        host="127.0.0.1",
        port=port,
        ssl=ctx,
        origin=spec["origin"],
        compression=None,
        max_size=None,
        ping_interval=None,
        proxy=None,
        open_timeout=60,
        close_timeout=1,
        user_agent_header=None,
    )


async def ws_load(spec: dict[str, Any]) -> None:
    """Echo traffic on several connections, each with `window` messages in flight; prints the
    messages received during the measured interval (after a warm-up)."""
    ctx = ssl.create_default_context(cafile=spec["ca"])
    size = spec["size"]
    payload = random.randbytes(size)
    conns = [await _ws_connect(spec, ctx) for _ in range(spec["connections"])]
    received = [0]

    async def pump(ws: Any) -> None:
        window = asyncio.Semaphore(spec["window"])

        async def sender() -> None:
            while True:
                await window.acquire()
                await ws.send(payload)

        task = asyncio.create_task(sender())
        try:
            while True:
                message = await ws.recv()
                if len(message) != size:
                    raise RuntimeError(f"echo of {len(message)} bytes, expected {size}")
                received[0] += 1
                window.release()
        finally:
            task.cancel()

    tasks = [asyncio.create_task(pump(ws)) for ws in conns]
    await asyncio.sleep(spec["warmup"])
    c0, t0 = received[0], time.perf_counter()
    await asyncio.sleep(spec["seconds"])
    c1, t1 = received[0], time.perf_counter()
    errors = [repr(t.exception()) for t in tasks if t.done() and t.exception() is not None]
    print(json.dumps({"messages": c1 - c0, "seconds": t1 - t0, "total": c1, "errors": errors}))
    sys.stdout.flush()
    os._exit(0)  # the proxy sees the connections reset; no close handshakes to wait for


async def ws_hold(spec: dict[str, Any]) -> None:
    """Open `count` WebSockets, report, then hold them idle until stdin closes."""
    ctx = ssl.create_default_context(cafile=spec["ca"])
    gate = asyncio.Semaphore(spec["concurrency"])
    conns: list[Any] = []
    failures: list[str] = []

    async def open_one() -> None:
        async with gate:
            for attempt in range(3):
                try:
                    conns.append(await _ws_connect(spec, ctx))
                    return
                except Exception as exc:  # retried, then counted
                    if attempt == 2:
                        failures.append(repr(exc))
                    await asyncio.sleep(0.2)

    await asyncio.gather(*(open_one() for _ in range(spec["count"])))
    print(json.dumps({"open": len(conns), "failed": len(failures), "errors": failures[:3]}))
    sys.stdout.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    os._exit(0)


# -- certificates ------------------------------------------------------------------------------


def make_certificates(directory: Path) -> dict[str, Path]:
    """A throwaway CA and one ECDSA P-256 leaf per hostname; chain files hold leaf + CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True)
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aerodrome bench CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    paths = {"ca": directory / "ca.pem"}
    paths["ca"].write_bytes(ca_pem)
    for hostname in (WEB_HOST, WS_HOST):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        chain, key_path = directory / f"{hostname}.chain.pem", directory / f"{hostname}.key.pem"
        chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        paths[f"{hostname}.chain"], paths[f"{hostname}.key"] = chain, key_path
    return paths


# -- /proc ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    ppid: int
    ticks: int  # utime + stime
    start: int
    comm: str
    state: str


def proc_stats() -> dict[int, ProcStat]:
    out: dict[int, ProcStat] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        out[int(entry)] = ProcStat(
            ppid=int(fields[1]),
            ticks=int(fields[11]) + int(fields[12]),
            start=int(fields[19]),
            comm=comm,
            state=fields[0],
        )
    return out


def descendants(roots: list[int], stats: dict[int, ProcStat] | None = None) -> list[int]:
    stats = proc_stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for pid, st in stats.items():
        children.setdefault(st.ppid, []).append(pid)
    out: list[int] = []
    todo = [r for r in roots if r in stats]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def cpu_ticks(pids: list[int]) -> int:
    stats = proc_stats()
    return sum(stats[p].ticks for p in pids if p in stats)


def memory_kib(pids: list[int]) -> tuple[int, int]:
    """(sum of PSS, sum of RSS) in KiB over `pids`."""
    pss = rss = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
    return pss, rss


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


# -- processes ---------------------------------------------------------------------------------


class Processes:
    """Everything this run starts, so that `close` can stop all of it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.popens: list[subprocess.Popen[bytes]] = []
        self.nginx_pidfiles: list[Path] = []
        self.nginx_pids: dict[Path, list[int]] = {}

    def spawn(
        self,
        argv: list[str],
        name: str,
        *,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = None,
    ) -> subprocess.Popen[bytes]:
        logfile = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            proc = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=logfile if stdout is None else stdout,
                stderr=logfile,
                cwd=ROOT,
                start_new_session=True,  # its own process group, for cleanup
            )
        finally:
            logfile.close()
        self.popens.append(proc)
        return proc

    def child(self, role: str, spec: dict[str, Any], name: str, **kw: Any) -> Any:
        argv = [sys.executable, str(SCRIPT), "--child", role, json.dumps(spec)]
        return self.spawn(argv, name, **kw)

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers in its group (edge workers)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def start_nginx(self, conf: Path, prefix: Path) -> int:
        """nginx daemonizes (its own session); it is found again through its pid file."""
        pidfile = prefix / "nginx.pid"
        self.nginx_pidfiles.append(pidfile)
        done = subprocess.run(
            [NGINX, "-e", str(prefix / "error.log"), "-c", str(conf), "-p", str(prefix)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise RuntimeError(f"nginx did not start: {done.stderr.strip()}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().strip())
                if alive(pid):
                    self.nginx_pids[pidfile] = [pid]
                    return pid
            time.sleep(0.05)
        raise RuntimeError(f"nginx wrote no pid file in {prefix}")

    def stop_nginx(self, pidfile: Path) -> None:
        pids = list(self.nginx_pids.get(pidfile, []))
        with contextlib.suppress(OSError, ValueError):
            pids.append(int(pidfile.read_text().strip()))
        tree = descendants(sorted(set(pids)))
        if not tree:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(tree[0], signal.SIGTERM)  # fast shutdown of the master and its workers
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(p) for p in tree):
            time.sleep(0.05)
        for pid in tree:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        for proc in reversed(self.popens):
            self.stop(proc)
        for pidfile in reversed(self.nginx_pidfiles):
            self.stop_nginx(pidfile)


def free_ports(count: int) -> list[int]:
    """Ports outside the ephemeral range (so no client connection takes one meanwhile)."""
    low, _high = (
        int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    )
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(ports) < count:
            port = random.randrange(max(1024, low - 12000), low)
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.05)


# -- configuration of the upstream nginx, the peer nginx and the edge ---------------------------


def nofile_limit() -> int:
    """What nginx may ask for: without CAP_SYS_RESOURCE it cannot go above the hard limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)


def _nginx_common(prefix: Path) -> tuple[str, str]:
    """The `user` line (root runs nginx's workers as root too, like the edge's) and the
    temporary paths, all under the run's directory."""
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return user, temp


def upstream_nginx_conf(prefix: Path, port: int) -> Path:
    user, temp = _nginx_common(prefix)
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile {min(16384, nofile_limit())};
events {{ worker_connections {min(8192, nofile_limit() - 64)}; }}
http {{
{temp}
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ default_type text/plain; return 200 "hello\\n"; }}
    }}
}}
"""
    )
    return conf


def peer_nginx_conf(
    prefix: Path,
    workers: int,
    https_port: int,
    http_port: int,
    web_upstream: int,
    ws_upstream: int,
    certs: dict[str, Path],
    ws_buffer: str | None = None,
) -> Path:
    user, temp = _nginx_common(prefix)
    # nginx's default proxy_buffer_size (one page) also sizes each WebSocket tunnel read.
    ws_buffer_line = (
        f"\n            proxy_buffer_size {ws_buffer};\n            proxy_buffers 4 {ws_buffer};"
        if ws_buffer
        else ""
    )
    web_own, ws_own = f"https://{WEB_HOST}:{https_port}", f"https://{WS_HOST}:{https_port}"
    forwarded = """
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header Forwarded "";
            proxy_set_header X-Real-IP "";
            proxy_set_header Aero-Client-IP $remote_addr;
            proxy_set_header Aero-Region local;
            proxy_set_header Aero-Request-Id $request_id;"""

    def policy(cors_origin: str, vary: str) -> str:
        return f"""
        add_header Strict-Transport-Security "{HSTS}" always;
        add_header Aero-Request-Id $request_id always;
        add_header Access-Control-Allow-Origin ${cors_origin} always;
        add_header Vary ${vary} always;"""

    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""{user}worker_processes {workers};
worker_rlimit_nofile {nofile_limit()};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {nofile_limit() - 64}; }}
http {{
{temp}
    log_format edge escape=json '{{"time": "$time_iso8601", "request_id": "$request_id", '
        '"app": "$host", "method": "$request_method", "path": "$uri", "status": $status, '
        '"bytes": $body_bytes_sent, "ms": $request_time, "client_ip": "$remote_addr", '
        '"tls": "$https", "websocket": "$http_upgrade"}}';
    access_log {prefix}/access.log edge buffer=64k flush=1s;
    server_tokens off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_header_timeout 10s;
    client_max_body_size 100m;
    large_client_header_buffers 4 16k;

    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers {TLS12_CIPHERS};
    ssl_prefer_server_ciphers on;
    ssl_ecdh_curve X25519:prime256v1:secp384r1;
    ssl_session_cache shared:SSL:20m;
    ssl_session_timeout 10m;
    ssl_session_tickets on;

    # CORS: echo an allowed Origin (the app's own or the configured one), as the edge does.
    map $http_origin $web_cors_origin {{
        default "";
        "{CLIENT_ORIGIN}" $http_origin;
        "{web_own}" $http_origin;
    }}
    map $http_origin $web_cors_vary {{
        default "";
        "{CLIENT_ORIGIN}" "Origin";
        "{web_own}" "Origin";
    }}
    map $http_origin $ws_cors_origin {{
        default "";
        "{CLIENT_ORIGIN}" $http_origin;
        "{ws_own}" $http_origin;
    }}
    map $http_origin $ws_cors_vary {{
        default "";
        "{CLIENT_ORIGIN}" "Origin";
        "{ws_own}" "Origin";
    }}
    # A WebSocket handshake must come from the app's own origin or a CORS origin.
    map $http_origin $ws_origin_bad {{
        default 1;
        "" 0;
        "{CLIENT_ORIGIN}" 0;
        "{ws_own}" 0;
    }}
    map "$http_upgrade:$ws_origin_bad" $ws_forbidden {{
        default 0;
        "~*^websocket:1$" 1;
    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        "" "";
    }}

    upstream web_upstream {{
        server 127.0.0.1:{web_upstream};
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}
    upstream ws_upstream {{
        server 127.0.0.1:{ws_upstream};
        keepalive 256;
    }}

    server {{  # force_https; /_status (not on any measured path) counts connections
        listen 127.0.0.1:{http_port} reuseport;
        server_name {WEB_HOST} {WS_HOST};
        location = /_status {{ stub_status; access_log off; }}
        location / {{ return 301 https://$host:{https_port}$request_uri; }}
    }}
    server {{
        listen 127.0.0.1:{https_port} ssl reuseport backlog=4096 default_server;
        server_name {WEB_HOST};
        ssl_certificate {certs[f"{WEB_HOST}.chain"]};
        ssl_certificate_key {certs[f"{WEB_HOST}.key"]};{policy("web_cors_origin", "web_cors_vary")}
        location / {{
            proxy_pass http://web_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";{forwarded}
            proxy_connect_timeout 10s;
            proxy_read_timeout 60s;
        }}
    }}
    server {{
        listen 127.0.0.1:{https_port} ssl;
        server_name {WS_HOST};
        ssl_certificate {certs[f"{WS_HOST}.chain"]};
        ssl_certificate_key {certs[f"{WS_HOST}.key"]};{policy("ws_cors_origin", "ws_cors_vary")}
        location / {{
            if ($ws_forbidden) {{ return 403; }}
            proxy_pass http://ws_upstream;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;{forwarded}
            proxy_connect_timeout 10s;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;{ws_buffer_line}
        }}
    }}
}}
"""
    )
    return conf


def edge_routes(tmp: Path, web_upstream: int, ws_upstream: int, certs: dict[str, Path]) -> Path:
    service = {
        "force_https": True,
        "cors": {"origins": [CLIENT_ORIGIN], "methods": ["GET", "HEAD", "POST"]},
    }
    data = {
        "routes": {
            WEB_HOST: {"upstreams": [f"127.0.0.1:{web_upstream}"], "http_service": service},
            WS_HOST: {"upstreams": [f"127.0.0.1:{ws_upstream}"], "http_service": service},
        },
        "certificates": {
            host: {
                "chain": str(certs[f"{host}.chain"].relative_to(tmp)),
                "key": str(certs[f"{host}.key"].relative_to(tmp)),
            }
            for host in (WEB_HOST, WS_HOST)
        },
    }
    path = tmp / "routes.json"
    path.write_text(json.dumps(data, indent=2))
    return path


# -- probes --------------------------------------------------------------------------------------


def tls_exchange(
    port: int, sni: str | None, request: bytes, ca: Path, *, head_only: bool = False
) -> tuple[int, dict[str, str], bytes]:
    ctx = ssl.create_default_context(cafile=str(ca))
    if sni is None:
        ctx.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", port), 10) as raw,
        ctx.wrap_socket(raw, server_hostname=sni) as sock,
    ):
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or not head_only:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return parse_response(data)


def plain_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), 10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return parse_response(data)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/"):
        return 0, {}, data
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def get_request(host: str, origin: str | None) -> bytes:
    extra = f"Origin: {origin}\r\n" if origin else ""
    return f"GET / HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode()


def ws_handshake(host: str, port: int, origin: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
    ).encode()


# s_time sends "GET <path> HTTP/1.0\r\n\r\n": the path carries an HTTP/1.1 request line's end,
# the Host and Origin headers, and a last header that swallows s_time's " HTTP/1.0".
STIME_PATH = (
    f"/ HTTP/1.1\r\nHost: {WEB_HOST}\r\nOrigin: {CLIENT_ORIGIN}\r\nConnection: close\r\nX-Pad:"
)


def sanity(proxy: str, https: int, http: int, ca: Path) -> list[str]:
    """What differs from the expected behaviour (empty when both proxies act alike)."""
    problems: list[str] = []
    status, headers, body = tls_exchange(https, WEB_HOST, get_request(WEB_HOST, CLIENT_ORIGIN), ca)
    if status != 200 or body != b"hello\n":
        problems.append(f"GET web: {status} {body[:80]!r}")
    if headers.get("strict-transport-security") != HSTS:
        problems.append(f"HSTS: {headers.get('strict-transport-security')!r}")
    if headers.get("access-control-allow-origin") != CLIENT_ORIGIN:
        problems.append(f"CORS allow-origin: {headers.get('access-control-allow-origin')!r}")
    if "origin" not in headers.get("vary", "").lower():
        problems.append(f"CORS vary: {headers.get('vary')!r}")
    status, headers, _ = tls_exchange(https, WEB_HOST, get_request(WEB_HOST, BAD_ORIGIN), ca)
    if status != 200 or "access-control-allow-origin" in headers:
        problems.append(f"other Origin: {status} {headers.get('access-control-allow-origin')!r}")
    status, headers, _ = plain_exchange(http, get_request(WEB_HOST, None))
    if status != 301 or not headers.get("location", "").startswith(f"https://{WEB_HOST}:"):
        problems.append(f"plain HTTP: {status} {headers.get('location')!r}")
    status, _, body = tls_exchange(https, None, f"GET {STIME_PATH} HTTP/1.0\r\n\r\n".encode(), ca)
    if status != 200 or body != b"hello\n":
        problems.append(f"s_time's request: {status} {body[:80]!r}")
    own = f"https://{WS_HOST}:{https}"
    status, _, _ = tls_exchange(
        https, WS_HOST, ws_handshake(WS_HOST, https, own), ca, head_only=True
    )
    if status != 101:
        problems.append(f"WebSocket, own Origin: {status}")
    bad = ws_handshake(WS_HOST, https, BAD_ORIGIN)
    status, _, _ = tls_exchange(https, WS_HOST, bad, ca, head_only=True)
    if status != 403:
        problems.append(f"WebSocket, other Origin: {status} (expected 403)")
    return [f"{proxy}: {p}" for p in problems]


# -- measurements --------------------------------------------------------------------------------

_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _latency_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(match[1]) * _MS[match[2]]


class Bench:
    def __init__(self, args: argparse.Namespace, plan: Plan, tmp: Path, procs: Processes) -> None:
        self.args = args
        self.plan = plan
        self.tmp = tmp
        self.procs = procs
        self.ports: dict[str, dict[str, int]] = {}
        self.roots: dict[str, int] = {}  # proxy -> master pid
        self.certs: dict[str, Path] = {}
        self.runs: dict[str, dict[str, list[Any]]] = {p: {} for p in PROXIES}
        self.notes: list[str] = []

    def tree(self, proxy: str) -> list[int]:
        return descendants([self.roots[proxy]])

    def add(self, proxy: str, metric: str, value: Any) -> None:
        self.runs[proxy].setdefault(metric, []).append(value)

    # setup

    def setup(self) -> None:
        tmp, procs, workers = self.tmp, self.procs, self.args.workers
        self.certs = certs = make_certificates(tmp / "certs")
        ports = free_ports(8)
        web_up, ws_up = ports[0], ports[1]
        self.ports = {
            "edge": {"https": ports[2], "http": ports[3], "metrics": ports[4]},
            "nginx": {"https": ports[5], "http": ports[6]},
        }
        up_dir = tmp / "upstream-nginx"
        (up_dir / "tmp").mkdir(parents=True)
        procs.start_nginx(upstream_nginx_conf(up_dir, web_up), up_dir)
        procs.child("ws-echo", {"port": ws_up}, "ws-echo")
        wait_port(web_up)
        wait_port(ws_up)

        peer_dir = tmp / "nginx"
        (peer_dir / "tmp").mkdir(parents=True)
        conf = peer_nginx_conf(
            peer_dir,
            workers,
            self.ports["nginx"]["https"],
            self.ports["nginx"]["http"],
            web_up,
            ws_up,
            certs,
            self.args.nginx_ws_buffer,
        )
        self.roots["nginx"] = procs.start_nginx(conf, peer_dir)

        relay = {"port": ports[7], "upstream": web_up, "workers": workers}
        relay |= {"chain": str(certs[f"{WEB_HOST}.chain"]), "key": str(certs[f"{WEB_HOST}.key"])}
        self.roots[REFERENCE] = procs.child("relay", relay, "relay").pid
        self.ports[REFERENCE] = {"https": ports[7]}
        self.runs[REFERENCE] = {}

        routes = edge_routes(tmp, web_up, ws_up, certs)
        run_dir = tmp / "edge-run"
        edge = self.ports["edge"]
        argv = [
            sys.executable,
            "-m",
            "aerodrome.edge",
            "--static",
            str(routes),
            "--host",
            "127.0.0.1",
            "--https-port",
            str(edge["https"]),
            "--http-port",
            str(edge["http"]),
            "--metrics-port",
            str(edge["metrics"]),
            "--run-dir",
            str(run_dir),
            "--workers",
            str(workers),
            "--default-hostname",
            WEB_HOST,
            "--access-log",
            str(tmp / "edge-access.log"),
        ]
        self.roots["edge"] = procs.spawn(argv, "edge").pid
        deadline = time.monotonic() + 30
        while len(list(run_dir.glob("worker-*.json"))) < workers:
            if time.monotonic() > deadline or not alive(self.roots["edge"]):
                raise RuntimeError(f"the edge did not start; see {tmp / 'edge.log'}")
            time.sleep(0.1)
        for proxy in (*PROXIES, REFERENCE):
            wait_port(self.ports[proxy]["https"])
        problems: list[str] = []
        for proxy in PROXIES:
            problems += sanity(
                proxy, self.ports[proxy]["https"], self.ports[proxy]["http"], self.ca
            )
        for problem in problems:
            log(f"sanity: {problem}")
        self.notes += [f"sanity check failed: {p}" for p in problems]
        if any("GET web" in p or "s_time" in p for p in problems):
            raise RuntimeError("a proxy does not serve the benchmark request; see above")
        log("sanity: both proxies answer alike" if not problems else "sanity: see above")

    @property
    def ca(self) -> Path:
        return self.certs["ca"]

    @staticmethod
    def order(round_index: int) -> tuple[str, ...]:
        return PROXIES if round_index % 2 == 0 else PROXIES[::-1]

    # 1: wrk

    def wrk(self, proxy: str, seconds: int) -> dict[str, Any]:
        port = self.ports[proxy]["https"]
        argv = [WRK, "-t1", "-c50", f"-d{seconds}s", "--latency"]
        argv += ["-H", f"Host: {WEB_HOST}", "-H", f"Origin: {CLIENT_ORIGIN}"]
        argv.append(f"https://127.0.0.1:{port}/")
        tree = self.tree(proxy)
        cpu0 = cpu_ticks(tree)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        cpu = (cpu_ticks(tree) - cpu0) / CLK_TCK
        out = done.stdout
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed: {done.stderr.strip()} {out}")
        found = re.search(r"Requests/sec:\s+([\d.]+)", out)
        total = re.search(r"(\d+) requests in", out)
        p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
        p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
        if not (found and total and p50 and p99):
            raise RuntimeError(f"unreadable wrk output: {out}")
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors = re.search(r"Socket errors: (.*)", out)
        result = {
            "rps": float(found[1]),
            "requests": int(total[1]),
            "p50_ms": _latency_ms(p50[1]),
            "p99_ms": _latency_ms(p99[1]),
            "non_2xx": int(bad[1]) if bad else 0,
            "socket_errors": errors[1] if errors else "",
            "cpu_us_per_request": cpu / max(1, int(total[1])) * 1e6,
        }
        if result["non_2xx"] or result["socket_errors"]:
            self.notes.append(
                f"wrk through {proxy}: {result['non_2xx']} non-2xx responses, "
                f"socket errors: {result['socket_errors'] or 'none'}"
            )
        return result

    # 2: s_time

    def stime(self, proxy: str, mode: str, seconds: int) -> dict[str, Any]:
        port = self.ports[proxy]["https"]
        argv = [OPENSSL, "s_time", "-connect", f"127.0.0.1:{port}", f"-{mode}"]
        argv += ["-time", str(seconds), "-www", STIME_PATH]
        tree = self.tree(proxy)
        cpu0 = cpu_ticks(tree)
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        wall = time.perf_counter() - started
        cpu = (cpu_ticks(tree) - cpu0) / CLK_TCK
        out = done.stdout
        user = re.search(r"(\d+) connections in ([\d.]+)s; ([\d.]+) connections/user sec", out)
        real = re.search(r"(\d+) connections in (\d+) real seconds, (\d+) bytes read per", out)
        if done.returncode != 0 or not user or not real:
            raise RuntimeError(f"s_time failed ({done.returncode}): {out[-400:]} {done.stderr}")
        marks = max(re.findall(r"^[*r3t]+$", out, re.M), key=len, default="")
        connections = int(real[1])
        return {
            "connections": connections,
            "wall_s": wall,
            "per_s": connections / wall,
            "per_real_s": connections / int(real[2]),
            "per_user_s": float(user[3]),
            "bytes_per_connection": int(real[3]),
            "resumed": marks.count("r") / max(1, len(marks)),
            "cpu_us_per_connection": cpu / max(1, connections) * 1e6,
        }

    # 3: WebSocket echo

    def ws_throughput(self, proxy: str, size: int) -> dict[str, Any]:
        plan = self.plan
        port = self.ports[proxy]["https"]
        spec = {
            "port": port,
            "origin": f"https://{WS_HOST}:{port}",
            "ca": str(self.ca),
            "size": size,
            "connections": plan.ws_connections,
            "window": WS_WINDOW[size],
            "warmup": plan.ws_warmup,
            "seconds": plan.ws_seconds,
        }
        tree = self.tree(proxy)
        cpu0 = cpu_ticks(tree)
        clients = [
            self.procs.child("ws-load", spec, f"ws-load-{i}", stdout=subprocess.PIPE)
            for i in range(plan.ws_clients)
        ]
        results = []
        timeout = plan.ws_seconds + plan.ws_warmup + 60
        for client in clients:
            out, _ = client.communicate(timeout=timeout)
            if client.returncode != 0 or not out:
                raise RuntimeError(f"WebSocket client failed through {proxy}; see {self.tmp}")
            results.append(json.loads(out))
        cpu = (cpu_ticks(tree) - cpu0) / CLK_TCK
        for r in results:
            if r["errors"]:
                self.notes.append(f"WebSocket client through {proxy}: {r['errors'][:2]}")
        total = sum(r["total"] for r in results)
        return {
            "per_s": sum(r["messages"] / r["seconds"] for r in results),
            "messages": sum(r["messages"] for r in results),
            "cpu_us_per_message": cpu / max(1, total) * 1e6,
        }

    # 4: idle WebSockets

    def idle_memory(self, proxy: str) -> dict[str, Any]:
        plan = self.plan
        port = self.ports[proxy]["https"]
        time.sleep(1.0)
        tree = self.tree(proxy)
        pss0, rss0 = memory_kib(tree)
        counts = [plan.idle_websockets // plan.holders] * plan.holders
        counts[0] += plan.idle_websockets - sum(counts)
        holders = []
        started = time.monotonic()
        for i, count in enumerate(counts):
            spec = {
                "port": port,
                "origin": f"https://{WS_HOST}:{port}",
                "ca": str(self.ca),
                "count": count,
                "concurrency": 32,
            }
            holders.append(
                self.procs.child(
                    "ws-hold", spec, f"ws-hold-{i}", stdin=subprocess.PIPE, stdout=subprocess.PIPE
                )
            )
        opened = failed = 0
        try:
            for holder in holders:
                line = read_line(holder, deadline=started + 180)
                report = json.loads(line)
                opened += report["open"]
                failed += report["failed"]
                if report["errors"]:
                    self.notes.append(f"idle WebSockets through {proxy}: {report['errors']}")
            open_s = time.monotonic() - started
            time.sleep(2.0)  # let the workers settle (and the edge publish its counters)
            tree = self.tree(proxy)
            pss1, rss1 = memory_kib(tree)
            reported = self.open_connections(proxy)
        finally:
            for holder in holders:
                with contextlib.suppress(OSError):
                    assert holder.stdin is not None
                    holder.stdin.close()
            for holder in holders:
                self.procs.stop(holder, timeout=15)
        if failed:
            self.notes.append(
                f"{failed} of {plan.idle_websockets} WebSockets through {proxy} failed"
            )
        time.sleep(1.0)
        return {
            "opened": opened,
            "failed": failed,
            "open_seconds": open_s,
            "processes": len(tree),
            "pss_before_kib": pss0,
            "pss_after_kib": pss1,
            "rss_before_kib": rss0,
            "rss_after_kib": rss1,
            "proxy_reports": reported,
            "pss_per_ws_kib": (pss1 - pss0) / max(1, opened),
            "rss_per_ws_kib": (rss1 - rss0) / max(1, opened),
        }

    def open_connections(self, proxy: str) -> str:
        """The proxy's own count, as a cross-check that the WebSockets are held through it."""
        if proxy == "edge":
            total = 0
            for path in (self.tmp / "edge-run").glob("worker-*.json"):
                with contextlib.suppress(OSError, ValueError):
                    total += json.loads(path.read_text()).get("websockets_open", 0)
            return f"{total} WebSockets open"
        request = b"GET /_status HTTP/1.1\r\nHost: web.bench.test\r\nConnection: close\r\n\r\n"
        _, _, body = plain_exchange(self.ports[proxy]["http"], request)
        found = re.search(rb"Active connections: (\d+)", body)
        return f"{int(found[1]) - 1 if found else '?'} client connections open"

    # the whole run

    def run(self) -> None:
        plan = self.plan
        log(f"memory: {plan.idle_websockets} idle WebSockets through each proxy")
        for proxy in PROXIES:
            result = self.idle_memory(proxy)
            self.add(proxy, "idle", result)
            log(
                f"  {proxy}: {result['opened']} open in {result['open_seconds']:.1f}s, "
                f"{result['pss_per_ws_kib']:.1f} KiB PSS / {result['rss_per_ws_kib']:.1f} KiB "
                f"RSS per WebSocket ({result['proxy_reports']})"
            )

        log(
            f"http: wrk warm-up {plan.wrk_warmup}s each, "
            f"then {plan.wrk_rounds} x {plan.wrk_seconds}s"
        )
        for proxy in (*PROXIES, REFERENCE):
            self.wrk(proxy, plan.wrk_warmup)
        for i in range(plan.wrk_rounds):
            # The reference takes turns at the start and the end of a round.
            order = (*self.order(i), REFERENCE) if i % 2 == 0 else (REFERENCE, *self.order(i))
            for proxy in order:
                result = self.wrk(proxy, plan.wrk_seconds)
                self.add(proxy, "wrk", result)
                log(
                    f"  {proxy}: {result['rps']:.0f} req/s, p50 {result['p50_ms']:.2f} ms, "
                    f"p99 {result['p99_ms']:.2f} ms"
                )

        log(f"tls: s_time -new / -reuse, {plan.stime_rounds} x {plan.stime_seconds}s")
        for i in range(plan.stime_rounds):
            for mode in ("new", "reuse"):
                for proxy in self.order(i):
                    result = self.stime(proxy, mode, plan.stime_seconds)
                    self.add(proxy, f"stime_{mode}", result)
                    log(
                        f"  {proxy} -{mode}: {result['per_s']:.0f} conn/s, "
                        f"{result['resumed']:.0%} resumed"
                    )

        log(f"ws: echo, {plan.ws_rounds} x {plan.ws_seconds}s per size")
        for i in range(plan.ws_rounds):
            for size in WS_SIZES:
                for proxy in self.order(i):
                    result = self.ws_throughput(proxy, size)
                    self.add(proxy, f"ws_{size}", result)
                    log(f"  {proxy} {size} B: {result['per_s']:.0f} msg/s")

    def median(self, proxy: str, metric: str, key: str) -> float:
        return float(statistics.median(r[key] for r in self.runs[proxy][metric]))

    def paired(self, metric: str, key: str) -> float:
        """The median over rounds of edge/nginx, each round's two figures measured back to
        back: a drift in the shared machine's load over the run, which the ratio of the two
        medians takes for a difference between the proxies, cancels within a round."""
        pairs = zip(self.runs["edge"][metric], self.runs["nginx"][metric], strict=True)
        return float(statistics.median(e[key] / n[key] if n[key] else math.inf for e, n in pairs))


def read_line(proc: subprocess.Popen[bytes], deadline: float) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError("a WebSocket holder did not report in time")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("a WebSocket holder exited without reporting")
            data += chunk
    return data.decode()


# -- report --------------------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    edge: float
    nginx: float
    ratio: float  # `Bench.paired`: the median of the rounds' ratios, not edge / nginx
    fmt: str
    target: float | None = None
    higher_is_better: bool = True

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.meets(self.ratio)

    def meets(self, ratio: float) -> bool:
        assert self.target is not None
        return ratio >= self.target if self.higher_is_better else ratio <= self.target

    def cells(self) -> list[str]:
        if self.target is None:
            target, met = "", ""
        else:
            target = f"{'≥' if self.higher_is_better else '≤'} {self.target:.1f}"
            met = "yes" if self.met else "**no**"
        return [
            self.metric,
            format(self.edge, self.fmt),
            format(self.nginx, self.fmt),
            self.ratio_text(),
            target,
            met,
        ]

    def ratio_text(self) -> str:
        """Two decimals, or three where two would round across the target (0.996 against
        1.0 is not met, and reads so)."""
        text = f"{self.ratio:.2f}"
        if self.target is not None and self.meets(float(text)) != self.met:
            text = f"{self.ratio:.3f}"
        return text


def build_rows(bench: Bench) -> list[Row]:
    def row(
        label: str,
        metric: str,
        key: str,
        fmt: str,
        target: float | None = None,
        *,
        scale: float = 1.0,
        higher_is_better: bool = True,
    ) -> Row:
        """One figure of both proxies: their medians, and the median of the rounds' ratios."""
        return Row(
            label,
            scale * bench.median("edge", metric, key),
            scale * bench.median("nginx", metric, key),
            bench.paired(metric, key),
            fmt,
            target,
            higher_is_better,
        )

    rows = [
        row("1. HTTPS keep-alive requests/s (wrk -c50)", "wrk", "rps", ",.0f", 1.0),
        row("   latency p50 (ms)", "wrk", "p50_ms", ".2f"),
        row("   latency p99 (ms)", "wrk", "p99_ms", ".2f"),
        row("   proxy CPU per request (µs)", "wrk", "cpu_us_per_request", ".0f"),
        row("2. new TLS connections/s, full handshake", "stime_new", "per_s", ",.0f"),
        row("2. new TLS connections/s, with resumption", "stime_reuse", "per_s", ",.0f", 0.8),
        row("   handshakes resumed (%)", "stime_reuse", "resumed", ".0f", scale=100),
        row(
            "   proxy CPU per connection, full / resumed (µs)",
            "stime_new",
            "cpu_us_per_connection",
            ".0f",
        ),
    ]
    for size, label in ((64, "64 B"), (16 * 1024, "16 KiB")):
        key = f"ws_{size}"
        rows.append(row(f"3. WebSocket echo messages/s, {label}", key, "per_s", ",.0f", 1.0))
        cpu = f"   proxy CPU per message, {label} (µs)"
        rows.append(row(cpu, key, "cpu_us_per_message", ".1f"))
    n = bench.plan.idle_websockets
    label = f"4. memory per idle WebSocket, {n:,} open (KiB, PSS)"
    rows.append(row(label, "idle", "pss_per_ws_kib", ".1f", 2.0, higher_is_better=False))
    rows.append(row("   same, from VmRSS (KiB)", "idle", "rss_per_ws_kib", ".1f"))
    return rows


def reference_text(bench: Bench) -> str:
    """Scenario 1's floor: the bare relay beside the two proxies."""
    rps, cpu = (bench.median(REFERENCE, "wrk", key) for key in ("rps", "cpu_us_per_request"))
    nginx_rps, nginx_cpu = (bench.median("nginx", "wrk", k) for k in ("rps", "cpu_us_per_request"))
    edge_cpu = bench.median("edge", "wrk", "cpu_us_per_request")
    return textwrap.fill(
        f"Reference for 1, measured in the same rounds: a bare uvloop TLS relay (the edge's TLS "
        f"context and certificate, each connection relayed byte for byte to its own upstream "
        f"connection; no HTTP parsing, routing, headers, CORS or logs) served {rps:,.0f} "
        f"requests/s, {rps / nginx_rps:.2f} of nginx's, at {cpu:.1f} µs of CPU per request "
        f"(nginx {nginx_cpu:.1f}, edge {edge_cpu:.1f}). Everything the edge does per request on "
        f"top of moving the bytes costs {edge_cpu - cpu:.1f} µs; to match nginx it may cost "
        f"{nginx_cpu - cpu:.1f}.",
        width=100,
        break_on_hyphens=False,
    )


def render_table(rows: list[Row], bench: Bench) -> str:
    header = ["metric", NAMES["edge"], NAMES["nginx"], "edge/nginx", "target", "met"]
    cells = [r.cells() for r in rows]
    # the CPU-per-connection row shows both the full and the resumed handshake
    for i, r in enumerate(rows):
        if r.metric.startswith("   proxy CPU per connection"):
            for col, proxy in ((1, "edge"), (2, "nginx")):
                resumed = bench.median(proxy, "stime_reuse", "cpu_us_per_connection")
                cells[i][col] = f"{cells[i][col]} / {resumed:.0f}"
            resumed_ratio = bench.paired("stime_reuse", "cpu_us_per_connection")
            cells[i][3] = f"{r.ratio:.2f} / {resumed_ratio:.2f}"
    widths = [max(len(row[c]) for row in [header, *cells]) for c in range(len(header))]

    def line(row: list[str]) -> str:
        parts = [
            row[c].ljust(widths[c]) if c == 0 else row[c].rjust(widths[c]) for c in range(len(row))
        ]
        return "| " + " | ".join(parts) + " |"

    sep = (
        "|"
        + "|".join(
            ("-" * (w + 2)) if c == 0 else ("-" * (w + 1) + ":") for c, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(header), sep, *(line(c) for c in cells)])


@dataclass
class Machine:
    cores: int
    model: str
    kernel: str
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float]
    busy_fraction: float
    others_cpu_s: float
    others_top: list[tuple[str, float]]
    wall_s: float


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def tool_versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (done.stdout + done.stderr).strip().splitlines()[0]
        return "unknown"

    nginx = first_line([NGINX, "-v"]).replace("nginx version: nginx/", "")
    wrk = first_line([WRK, "-v"]).split(" [")[0]
    return {
        "nginx": nginx,
        "wrk": wrk,
        "openssl": first_line([OPENSSL, "version"]).split(" (")[0],
        "python": platform.python_version(),
        "python ssl": ssl.OPENSSL_VERSION,
        "uvloop": version("uvloop"),
        "websockets": version("websockets"),
        "httptools": version("httptools"),
        "cryptography": version("cryptography"),
        "edge build": edge_build(),
    }


def edge_build() -> str:
    """How the edge's request path runs in this checkout (the edge process imports the same
    sources with the same interpreter)."""
    if compiled_dir() is None:
        return "Python (no compiled build matches the sources: python -m aerodrome.edge.build)"
    return f"compiled with mypyc {version('mypy')} (aerodrome.edge.native)"


def method_text(bench: Bench, machine: Machine, tools: dict[str, str]) -> str:
    p = bench.plan
    others = ", ".join(f"{name} {cpu:.0f} CPU-s" for name, cpu in machine.others_top) or "none"
    load = "/".join(f"{x:.2f}" for x in machine.load_start)
    load_end = "/".join(f"{x:.2f}" for x in machine.load_end)
    idle = bench.runs["edge"]["idle"][0]
    idle_n = bench.runs["nginx"]["idle"][0]
    ws_buffer = (
        f"{bench.args.nginx_ws_buffer} for the WebSocket app, so a 16 KiB message crosses "
        f"its tunnel in one read (nginx's default, one 4 KiB page, also bounds each tunnel "
        f"read; `--nginx-ws-buffer default` keeps it)"
        if bench.args.nginx_ws_buffer
        else "nginx's default (one 4 KiB page), which also bounds each WebSocket tunnel read"
    )
    return (
        f"Machine: {machine.cores} cores ({machine.model}), Linux {machine.kernel}. Everything "
        f"runs on loopback on these same cores: the load generators (wrk, s_time, the Python "
        f"WebSocket clients), the upstreams (an nginx with 1 worker answering "
        f'`return 200 "hello\\n"`, a uvloop + websockets echo process) and the proxy under test '
        f"(the other proxy idles meanwhile), so client and upstream CPU cost weighs on every "
        f"figure. The machine is shared: load average {load} at the start, {load_end} at the "
        f"end; it was {machine.busy_fraction:.0%} busy over the {machine.wall_s:.0f} s run, and "
        f"processes outside this benchmark used at least {machine.others_cpu_s:.0f} CPU-s "
        f"(biggest: {others}). "
        f"Tools: nginx {tools['nginx']}, {tools['wrk']}, {tools['openssl']} (s_time), Python "
        f"{tools['python']} with {tools['python ssl']}, uvloop {tools['uvloop']}, websockets "
        f"{tools['websockets']}, httptools {tools['httptools']}, cryptography "
        f"{tools['cryptography']}. The edge's request path ran {tools['edge build']}. "
        f"Both proxies: {bench.args.workers} worker processes (SO_REUSEPORT listeners), ECDSA "
        f"P-256 certificates from one throwaway CA, TLS 1.2/1.3 with the edge's TLS 1.2 suites, "
        f"X25519/P-256/P-384 key exchange, session tickets on (nginx also `ssl_session_cache "
        f"shared:SSL:20m`), HTTP/1.1 keep-alive to the upstream, X-Forwarded-*/Aero-* request "
        f"headers, HSTS, CORS for `{CLIENT_ORIGIN}`, WebSocket Origin check, JSON access log "
        f"buffered (64 KiB) and flushed each second. nginx's `proxy_buffer_size` is {ws_buffer}. "
        f"Not mirrored in nginx: the edge's 421 when Host differs from the TLS connection's "
        f"name, and its preflight answers (no request here is a preflight). "
        f"(1) `wrk -t1 -c50 --latency` with Host and Origin headers, {p.wrk_rounds} x "
        f"{p.wrk_seconds} s per proxy after a {p.wrk_warmup} s warm-up. "
        f"(2) `openssl s_time -new` / `-reuse`, {p.stime_rounds} x {p.stime_seconds} s per mode "
        f"and proxy, one sequential client; each connection sends one HTTP/1.1 request (Host, "
        f"Origin and `Connection: close` ride in `-www`) and reads the response. The figure is "
        f"s_time's connection count divided by wall-clock seconds measured around the s_time "
        f"process: its own 'real seconds' is a whole number and 'connections/user sec' divides "
        f"by the client's CPU time, not elapsed time. s_time has no `-servername`, so it sends "
        f"no SNI and both proxies present web.bench.test's certificate as their default "
        f"(`--default-hostname` / `default_server`); 'resumed' counts s_time's `r` marks. "
        f"(3) {p.ws_clients} client processes x {p.ws_connections} WebSockets, "
        f"{WS_WINDOW[64]} (64 B) or {WS_WINDOW[16384]} (16 KiB) binary messages in flight per "
        f"connection, {p.ws_seconds:g} s measured after {p.ws_warmup:g} s warm-up, "
        f"{p.ws_rounds} round(s) per size and proxy. "
        f"(4) {p.idle_websockets:,} WebSockets opened by {p.holders} client processes with the "
        f"app's own Origin, held idle; memory is the sum of PSS from `/proc/PID/smaps_rollup` "
        f"over the master and workers ({idle['processes']} edge processes, "
        f"{idle_n['processes']} nginx processes), after minus before, divided by the "
        f"WebSockets open (one run per proxy, first, on fresh processes); the VmRSS row is the "
        f"same with `/proc/PID/status`. "
        f"Figures are medians over the rounds; the order of the two proxies alternates each "
        f"round, and a ratio is the median of the rounds' ratios (each round measures both "
        f"proxies back to back, so a drift in the shared machine's load cancels within it). "
        f"Proxy CPU is utime+stime of the proxy's processes over the measurement "
        f"(clock ticks of 1/{CLK_TCK} s), divided by requests, connections or messages. Rows "
        f"without a target are context; for latency, CPU and memory, lower is better."
    )


def write_readme(section: str) -> None:
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    block = f"{SECTION_BEGIN}\n{section.rstrip()}\n{SECTION_END}"
    if SECTION_BEGIN in text and SECTION_END in text:
        head, rest = text.split(SECTION_BEGIN, 1)
        _, tail = rest.split(SECTION_END, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    README.write_text(text)


def readme_section(table: str, method: str, notes: list[str], when: str, quick: bool) -> str:
    run = "`--quick` run" if quick else "full run"
    lines = [
        "## Edge: aerodrome edge vs nginx (`bench/edge.py`)",
        "",
        "    .venv/bin/python bench/edge.py [--quick] [--json] [--workers N] [--write-readme]",
        "",
        "Both proxies terminate TLS for the same two apps on loopback, in front of the same two",
        "upstreams, with the same policies; everything is started, measured and stopped in one",
        "invocation (about 6 minutes; `--quick` about 1). See the script's docstring for what",
        "each scenario does. Ratios are edge/nginx; the targets are the edge's goals, and a",
        "**no** is reported as measured.",
        "",
        f"Last {run}: {when}.",
        "",
        table,
        "",
        textwrap.fill(f"Method. {method}", width=100, break_on_hyphens=False),
    ]
    if notes:
        lines += ["", "Notes from the run:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# -- main ----------------------------------------------------------------------------------------


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child_main(argv[1], json.loads(argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="about 1 minute instead of 4")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--write-readme", action="store_true", help="update bench/README.md")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--nginx-ws-buffer",
        default="16k",
        metavar="SIZE",
        help="nginx's proxy_buffer_size for the WebSocket app (16k, a full TLS record; "
        "'default' keeps nginx's one page, which also bounds each WebSocket tunnel read)",
    )
    args = parser.parse_args(argv)
    if args.nginx_ws_buffer == "default":
        args.nginx_ws_buffer = None
    plan = QUICK if args.quick else FULL
    for tool in (NGINX, WRK, OPENSSL):
        if not Path(tool).exists():
            parser.error(f"{tool} is not installed")
    nofile = raise_nofile()
    needed = 3 * plan.idle_websockets // max(1, args.workers) + 1024
    if nofile[0] < needed:
        log(f"warning: RLIMIT_NOFILE is {nofile[0]}; {plan.idle_websockets} WebSockets may fail")
    signal.signal(signal.SIGTERM, _interrupt)

    log(f"plan: {'quick' if args.quick else 'full'}, about {plan.estimate():.0f}s")
    log(f"edge: request path {edge_build()}")
    started = time.monotonic()
    load_start = os.getloadavg()
    busy0, total0 = machine_busy()
    stats0 = proc_stats()
    tmp = Path(tempfile.mkdtemp(prefix="aero-bench-edge-"))
    tmp.chmod(0o755)
    procs = Processes(tmp)
    bench = Bench(args, plan, tmp, procs)
    try:
        bench.setup()
        bench.run()
        stats1 = proc_stats()
        ours = set(descendants([os.getpid(), *bench.roots.values()], stats1))
        ours |= set(descendants([p for ps in procs.nginx_pids.values() for p in ps], stats1))
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    except Exception:
        log(f"failed; logs are in {tmp} (kept)")
        args.keep = True
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            log(f"kept {tmp}")
    busy1, total1 = machine_busy()
    others: dict[str, float] = {}
    for pid, st in stats1.items():
        if pid in ours:
            continue
        before = stats0.get(pid)
        ticks = st.ticks - before.ticks if before and before.start == st.start else st.ticks
        if ticks > 0:
            others[st.comm] = others.get(st.comm, 0.0) + ticks / CLK_TCK
    machine = Machine(
        cores=os.cpu_count() or 1,
        model=cpu_model(),
        kernel=platform.release(),
        load_start=load_start,
        load_end=os.getloadavg(),
        busy_fraction=(busy1 - busy0) / max(1, total1 - total0),
        others_cpu_s=sum(others.values()),
        others_top=sorted(others.items(), key=lambda kv: -kv[1])[:4],
        wall_s=time.monotonic() - started,
    )
    tools = tool_versions()
    rows = build_rows(bench)
    table = render_table(rows, bench) + "\n\n" + reference_text(bench)
    method = method_text(bench, machine, tools)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if args.json:
        print(
            json.dumps(
                {
                    "rows": [
                        {
                            "metric": r.metric.strip(),
                            "edge": r.edge,
                            "nginx": r.nginx,
                            "ratio": r.ratio,
                            "target": r.target,
                            "higher_is_better": r.higher_is_better,
                            "met": r.met,
                        }
                        for r in rows
                    ],
                    "runs": bench.runs,
                    "plan": plan.__dict__,
                    "workers": args.workers,
                    "machine": machine.__dict__,
                    "tools": tools,
                    "notes": bench.notes,
                    "method": method,
                    "when": when,
                },
                indent=2,
            )
        )
    else:
        print(f"aerodrome edge vs nginx, {'quick' if args.quick else 'full'} run, {when}\n")
        print(table)
        print()
        print(textwrap.fill(f"Method. {method}", width=100, break_on_hyphens=False))
        if bench.notes:
            print("\nNotes:")
            for note in bench.notes:
                print(f"- {note}")
    if args.write_readme:
        write_readme(readme_section(table, method, bench.notes, when, args.quick))
        log(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
