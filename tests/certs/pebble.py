"""A real ACME server for the tests: Pebble and pebble-challtestsrv on loopback, and a
challenge responder that answers from `load_challenges` the way the edge does."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aerodrome.certs.challenges import (
    HTTP01_PATH_PREFIX,
    Challenges,
    load_challenges,
)
from aerodrome.certs.sslctx import ACME_TLS_ALPN_PROTOCOL, server_context
from aerodrome.services import Services

HOW_TO_GET = (
    "Pebble is not installed: run scripts/install-test-deps (it installs it) "
    "or `apt-get install pebble`"
)


def find_pebble() -> tuple[str, str] | None:
    pebble = shutil.which("pebble")
    challtestsrv = shutil.which("pebble-challtestsrv")
    return (pebble, challtestsrv) if pebble and challtestsrv else None


def free_port(kind: int = socket.SOCK_STREAM, also_udp: bool = False) -> int:
    """A loopback port free for TCP (and UDP too, for the DNS server)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if not also_udp:
            return port
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def _self_signed_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _listener_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a localhost/127.0.0.1 certificate for Pebble's own HTTPS."""
    ca_key, ca = _self_signed_ca("aerodrome tests: pebble listener CA")
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (directory / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


@dataclass
class Pebble:
    """Pebble with every name resolving to 127.0.0.1 (through challtestsrv's DNS). It
    validates HTTP-01 on 127.0.0.1:`http_port` and TLS-ALPN-01 on 127.0.0.1:`tls_port`."""

    binaries: tuple[str, str]
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="aero-pebble-")))
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        pebble, challtestsrv = self.binaries
        self.ca_bundle, cert, key = _listener_cert(self.root)
        self.listen_port = free_port()
        self.management_port = free_port()
        self.http_port = free_port()
        self.tls_port = free_port()
        dns_port = free_port(also_udp=True)
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.listen_port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": str(cert),
                "privateKey": str(key),
                "httpPort": self.http_port,
                "tlsPort": self.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        (self.root / "pebble.json").write_text(json.dumps(config))
        log = (self.root / "pebble.log").open("ab")
        self.processes.append(
            subprocess.Popen(
                [
                    challtestsrv,
                    "-dns01",
                    f"127.0.0.1:{dns_port}",
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    f"127.0.0.1:{free_port()}",
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
        self.processes.append(
            subprocess.Popen(
                [
                    pebble,
                    "-config",
                    str(self.root / "pebble.json"),
                    "-dnsserver",
                    f"127.0.0.1:{dns_port}",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"pebble exited: {self.log()}")
            try:
                if httpx.get(self.directory, verify=self.trust(), timeout=1).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"pebble did not start in 20 s: {self.log()}")

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.listen_port}/dir"

    def root_pem(self) -> bytes:
        """Pebble's current root (regenerated on every start)."""
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        return httpx.get(url, verify=self.trust(), timeout=5).content

    def trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def log(self) -> str:
        path = self.root / "pebble.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


class ChallengeResponder:
    """What the edge does for ACME, minimally: HTTP-01 on `http_port`, TLS-ALPN-01 on
    `tls_port` (an `sni_callback` swaps in the challenge certificate's context), both answered
    from `load_challenges` at the moment of each request."""

    def __init__(self, services: Services, http_port: int, tls_port: int) -> None:
        self.services = services
        self.http_hits: list[tuple[str, str, int]] = []  # (path, Host, status)
        self.sni_seen: list[str] = []  # the names TLS clients asked for
        self.alpn_negotiated: list[str | None] = []
        self._stop = threading.Event()
        responder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = responder.http01(self.path)
                status = 200 if body is not None else 404
                responder.http_hits.append((self.path, self.headers.get("Host", ""), status))
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                if body is not None:
                    self.wfile.write(body.encode("ascii"))

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", http_port), Handler)
        self.tls_listener = socket.create_server(("127.0.0.1", tls_port))
        self.tls_listener.settimeout(0.2)
        self.default_context = self._fallback_context()
        self.default_context.sni_callback = self._sni
        self.threads = [
            threading.Thread(
                target=self.http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            ),
            threading.Thread(target=self._serve_tls, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _challenges(self) -> Challenges:
        with self.services.store.read() as session:
            return load_challenges(session, self.services.keyring(session))

    def http01(self, path: str) -> str | None:
        if not path.startswith(HTTP01_PATH_PREFIX):
            return None
        return self._challenges().http01.get(path.removeprefix(HTTP01_PATH_PREFIX))

    def _sni(self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if server_name is None:
            return
        self.sni_seen.append(server_name)
        pending = self._challenges().tlsalpn01.get(server_name)
        if pending is not None:
            cert, key = pending
            sslobj.context = server_context(cert, key, alpn=[ACME_TLS_ALPN_PROTOCOL])

    @staticmethod
    def _fallback_context() -> ssl.SSLContext:
        key, cert = _self_signed_ca("aerodrome tests: no certificate for this name")
        return server_context(
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            alpn=["http/1.1"],
        )

    def _serve_tls(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tls_listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handshake, args=(conn,), daemon=True).start()

    def _handshake(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            with self.default_context.wrap_socket(conn, server_side=True) as tls:
                self.alpn_negotiated.append(tls.selected_alpn_protocol())
        except (OSError, ssl.SSLError):
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.http.shutdown()
        self.http.server_close()
        self.tls_listener.close()
        for thread in self.threads:
            thread.join(5)
