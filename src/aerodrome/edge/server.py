"""`python -m aerodrome.edge`: the edge as a process tree.

The main process starts one worker per core (each binds the ports with SO_REUSEPORT),
restarts any that die, serves Prometheus metrics on a local port by summing the workers'
published counters, and on SIGTERM stops the workers, which drain in-flight requests.

Routes come from the store (the default: `aero up` runs it this way) or from a static JSON
file (`--static FILE`) for an edge without a control plane:

    {"routes": {"web.example.test": {"upstreams": ["127.0.0.1:9000"],
                                      "http_service": {"force_https": true}}},
     "certificates": {"web.example.test": {"chain": "chain.pem", "key": "key.pem"}}}
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from aerodrome.edge.routes import EdgeConfig, RouteTable, build_route
from aerodrome.edge.worker import LATENCY_BUCKETS, Snapshot, Worker
from aerodrome.platform.http_service import parse_address, parse_http_service


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="aerodrome edge")
    parser.add_argument("--host", default="0.0.0.0")  # noqa: S104 - the edge is the front door
    parser.add_argument("--https-port", type=int, default=8443)
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--metrics-port", type=int, default=9464)
    parser.add_argument("--metrics-host", default="127.0.0.1")
    parser.add_argument("--domain", default=os.environ.get("AERO_DOMAIN", "localhost"))
    parser.add_argument("--region", default=os.environ.get("AERO_REGION", "local"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--api-upstream", default=None, help="IP:PORT of the control plane")
    parser.add_argument("--static", type=Path, default=None, help="routes from a JSON file")
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--access-log", type=Path, default=None)
    parser.add_argument("--trusted-proxy", action="append", default=[])
    parser.add_argument(
        "--default-hostname",
        default=None,
        help="serve this hostname's certificate to clients that send no SNI (off by default)",
    )
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def edge_config(args: argparse.Namespace) -> EdgeConfig:
    return EdgeConfig(
        domain=args.domain,
        https_port=args.https_port,
        http_port=args.http_port,
        region=args.region,
        api_upstream=parse_address(args.api_upstream) if args.api_upstream else None,
        trusted_proxies=frozenset(args.trusted_proxy),
        default_hostname=args.default_hostname,
    )


def static_loader(
    path: Path, config: EdgeConfig
) -> tuple[Callable[[], Snapshot], Callable[[], int]]:
    def load() -> Snapshot:
        data = json.loads(path.read_text())
        routes = {}
        for hostname, spec in data.get("routes", {}).items():
            upstreams = tuple(parse_address(a) for a in spec.get("upstreams", []))
            service = parse_http_service(spec.get("http_service", {}))
            routes[hostname] = build_route(
                config,
                hostname,
                spec.get("app", hostname.split(".")[0]),
                hostname,
                upstreams,
                service,
            )
        certificates = {
            hostname: (
                (path.parent / c["chain"]).read_bytes(),
                (path.parent / c["key"]).read_bytes(),
            )
            for hostname, c in data.get("certificates", {}).items()
        }
        return RouteTable(int(path.stat().st_mtime_ns), routes), certificates, {}

    return load, lambda: int(path.stat().st_mtime_ns)


def store_loader(config: EdgeConfig) -> tuple[Callable[[], Snapshot], Callable[[], int]]:
    from aerodrome.edge.state import StoreState

    state = StoreState.open(config)
    return state.load, state.revision


def run_worker(args: argparse.Namespace) -> None:
    import uvloop

    config = edge_config(args)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    load, revision = static_loader(args.static, config) if args.static else store_loader(config)
    run_dir = args.run_dir
    # The main process hands the session-ticket seed over on stdin (never on disk or argv).
    seed = sys.stdin.buffer.read(32) if args.worker_index is not None and run_dir else b""
    if args.worker_index is not None and run_dir and len(seed) != 32:
        print(
            f"edge worker {args.worker_index}: no session-ticket seed on stdin ({len(seed)} "
            "bytes); tickets from this worker resume only on this worker",
            file=sys.stderr,
            flush=True,
        )
    worker = Worker(
        config,
        loop,
        load,
        revision,
        access_log=args.access_log,
        stats_file=run_dir / f"worker-{args.worker_index}.json" if run_dir else None,
        ticket_seed=seed if len(seed) == 32 else None,
    )
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)

    async def main() -> None:
        await worker.start(args.host)
        # Everything built so far (modules, the first route table) lives as long as the
        # worker: keep it out of the cycle collector's full passes, which would otherwise walk
        # it every few thousand connections.
        gc.collect()
        gc.freeze()
        await stopping.wait()
        await worker.stop()
        await asyncio.sleep(0.1)

    loop.run_until_complete(main())


class WorkerStats(Collector):
    """Sums the counters the workers publish to `run_dir`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def collect(self) -> Iterable[Any]:
        totals: dict[str, float] = {}
        requests: dict[tuple[str, int], int] = {}
        latency: dict[str, list[float]] = {}
        for path in self.run_dir.glob("worker-*.json"):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            for key in (
                "open_connections",
                "tls_handshakes",
                "websockets_open",
                "websockets_total",
                "edge_errors",
            ):
                totals[key] = totals.get(key, 0) + data.get(key, 0)
            for app, status, n in data.get("requests", []):
                requests[(app, status)] = requests.get((app, status), 0) + n
            for app, buckets in data.get("latency", {}).items():
                into = latency.setdefault(app, [0.0] * len(buckets))
                for i, value in enumerate(buckets):
                    into[i] += value
        yield GaugeMetricFamily(
            "aero_edge_open_connections",
            "Open client connections",
            value=totals.get("open_connections", 0),
        )
        yield GaugeMetricFamily(
            "aero_edge_websockets_open",
            "Open proxied WebSockets",
            value=totals.get("websockets_open", 0),
        )
        yield CounterMetricFamily(
            "aero_edge_websockets", "WebSockets proxied", value=totals.get("websockets_total", 0)
        )
        yield CounterMetricFamily(
            "aero_edge_tls_handshakes",
            "Completed TLS handshakes",
            value=totals.get("tls_handshakes", 0),
        )
        yield CounterMetricFamily(
            "aero_edge_errors",
            "Responses made by the edge itself",
            value=totals.get("edge_errors", 0),
        )
        family = CounterMetricFamily(
            "aero_edge_requests", "Requests by app and status", labels=["app", "status"]
        )
        for (app, status), n in sorted(requests.items()):
            family.add_metric([app, str(status)], n)
        yield family
        hist = HistogramMetricFamily(
            "aero_edge_request_duration_seconds", "Request latency at the edge", labels=["app"]
        )
        for app, buckets in sorted(latency.items()):
            cumulative, running = [], 0.0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), buckets[:-1], strict=True):
                running += count
                cumulative.append((str(bound) if bound != float("inf") else "+Inf", running))
            hist.add_metric([app], cumulative, sum_value=buckets[-1])
        yield hist


