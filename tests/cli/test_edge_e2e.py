"""Issue 4's acceptance path, against a real `aero up`: apps over HTTPS by name with the
platform's CA, HTTP redirected, WebSockets over wss:// with the Origin checked, a TLS
configuration testssl.sh finds nothing weak in, and a certificate from a real ACME server
(Pebble) obtained through the edge's own challenge responders."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets.sync.client as ws_client
from websockets.exceptions import InvalidStatus

from tests import wss
from tests.cli import upstreams
from tests.cli.conftest import (
    Platform,
    free_port,
    read_env,
    start_platform,
    stop_platform,
)


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[int, int]]:
    http_port, ws_port = free_port(), free_port()
    with upstreams.running(http_port, ws_port):
        yield http_port, ws_port


@pytest.fixture(scope="module")
def served(platform: Platform, upstream: tuple[int, int]) -> Platform:
    http_port, ws_port = upstream
    platform.aero("orgs", "create", "edge-org")
    for app, port in (("edge-web", http_port), ("edge-ws", ws_port)):
        platform.aero("apps", "create", app, "--org", "edge-org")
        platform.aero("upstreams", "add", "-a", app, f"127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the certificate manager issues, the edge picks it up
        certs = platform.aero_json("certs", "list", "-a", "edge-ws")
        if certs and certs[0]["status"] == "issued":
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"edge-ws has no issued certificate after 30 s: {certs}")
    time.sleep(1.0)  # the edge's next poll
    return platform


def edge_ports(platform: Platform) -> tuple[int, int]:
    url = httpx.URL(platform.env["AERO_API_URL"])
    https_port = url.port or 443
    cmdline = Path(f"/proc/{platform.process.pid}/cmdline").read_bytes().split(b"\0")
    http_port = int(cmdline[cmdline.index(b"--http-port") + 1])
    return https_port, http_port


def test_curl_reaches_an_app_over_https_by_name(served: Platform) -> None:
    https_port, http_port = edge_ports(served)
    name = "edge-web.localhost"
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            served.env["AERO_CA_BUNDLE"],
            "--resolve",
            f"{name}:{https_port}:127.0.0.1",
            "-D",
            "-",
            f"https://{name}:{https_port}/hello",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    head, _, body = result.stdout.partition("\n\n")  # text mode turned CRLF into LF
    assert head.startswith("HTTP/1.1 200")
    assert "strict-transport-security: max-age=31536000" in head.lower()
    assert json.loads(body)["path"] == "/hello"
    redirect = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "--resolve",
            f"{name}:{http_port}:127.0.0.1",
            f"http://{name}:{http_port}/a?b=c",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert redirect.stdout == f"301 https://{name}:{https_port}/a?b=c"


def test_websocket_echo_over_wss_and_refused_from_a_foreign_origin(served: Platform) -> None:
    https_port, _ = edge_ports(served)
    name = "edge-ws.localhost"
    ctx = ssl.create_default_context(cafile=served.env["AERO_CA_BUNDLE"])

    def connect(origin: str) -> ws_client.ClientConnection:
        return wss.connect(name, https_port, "/stream", context=ctx, origin=origin)

    with connect(f"https://{name}:{https_port}") as ws:
        assert json.loads(ws.recv())["path"] == "/stream"
        ws.send(b"\x00audio-chunk\xff" * 1000)
        assert ws.recv() == b"\x00audio-chunk\xff" * 1000
    with pytest.raises(InvalidStatus) as refused:
        connect("https://evil.example")
    assert refused.value.response.status_code == 403


def test_metrics_count_requests_per_app(served: Platform) -> None:
    cmdline = Path(f"/proc/{served.process.pid}/cmdline").read_bytes().split(b"\0")
    metrics_port = int(cmdline[cmdline.index(b"--metrics-port") + 1])
    https_port, _ = edge_ports(served)
    name = "edge-web.localhost"
    # Its own request: the test does not lean on another test's.
    subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "--cacert", served.env["AERO_CA_BUNDLE"],
         "--resolve", f"{name}:{https_port}:127.0.0.1", f"https://{name}:{https_port}/hello"],
        check=True, timeout=30,
    )  # fmt: skip
    time.sleep(1.2)  # workers publish their counters every second
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert 'aero_edge_requests_total{app="edge-web",status="200"}' in text
    assert "aero_edge_tls_handshakes_total" in text


@pytest.mark.skipif(
    shutil.which("testssl") is None, reason="install testssl.sh: apt-get install testssl.sh"
)
def test_testssl_finds_no_weak_protocol_or_cipher(served: Platform, tmp_path: Path) -> None:
    https_port, _ = edge_ports(served)
    report = tmp_path / "testssl.json"
    subprocess.run(
        [
            "testssl",
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--ip",
            "127.0.0.1",
            "-p",
            "-s",
            "-f",
            "--jsonfile-pretty",
            str(report),
            f"https://edge-web.localhost:{https_port}",
        ],
        capture_output=True,
        timeout=300,
        check=False,
    )
    results = json.loads(report.read_text())["scanResult"][0]
    findings = {
        f["id"]: f for section in ("protocols", "ciphers", "pfs") for f in results.get(section, [])
    }
    weak = [
        f"{i}: {f['finding']}" for i, f in findings.items() if f["severity"] not in ("OK", "INFO")
    ]
    assert not weak, weak
    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert findings[old]["finding"].startswith("not offered"), old
    assert findings["TLS1_3"]["finding"].startswith("offered")
    assert findings["cipherlist_STRONG"]["finding"] == "offered"
    assert findings["cipherlist_AVERAGE"]["finding"] == "not offered"  # no CBC suites


# -- ACME through the edge ----------------------------------------------------------------------


@pytest.fixture
def acme_platform(tmp_path: Path, pebble: object) -> Iterator[tuple[Platform, object, Path]]:
    """`aero up` in ACME mode: the edge listens on the ports Pebble validates against."""
    roots = tmp_path / "pebble-roots.pem"
    roots.write_text(
        httpx.get(
            f"https://127.0.0.1:{pebble.management_port}/roots/0",  # type: ignore[attr-defined]
            verify=ssl.create_default_context(cafile=str(pebble.ca_bundle)),
            timeout=10,
        ).text  # type: ignore[attr-defined]
    )
    env = {
        "AERO_ACME_DIRECTORY": pebble.directory,  # type: ignore[attr-defined]
        "AERO_ACME_CA_BUNDLE": str(pebble.ca_bundle),  # type: ignore[attr-defined]
        "AERO_CA_BUNDLE": str(roots),
    }
    data_dir = tmp_path / "data"
    process = start_platform(
        data_dir,
        free_port(),
        extra=[
            "--domain",
            "aero.test",
            "--https-port",
            str(pebble.tls_port),  # type: ignore[attr-defined]
            "--http-port",
            str(pebble.http_port),  # type: ignore[attr-defined]
            "--metrics-port",
            str(free_port()),
            "--edge-workers",
            "1",
        ],
        env_extra=env,
    )
    try:
        yield Platform(data_dir, 0, process, read_env(data_dir / "aero.env")), pebble, roots
    finally:
        stop_platform(process)


def test_pebble_issues_through_the_edges_own_challenge_responder(
    acme_platform: tuple[Platform, object, Path],
) -> None:
    platform, pebble, roots = acme_platform
    # `aero up` only wrote aero.env once https://api.aero.test answered with a certificate
    # Pebble issued: prove it with a handshake that trusts nothing but Pebble's root.
    ctx = ssl.create_default_context(cafile=str(roots))
    raw = socket.create_connection(("127.0.0.1", pebble.tls_port), timeout=10)  # type: ignore[attr-defined]
    with ctx.wrap_socket(raw, server_hostname="api.aero.test") as tls:
        issuer = dict(x[0] for x in tls.getpeercert()["issuer"])
    assert "Pebble" in issuer["commonName"]
    log = (platform.data_dir / "logs" / "certs.log").read_text()
    assert "issued api.aero.test (acme" in log
