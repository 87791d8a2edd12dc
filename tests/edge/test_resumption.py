"""TLS session resumption as a returning client sees it: whichever worker the kernel hands
its next connection to, the session resumes (one short handshake, no new key exchange)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from aerodrome.edge import tickets
from aerodrome.runtime.agent import free_port
from tests.cli import upstreams
from tests.edge import support

REQUEST = b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    http_port = free_port()
    with upstreams.running(http_port, free_port()):
        yield http_port


def fetch(
    port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[bool, bytes, ssl.SSLSession | None]:
    """(resumed?, the worker that answered, the session to resume next)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="web.test", session=session) as tls,
    ):
        tls.sendall(REQUEST)
        data = b""
        while chunk := tls.recv(65536):  # TLS 1.3 tickets arrive after the handshake
            data += chunk
        head = data.partition(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 200 "), head
        request_id = head.split(b"aero-request-id: ", 1)[1].split(b"\r\n", 1)[0]
        worker = request_id[:18]  # req_<14-character worker prefix><counter in hex>
        return tls.session_reused, worker, tls.session


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"]
)
def test_a_session_resumes_on_every_worker(
    upstream: int, tmp_path: Path, version: ssl.TLSVersion
) -> None:
    with support.static_edge(tmp_path, upstream, workers=2) as edge:
        ctx = edge.client_context
        ctx.maximum_version = version
        resumed, worker, session = fetch(edge.https_port, ctx, None)
        assert not resumed and session is not None and session.has_ticket
        workers = {worker}
        for _ in range(24):  # SO_REUSEPORT spreads connections by port: both workers answer
            resumed, worker, _ = fetch(edge.https_port, ctx, session)
            assert resumed, f"no resumption on worker {worker!r} (first: {workers})"
            workers.add(worker)
        assert len(workers) == 2, "every connection went to one worker"


def test_ticket_keys_are_shared_by_seed_and_change_with_the_epoch() -> None:
    seed = bytes(range(32))
    now = tickets.epoch()
    assert tickets.ticket_keys(seed, now) == tickets.ticket_keys(bytes(range(32)), now)
    assert tickets.ticket_keys(seed, now) != tickets.ticket_keys(seed, now + 1)
    assert tickets.ticket_keys(seed, now) != tickets.ticket_keys(bytes(32), now)
    assert tickets.epoch(now * tickets.EPOCH_SECONDS + tickets.EPOCH_SECONDS - 1) == now
