"""`aero certs` against a real `aero up`, whose certificate manager runs as its own process:
certificates appear for the app's name and a custom name, and a TLS client trusting
`DATA/ca/root.pem` accepts them."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aerodrome.certs.sslctx import server_context
from aerodrome.certs.store import load_edge_certificates
from aerodrome.config import Settings
from aerodrome.services import Services
from tests.cli.conftest import Platform, free_port, read_env, start_platform, stop_platform


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    data_dir = tmp_path_factory.mktemp("certs-platform") / "data"
    port = free_port()
    process = start_platform(data_dir, port)
    try:
        yield Platform(data_dir, port, process, read_env(data_dir / "aero.env"))
    finally:
        stop_platform(process)


def wait_for(platform: Platform, app: str, hostname: str, status: str = "issued") -> Any:
    deadline = time.monotonic() + 20
    last: Any = None
    while time.monotonic() < deadline:
        last = platform.aero_json("certs", "show", hostname, "-a", app, check=False)
        if isinstance(last, dict) and last.get("status") == status:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{hostname} not {status} in 20 s: {last}")


def handshake(port: int, sni: str, cafile: Path) -> str:
    context = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        return tls.version() or ""


def test_certs_commands_and_the_manager(platform: Platform) -> None:
    platform.aero("orgs", "create", "certs-org")
    platform.aero("apps", "create", "web", "--org", "certs-org")

    added = platform.aero_json("certs", "add", "www.example.com", "-a", "web")
    assert (added["hostname"], added["status"], added["issuer"]) == (
        "www.example.com",
        "pending",
        "local",
    )
    human = platform.aero("certs", "add", "shop.example.com", "-a", "web")
    assert "Added shop.example.com to web" in human.stdout

    shown = wait_for(platform, "web", "www.example.com")
    assert shown["serving"] is True and shown["not_after"]
    wait_for(platform, "web", "web.localhost")  # the app's own name, without asking
    listed = platform.aero_json("certs", "list", "-a", "web")
    assert {(c["hostname"], c["kind"]) for c in listed} == {
        ("web.localhost", "app"),
        ("www.example.com", "custom"),
        ("shop.example.com", "custom"),
    }
    table = platform.aero("certs", "list", "-a", "web").stdout
    assert "HOSTNAME" in table and "www.example.com" in table
    for output in (table, platform.aero("certs", "show", "www.example.com", "-a", "web").stdout):
        assert "PRIVATE" not in output

    # Errors are one line (plus a hint), exit status 1.
    bad = platform.aero("certs", "add", "*.example.com", "-a", "web", check=False)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.splitlines()[0].startswith("error (invalid_request): wildcard names")
    assert platform.aero_json("certs", "add", "api.localhost", "-a", "web", check=False) == {
        "error": {
            "code": "reserved_hostname",
            "message": "api.localhost is under the platform's domain localhost and is not web's",
            "hint": "names under localhost belong to the platform and its apps; "
            "web may add names below web.localhost",
        }
    }
    unconfirmed = platform.aero("certs", "remove", "shop.example.com", "-a", "web", check=False)
    assert unconfirmed.returncode == 1 and "--yes" in unconfirmed.stderr
    removed = platform.aero_json("certs", "remove", "shop.example.com", "-a", "web", "--yes")
    assert removed == {"removed": "shop.example.com", "app": "web"}

    # What the edge will load, served over TLS, verifies against DATA/ca/root.pem.
    root_pem = platform.data_dir / "ca" / "root.pem"
    assert root_pem.exists()
    settings = Settings.from_env(platform.data_dir)
    services = Services.open(settings, migrate=False)
    try:
        with services.store.read() as session:
            certs = load_edge_certificates(session, services.keyring(session))
    finally:
        services.close()
    assert {"web.localhost", "www.example.com", "api.localhost"} <= set(certs)
    # No key in any file of the data directory (database, logs, CA), in any form.
    files = b"".join(p.read_bytes() for p in platform.data_dir.rglob("*") if p.is_file())
    assert b"PRIVATE KEY" not in files
    for _, key in certs.values():
        body = b"".join(line for line in key.splitlines() if not line.startswith(b"-----"))
        assert body not in files and body[:64] not in files
    assert "shop.example.com" not in certs
    contexts = {name: server_context(*pair) for name, pair in certs.items()}
    default = contexts["web.localhost"]
    default.sni_callback = lambda sslobj, name, _ctx: setattr(
        sslobj, "context", contexts.get(name or "", default)
    )
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            try:
                with default.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (OSError, ssl.SSLError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        for name in ("web.localhost", "www.example.com"):
            assert handshake(port, name, root_pem).startswith("TLSv1.")
    finally:
        listener.close()
        thread.join(5)
