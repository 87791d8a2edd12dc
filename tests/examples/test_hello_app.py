"""examples/hello/app.py on its own: run as a machine runs it (system python3, a clean
environment, $PORT), spoken to over raw sockets so each RFC 6455 rule is tested exactly."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aerodrome.runtime.agent import free_port

APP = Path(__file__).resolve().parents[2] / "examples" / "hello" / "app.py"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # the RFC's own example: its accept value is known
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
SECRET = "an-example-session-key-0123456789"


def start(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        ["python3", str(APP)],
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "PORT": str(port), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError(f"app.py did not listen: {process.communicate()[0]!r}")


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    process, port = start({"SESSION_KEY": SECRET, "AERO_RELEASE": "7"})
    yield process, port
    if process.poll() is None:
        process.terminate()
        process.wait(10)


@pytest.fixture
def port(app: tuple[subprocess.Popen[bytes], int]) -> int:
    return app[1]


def handshake(port: int, extra: str = "", key: str = KEY) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: hello\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade"
        f"\r\nSec-WebSocket-Key: {key}\r\n{extra or 'Sec-WebSocket-Version: 13'}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return sock, head


def send(
    sock: socket.socket, opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True
) -> None:
    key = os.urandom(4)
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    length = struct.pack("!B", n) if n < 126 else struct.pack("!BH", 126, n)
    if n >= 1 << 16:
        length = struct.pack("!BQ", 127, n)
    length = bytes([length[0] | (0x80 if mask else 0)]) + length[1:]
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if mask else payload
    sock.sendall(bytes([first]) + length + (key if mask else b"") + body)


def recv(sock: socket.socket) -> tuple[int, bytes]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    first, second = exactly(2)
    assert first & 0x80 and not second & 0x80, "server frames are final and unmasked"
    n = second & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", exactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", exactly(8))
    return first & 0x0F, exactly(n)


def close_code(sock: socket.socket) -> int:
    opcode, payload = recv(sock)
    assert opcode == 0x8
    return int(struct.unpack("!H", payload[:2])[0])


def test_page_uses_the_secret_without_showing_it(port: int) -> None:
    response = httpx.get(f"http://127.0.0.1:{port}/")
    assert response.status_code == 200
    assert "release <b>7</b>" in response.text
    assert f"SESSION_KEY is set ({len(SECRET)} bytes)" in response.text
    assert SECRET not in response.text and SECRET not in str(response.headers)
    # The signed counter: a valid cookie counts on, a forged one starts over.
    signed = response.cookies["visits"]
    again = httpx.get(f"http://127.0.0.1:{port}/", headers={"cookie": f"visits={signed}"})
    assert "visit <b>2</b>" in again.text
    forged = httpx.get(
        f"http://127.0.0.1:{port}/", headers={"cookie": "visits=99." + signed.split(".")[1]}
    )
    assert "visit <b>1</b>" in forged.text
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").text == "ok\n"
    assert httpx.get(f"http://127.0.0.1:{port}/nope").status_code == 404
    assert httpx.post(f"http://127.0.0.1:{port}/", content=b"x").status_code == 405


def test_a_missing_secret_is_said_plainly() -> None:
    process, port = start({})
    try:
        body = httpx.get(f"http://127.0.0.1:{port}/").text
        assert "SESSION_KEY is missing" in body
    finally:
        process.terminate()
        process.wait(10)


def test_handshake_echo_fragments_and_ping(port: int) -> None:
    sock, head = handshake(port)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert f"Sec-WebSocket-Accept: {ACCEPT}".encode() in head
    send(sock, 0x1, "héllo".encode())
    assert recv(sock) == (0x1, "héllo".encode())
    big = os.urandom(60_000)
    send(sock, 0x2, big)
    assert recv(sock) == (0x2, big)
    # A fragmented message with a ping between its fragments: pong first, then the message.
    send(sock, 0x1, b"frag", fin=False)
    send(sock, 0x9, b"are you there")
    send(sock, 0x0, b"ments")
    assert recv(sock) == (0xA, b"are you there")
    assert recv(sock) == (0x1, b"fragments")
    send(sock, 0x8, struct.pack("!H", 1000) + b"bye")
    assert close_code(sock) == 1000
    assert sock.recv(1) == b""  # the server closes the connection after the close handshake
    sock.close()


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([(0x1, b"unmasked", True, False)], 1002),
        ([(0x0, b"continuation of nothing", True, True)], 1002),
        ([(0x1, b"a", False, True), (0x1, b"b", True, True)], 1002),
        ([(0x9, b"fragmented ping", False, True)], 1002),
        ([(0x3, b"reserved opcode", True, True)], 1002),
        ([(0x1, b"\xff\xfe not utf-8", True, True)], 1007),
        ([(0x2, b"x" * 40_000, False, True), (0x0, b"x" * 40_000, True, True)], 1009),
    ],
)
def test_protocol_errors_close_with_the_right_code(
    port: int, frames: list[tuple[int, bytes, bool, bool]], code: int
) -> None:
    sock, _ = handshake(port)
    for opcode, payload, fin, mask in frames:
        send(sock, opcode, payload, fin=fin, mask=mask)
    assert close_code(sock) == code
    sock.close()


def test_an_oversized_frame_is_refused_before_it_is_read(port: int) -> None:
    sock, _ = handshake(port)
    sock.sendall(bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 1 << 40) + os.urandom(4))
    assert close_code(sock) == 1009
    sock.close()


def test_bad_handshakes_are_refused(port: int) -> None:
    sock, head = handshake(port, extra="Sec-WebSocket-Version: 8")
    assert head.startswith(b"HTTP/1.1 426 ")
    sock.close()
    sock, head = handshake(port, key="too-short")
    assert head.startswith(b"HTTP/1.1 400 ")
    sock.close()
    assert httpx.get(f"http://127.0.0.1:{port}/ws").status_code == 426


def test_sigterm_tells_websocket_clients_it_is_going_away() -> None:
    process, port = start({})
    sock, _ = handshake(port)
    send(sock, 0x1, b"still here")
    assert recv(sock) == (0x1, b"still here")
    process.terminate()
    assert close_code(sock) == 1001
    assert process.wait(10) == 0
    sock.close()
