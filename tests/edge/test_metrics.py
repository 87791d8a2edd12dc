"""The edge's counters as a Prometheus scrape shows them, summed over the workers."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from aerodrome.edge.server import WorkerStats
from aerodrome.edge.worker import Metrics


def _scrape(run_dir: Path) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(WorkerStats(run_dir))
    samples = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_request_latencies_fall_in_prometheus_buckets_per_app(tmp_path: Path) -> None:
    one, two = Metrics(), Metrics()  # two workers
    # A bucket holds what took at most its bound (`le`): exactly 1 ms counts in le="0.001".
    for app, seconds in ((b"web", 0.001), (b"api", 0.2), (b"web", 0.0011), (b"web", 12.0)):
        one.observe(app, 200, seconds)
    two.observe(b"web", 503, 0.3)
    for n, metrics in enumerate((one, two)):
        (tmp_path / f"worker-{n}.json").write_text(json.dumps(metrics.to_json()))

    samples = _scrape(tmp_path)

    web = 'aero_edge_request_duration_seconds_bucket{app="web",le="%s"}'
    assert samples[web % "0.001"] == 1
    assert samples[web % "0.0025"] == 2
    assert samples[web % "0.25"] == 2
    assert samples[web % "0.5"] == 3  # the second worker's
    assert samples[web % "10.0"] == 3
    assert samples[web % "+Inf"] == 4  # past the last bound
    assert samples['aero_edge_request_duration_seconds_count{app="web"}'] == 4
    assert abs(samples['aero_edge_request_duration_seconds_sum{app="web"}'] - 12.3021) < 1e-9
    api = 'aero_edge_request_duration_seconds_bucket{app="api",le="%s"}'
    assert samples[api % "0.1"] == 0 and samples[api % "0.25"] == 1
    assert samples['aero_edge_requests_total{app="web",status="200"}'] == 3
    assert samples['aero_edge_requests_total{app="web",status="503"}'] == 1
    assert samples['aero_edge_requests_total{app="api",status="200"}'] == 1
