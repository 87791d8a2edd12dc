"""Fuzzing the request-parsing path: whatever bytes arrive, the worker answers with a status
or closes the connection, never crashes, and the next client is served normally."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aerodrome.platform.http_service import HttpService
from tests.edge.support import EdgeHarness, start_edge


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeHarness]:
    harness, stop = start_edge(
        tmp_path_factory.mktemp("fuzz"), header_timeout=0.5, max_body_bytes=4096
    )
    harness.set_routes(
        {f"plain.{harness.config.domain}": harness.route("plain", HttpService(force_https=False))}
    )
    yield harness
    stop()


def send(edge: EdgeHarness, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", edge.config.http_port), timeout=3) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out


def valid(edge: EdgeHarness) -> bytes:
    return (
        f"POST /path?q=1 HTTP/1.1\r\nHost: plain.{edge.config.domain}\r\n"
        f"Content-Length: 5\r\nX-A: b\r\n\r\nhello"
    ).encode()


mutation = st.tuples(
    st.sampled_from(["insert", "delete", "replace"]),
    st.integers(min_value=0, max_value=200),
    st.binary(min_size=1, max_size=8),
)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutations=st.lists(mutation, min_size=1, max_size=4), tail=st.binary(max_size=64))
def test_mutated_requests_get_a_status_or_a_close(
    edge: EdgeHarness, mutations: list[tuple[str, int, bytes]], tail: bytes
) -> None:
    data = bytearray(valid(edge))
    for kind, position, blob in mutations:
        position %= len(data) + 1
        if kind == "insert":
            data[position:position] = blob
        elif kind == "delete":
            del data[position : position + len(blob)]
        else:
            data[position : position + len(blob)] = blob
    reply = send(edge, bytes(data) + tail)
    if reply:
        assert reply.startswith(b"HTTP/1.1 "), reply[:80]
        assert reply[9:12].isdigit()
    assert send(edge, valid(edge)).startswith(b"HTTP/1.1 200")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(garbage=st.binary(min_size=1, max_size=2048))
def test_random_bytes_never_crash_the_worker(edge: EdgeHarness, garbage: bytes) -> None:
    reply = send(edge, garbage)
    if reply:
        assert reply.startswith(b"HTTP/1.1 ")
    assert send(edge, valid(edge)).startswith(b"HTTP/1.1 200")


def test_worker_survived(edge: EdgeHarness, tmp_path: Path) -> None:
    assert send(edge, valid(edge)).startswith(b"HTTP/1.1 200")