def run_main(args: argparse.Namespace, argv: list[str]) -> None:
    run_dir = args.run_dir or Path(os.environ.get("AERO_DATA_DIR", ".aerodrome")) / "run" / "edge"
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob("worker-*.json"):
        stale.unlink()
    # A fresh seed for the workers' shared session-ticket keys (see edge/tickets.py). It
    # derives every epoch's keys, and a TLS 1.2 ticket holds the session's master secret: it
    # stays in memory and goes to each worker (restarts too) through a pipe.
    seed = os.urandom(32)
    (run_dir / "tickets.seed").unlink(missing_ok=True)  # where earlier versions left it
    REGISTRY.register(WorkerStats(run_dir))
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_host)
    base = [sys.executable, "-m", "aerodrome.edge", *argv, "--run-dir", str(run_dir)]
    procs: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def spawn(index: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([*base, "--worker-index", str(index)], stdin=subprocess.PIPE)
        assert proc.stdin is not None
        proc.stdin.write(seed)
        proc.stdin.close()
        return proc

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(max(1, args.workers)):
        procs[index] = spawn(index)
    print(
        f"edge: {len(procs)} workers on :{args.https_port} (https) and :{args.http_port} "
        f"(http); metrics on {args.metrics_host}:{args.metrics_port}",
        flush=True,
    )
    while not stopping:
        time.sleep(0.2)
        for index, proc in list(procs.items()):
            if proc.poll() is not None and not stopping:
                print(f"edge: worker {index} exited ({proc.returncode}); restarting", flush=True)
                time.sleep(0.5)
                procs[index] = spawn(index)
    for proc in procs.values():
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in procs.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker_index is not None:
        run_worker(args)
    else:
        run_main(args, argv)
