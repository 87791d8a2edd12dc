"""The edge as a client sees it: HTTPS routing, policies, WebSockets, limits, bad input."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from aerodrome.edge.tls import TlsManager, hardened_context, server_connection
from aerodrome.edge.tlsstream import LINGER_SECONDS
from aerodrome.platform.http_service import Cors, HttpService
from tests import wss
from tests.edge.support import EchoApp, EdgeHarness, start_edge

ORIGIN_OK = "https://ok.example"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeHarness]:
    tmp = tmp_path_factory.mktemp("edge")
    harness, stop = start_edge(
        tmp, header_timeout=5.0, idle_timeout=8.0, upstream_timeout=2.0, max_body_bytes=64 * 1024
    )
    harness.snapshot["tmp"] = tmp
    cors = Cors(
        origins=(ORIGIN_OK,), methods=("GET", "POST"), headers=("x-custom",), credentials=True
    )
    harness.set_routes(
        {
            f"web.{harness.config.domain}": harness.route("web", HttpService(cors=cors)),
            f"plain.{harness.config.domain}": harness.route(
                "plain", HttpService(force_https=False)
            ),
            f"down.{harness.config.domain}": harness.route("down", upstreams=(("127.0.0.1", 1),)),
            f"empty.{harness.config.domain}": harness.route("empty", upstreams=()),
            f"ws.{harness.config.domain}": harness.route(
                "ws", HttpService(cors=cors), upstreams=(harness.ws_upstream,)
            ),
        }
    )
    yield harness
    stop()


def host(edge: EdgeHarness, app: str) -> str:
    return f"{app}.{edge.config.domain}"


_contexts_lock = threading.Lock()


def tls_socket(edge: EdgeHarness, server_name: str | None) -> ssl.SSLSocket:
    # One client context per harness and kind, made once: tests open connections from
    # several threads, and each context made writes the CA file afresh.
    key = "client context" if server_name is not None else "client context, no SNI"
    with _contexts_lock:
        ctx = edge.snapshot.get(key)
        if ctx is None:
            ctx = edge.snapshot[key] = edge.ca.client_context(edge.snapshot["tmp"])
            ctx.check_hostname = server_name is not None
    raw = socket.create_connection(("127.0.0.1", edge.config.https_port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname=server_name)


def https(
    edge: EdgeHarness,
    app: str,
    path: str = "/",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    sni: str | None = "",
) -> tuple[int, dict[str, str], bytes]:
    name = host(edge, app)
    conn = http.client.HTTPSConnection(name, edge.config.https_port, timeout=5)
    conn.sock = tls_socket(edge, name if sni == "" else sni)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def plain(
    edge: EdgeHarness, app: str, path: str = "/", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", edge.config.http_port, timeout=5)
    conn.request("GET", path, headers={"Host": host(edge, app), **(headers or {})})
    response = conn.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def raw_exchange(edge: EdgeHarness, data: bytes, app: str = "web", wait: float = 2.0) -> bytes:
    sock = tls_socket(edge, host(edge, app))
    sock.sendall(data)
    sock.settimeout(wait)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ssl.SSLError, ConnectionResetError):
        pass
    sock.close()
    return out


def seen_by_app(body: bytes) -> dict[str, Any]:
    data = json.loads(body)
    data["headers"] = {k: v for k, v in data["headers"]}
    return data


# -- HTTPS by default ---------------------------------------------------------------------------


def test_app_is_reached_over_https_by_name_with_hsts_and_request_id(edge: EdgeHarness) -> None:
    status, headers, body = https(edge, "web", "/hello?q=1")
    assert status == 200
    assert headers["strict-transport-security"] == "max-age=31536000"
    assert headers["aero-request-id"].startswith("req_")
    seen = seen_by_app(body)
    assert seen["path"] == "/hello?q=1"
    assert seen["headers"]["aero-request-id"] == headers["aero-request-id"]
    assert seen["headers"]["x-forwarded-proto"] == "https"
    assert seen["headers"]["x-forwarded-host"] == host(edge, "web")
    assert seen["headers"]["x-forwarded-port"] == str(edge.config.https_port)
    assert seen["headers"]["aero-client-ip"] == "127.0.0.1"
    assert seen["headers"]["aero-region"] == "local"


def test_plain_http_is_redirected_to_https_with_the_same_url(edge: EdgeHarness) -> None:
    status, headers, _ = plain(edge, "web", "/a/b?c=d")
    assert status == 301
    assert headers["location"] == f"https://{host(edge, 'web')}:{edge.config.https_port}/a/b?c=d"
    assert "strict-transport-security" not in headers  # HSTS only over HTTPS


def test_force_https_off_serves_plain_http(edge: EdgeHarness) -> None:
    status, _, body = plain(edge, "plain", "/x")
    assert status == 200 and seen_by_app(body)["headers"]["x-forwarded-proto"] == "http"


# Header names as clients spell them: the edge looks the usual spellings up as they come and
# lowers any other, so each must lead to the same treatment.
SPELLINGS = {"title": str, "lower": str.lower, "odd": str.swapcase}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_spoofed_forwarded_headers_are_dropped(edge: EdgeHarness, spelling: str) -> None:
    spell = SPELLINGS[spelling]
    _, _, body = https(
        edge,
        "web",
        headers={
            spell("X-Forwarded-For"): "6.6.6.6",
            spell("Aero-Client-IP"): "6.6.6.6",
            spell("X-Forwarded-Proto"): "http",
            spell("Aero-Request-Id"): "req_forged",
            spell("Forwarded"): "for=6.6.6.6",
        },
    )
    seen = seen_by_app(body)["headers"]
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["aero-client-ip"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["aero-request-id"] != "req_forged"
    assert "forwarded" not in seen


def test_hop_by_hop_response_headers_are_not_relayed_however_spelled(edge: EdgeHarness) -> None:
    status, headers, body = https(edge, "web", "/hop-headers")
    assert (status, body) == (200, b"hello")  # chunked from the app, framed again by the edge
    assert headers["x-kept"] == "yes"
    assert not {"keep-alive", "proxy-connection", "connection"} & set(headers)


def test_a_response_head_split_across_reads_is_relayed_whole(edge: EdgeHarness) -> None:
    """The edge reads the header lines to relay from the head's raw bytes: a head that
    arrives in pieces (cut inside a name, a hop-by-hop line, before the blank line) is relayed
    whole and without its hop-by-hop lines, also when an interim response came first."""
    status, headers, body = https(edge, "web", "/split-head")
    assert (status, body) == (200, b"done")
    assert (headers["x-first"], headers["x-second"], headers["content-length"]) == (
        "one",
        "two",
        "4",
    )
    assert not {"connection", "keep-alive"} & set(headers)
    status, headers, body = https(edge, "web", "/split-continue")
    assert (status, body, headers["x-after"]) == (200, b"final", "yes")
    status, _, body = https(edge, "web", "/after")  # the pooled connection is in step
    assert status == 200 and seen_by_app(body)["path"] == "/after"


def test_chunked_responses_and_request_bodies_pass_through(edge: EdgeHarness) -> None:
    status, _, body = https(edge, "web", "/chunked")
    assert (status, body) == (200, b"hello world")
    status, _, body = https(edge, "web", "/post", method="POST", body=b"x" * 5000)
    assert status == 200 and seen_by_app(body)["body"] == "x" * 5000


def test_keep_alive_serves_many_requests_on_one_connection(edge: EdgeHarness) -> None:
    name = host(edge, "web")
    conn = http.client.HTTPSConnection(name, edge.config.https_port, timeout=5)
    conn.sock = tls_socket(edge, name)
    ids = set()
    for i in range(20):
        conn.request("GET", f"/n/{i}")
        response = conn.getresponse()
        assert seen_by_app(response.read())["path"] == f"/n/{i}"
        ids.add(response.getheader("aero-request-id"))
    assert len(ids) == 20


def memory_bio_client(
    edge: EdgeHarness, name: str
) -> tuple[socket.socket, ssl.MemoryBIO, ssl.MemoryBIO, ssl.SSLObject]:
    """A TLS client over memory BIOs, handshake done: it decides itself when its records (and
    its close_notify) go out, and sees how the edge's stream ends."""
    ctx = edge.ca.client_context(edge.snapshot["tmp"])
    raw = socket.create_connection(("127.0.0.1", edge.config.https_port), timeout=5)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall(outgoing.read())
            data = raw.recv(65536)
            assert data, "the edge closed during the handshake"
            incoming.write(data)
    return raw, incoming, outgoing, tls


def read_to_close_notify(raw: socket.socket, incoming: ssl.MemoryBIO, tls: ssl.SSLObject) -> bytes:
    """Everything the edge sends until it closes the TCP stream, decrypted. Reading ends
    cleanly only at the edge's close_notify; a stream cut without one raises SSLEOFError."""
    stream = b""
    while chunk := raw.recv(65536):  # to the end of the TCP stream
        stream += chunk
    raw.close()
    incoming.write(stream)
    incoming.write_eof()
    response = b""
    # A clean end: read() returns b"", or, for a client that sent its own close_notify first,
    # raises SSLZeroReturnError.
    with contextlib.suppress(ssl.SSLZeroReturnError):
        while chunk := tls.read(65536):
            response += chunk
    return response


@pytest.mark.parametrize(
    ("host_header", "status"),
    [(None, b"200"), ("other.example", b"421")],
    ids=["proxied", "made-by-the-edge"],
)
def test_a_last_response_ends_with_close_notify_and_the_edge_closes_without_waiting(
    edge: EdgeHarness, host_header: str | None, status: bytes
) -> None:
    """After `Connection: close` the edge sends close_notify and closes the socket itself,
    without waiting for the client's close_notify (this client never sends one; were the
    edge lingering, it would close only after the client had been quiet for
    `LINGER_SECONDS`, past this socket's timeout). The client still gets the whole response
    and a clean TLS close. The same for a response the edge makes from the request's head
    alone (here a 421: the Host is not the name the connection was made for)."""
    name = host(edge, "web")
    raw, incoming, outgoing, tls = memory_bio_client(edge, name)
    raw.settimeout(LINGER_SECONDS / 2)
    tls.write(
        b"GET /last HTTP/1.1\r\nHost: %b\r\nConnection: close\r\n\r\n"
        % (host_header or name).encode()
    )
    raw.sendall(outgoing.read())
    head, body = read_to_close_notify(raw, incoming, tls).split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 " + status) and b"connection: close" in head
    if host_header is None:
        assert seen_by_app(body)["path"] == "/last"


def test_a_close_the_edge_forces_on_a_keep_alive_client_lingers(edge: EdgeHarness) -> None:
    """A keep-alive client's broken request (here: no Host) gets its 400 and close_notify,
    but the edge keeps reading (and discarding) instead of closing the socket at once: the
    client may already be sending its next request, and a reset would destroy the 400."""
    raw, incoming, outgoing, tls = memory_bio_client(edge, host(edge, "web"))
    tls.write(b"GET /a HTTP/1.1\r\nX-Note: no Host\r\n\r\n")
    raw.sendall(outgoing.read())
    raw.settimeout(1.0)
    stream, ended = b"", False
    try:
        while chunk := raw.recv(65536):
            stream += chunk
        ended = True  # the edge closed the TCP stream
    except TimeoutError:
        pass
    raw.close()
    incoming.write(stream)
    response = b""
    while chunk := tls.read(65536):  # b"" at the edge's close_notify (else SSLWantReadError)
        response += chunk
    assert response.startswith(b"HTTP/1.1 400") and b"connection: close" in response
    assert not ended, "the edge closed at once instead of lingering"


def split_responses(stream: bytes) -> list[tuple[bytes, bytes]]:
    """(head, body) of each Content-Length response in `stream`, in order."""
    responses = []
    while stream:
        head, stream = stream.split(b"\r\n\r\n", 1)
        length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        responses.append((head, stream[:length]))
        stream = stream[length:]
    return responses


@pytest.mark.parametrize("then_fin", [False, True], ids=["close_notify", "close_notify+FIN"])
def test_a_client_that_sends_close_notify_after_its_requests_gets_the_responses(
    edge: EdgeHarness, then_fin: bool
) -> None:
    """TLS lets a client end its side (close_notify, and then perhaps a TCP FIN) and still
    read: requests already sent are answered, then the edge closes its side too."""
    name = host(edge, "web")
    raw, incoming, outgoing, tls = memory_bio_client(edge, name)
    for path in ("/sleep/300", "/two"):  # the answers come after the client's end
        tls.write(b"GET %b HTTP/1.1\r\nHost: %b\r\n\r\n" % (path.encode(), name.encode()))
    with pytest.raises(ssl.SSLWantReadError):
        tls.unwrap()  # close_notify written; the edge's is not here yet
    raw.sendall(outgoing.read())
    if then_fin:
        raw.shutdown(socket.SHUT_WR)
    responses = split_responses(read_to_close_notify(raw, incoming, tls))
    assert [head.split(b"\r\n", 1)[0] for head, _ in responses] == [b"HTTP/1.1 200 OK"] * 2
    assert seen_by_app(responses[1][1])["path"] == "/two"


def test_what_a_client_sends_after_its_close_notify_is_not_kept(edge: EdgeHarness) -> None:
    """Bytes after close_notify are never read: a client cannot make the edge hold them
    (OpenSSL would leave them all in the connection's buffer) while its request is answered.
    Only the sockets' buffers take some; then the client's sends block."""
    name = host(edge, "web")
    raw, incoming, outgoing, tls = memory_bio_client(edge, name)
    tls.write(b"GET /sleep/1500 HTTP/1.1\r\nHost: %b\r\n\r\n" % name.encode())
    with pytest.raises(ssl.SSLWantReadError):
        tls.unwrap()
    raw.sendall(outgoing.read())
    raw.settimeout(1.0)
    junk, sent = bytes(1 << 20), 0
    with contextlib.suppress(TimeoutError):
        while sent < 256 << 20:
            sent += raw.send(junk)
    assert sent < 64 << 20, f"the edge took {sent >> 20} MiB after the close_notify"
    raw.settimeout(10)
    stream = b""
    with contextlib.suppress(ConnectionResetError):  # the unread junk makes the close a reset
        while chunk := raw.recv(65536):
            stream += chunk
    raw.close()
    incoming.write(stream)
    ((head, _),) = split_responses(tls.read(65536))
    assert head.startswith(b"HTTP/1.1 200")
    with pytest.raises(ssl.SSLZeroReturnError):  # and then the edge's close_notify
        tls.read(65536)


def test_a_refused_upload_still_sending_is_read_until_the_client_pauses(
    edge: EdgeHarness,
) -> None:
    """A request refused before its body (413) closes the connection, but the edge keeps
    reading (and dropping) while the client keeps sending, past the 5 s a quiet client gets,
    so that the client is not reset mid-send before it reads the answer; once the client
    pauses for 5 s, the edge closes."""
    name = host(edge, "web")
    raw, incoming, outgoing, tls = memory_bio_client(edge, name)
    tls.write(
        b"POST / HTTP/1.1\r\nHost: %b\r\nContent-Length: %d\r\n\r\n" % (name.encode(), 64 << 20)
    )
    raw.sendall(outgoing.read())
    started = time.monotonic()
    while time.monotonic() - started < 7.0:  # past LINGER_SECONDS, at a trickle
        tls.write(bytes(16 << 10))
        raw.sendall(outgoing.read())  # a reset here (EPIPE, ECONNRESET) fails the test
        time.sleep(0.25)
    paused = time.monotonic()
    raw.settimeout(15)
    stream = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := raw.recv(65536):  # the answer and close_notify at once; the close later
            stream += chunk
    assert 4.0 < time.monotonic() - paused < 8.0
    raw.close()
    incoming.write(stream)
    assert tls.read(65536).startswith(b"HTTP/1.1 413")


def test_a_stalled_tls_handshake_is_closed_after_the_header_timeout(edge: EdgeHarness) -> None:
    """A connection that never finishes its handshake holds a socket only as long as a
    request's headers may take; other clients are served meanwhile."""
    stalled = socket.create_connection(("127.0.0.1", edge.config.https_port), timeout=30)
    stalled.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, no more
    started = time.monotonic()
    assert https(edge, "web")[0] == 200
    assert stalled.recv(65536) == b""  # closed by the edge, without a word
    waited = time.monotonic() - started
    assert edge.config.header_timeout - 1 < waited < edge.config.header_timeout + 2
    stalled.close()


# -- CORS ---------------------------------------------------------------------------------------


def test_cors_preflight_is_answered_at_the_edge(edge: EdgeHarness) -> None:
    status, headers, _ = https(
        edge,
        "web",
        method="OPTIONS",
        headers={
            "Origin": ORIGIN_OK,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-Custom",
        },
    )
    assert status == 204
    assert headers["access-control-allow-origin"] == ORIGIN_OK
    assert headers["access-control-allow-credentials"] == "true"
    assert "POST" in headers["access-control-allow-methods"]
    status, headers, _ = https(
        edge,
        "web",
        method="OPTIONS",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert status == 403 and "access-control-allow-origin" not in headers


def test_cors_headers_on_app_responses_and_on_edge_errors(edge: EdgeHarness) -> None:
    _, headers, _ = https(edge, "web", headers={"Origin": ORIGIN_OK})
    assert headers["access-control-allow-origin"] == ORIGIN_OK and headers["vary"] == "Origin"
    _, headers, _ = https(edge, "web", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in headers
    # The app is down: the browser must see a 502 it can read, not a CORS failure.
    status, headers, body = https(
        edge, "down", headers={"Origin": f"https://{host(edge, 'down')}:{edge.config.https_port}"}
    )
    assert status == 502 and json.loads(body)["error"]["code"] == "bad_gateway"
    assert "access-control-allow-origin" in headers


# -- errors and limits --------------------------------------------------------------------------


def test_an_app_that_never_answers_gets_504(edge: EdgeHarness) -> None:
    started = time.monotonic()
    status, headers, body = https(edge, "web", "/hang", headers={"Origin": ORIGIN_OK})
    assert status == 504 and json.loads(body)["error"]["code"] == "gateway_timeout"
    assert headers["access-control-allow-origin"] == ORIGIN_OK
    assert time.monotonic() - started < edge.config.upstream_timeout + 2
    assert https(edge, "web")[0] == 200


def test_a_pipelined_request_does_not_lift_the_timeout_of_the_one_before_it(
    edge: EdgeHarness,
) -> None:
    assert https(edge, "web")[0] == 200  # an idle upstream connection for /hang to reuse
    name = host(edge, "web").encode()
    answer = raw_exchange(
        edge,
        b"GET /hang HTTP/1.1\r\nHost: %b\r\n\r\nGET /after HTTP/1.1\r\nHost: %b\r\n\r\n"
        % (name, name),
        wait=edge.config.upstream_timeout + 3,
    )
    assert answer.startswith(b"HTTP/1.1 504 ")
    assert b"HTTP/1.1 200 " in answer and b'"path": "/after"' in answer


def test_an_interim_100_continue_is_not_taken_for_the_response(edge: EdgeHarness) -> None:
    status, _, body = https(edge, "web", "/continue")
    assert (status, body) == (200, b"final")
    status, _, body = https(edge, "web", "/after")  # the connection is in step with the app
    assert status == 200 and seen_by_app(body)["path"] == "/after"


def test_an_http10_answer_after_an_interim_response_is_not_pooled(edge: EdgeHarness) -> None:
    """An upstream connection whose final response is HTTP/1.0 is never reused (the edge may
    send HTTP/1.1-only framing on it), even when an HTTP/1.1 interim response came first."""
    before = seen_by_app(https(edge, "web", "/before")[2])["connection"]
    assert https(edge, "web", "/continue-http10")[2] == b"final"
    after = seen_by_app(https(edge, "web", "/after")[2])["connection"]
    # The last connection released is the first reused: had the HTTP/1.0 one gone back to the
    # pool, /after would have come over it, the connection /before used.
    assert after != before


def test_an_app_that_answers_before_the_body_arrives_is_not_reused(edge: EdgeHarness) -> None:
    name = host(edge, "web").encode()
    answer = raw_exchange(
        edge,
        b"POST /early HTTP/1.1\r\nHost: %b\r\nContent-Length: 50000\r\n\r\n" % name + b"x" * 1000,
    )
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"early")
    # The app still waits for 49,000 body bytes on that connection: reused, it would read the
    # next request as body.
    for _ in range(3):
        status, _, body = https(edge, "web", "/after")
        assert status == 200 and seen_by_app(body)["path"] == "/after"


def test_no_upstream_is_503_with_retry_after(edge: EdgeHarness) -> None:
    status, headers, body = https(edge, "empty")
    assert status == 503 and headers["retry-after"] == "1"
    assert json.loads(body)["error"]["request_id"] == headers["aero-request-id"]


def test_unknown_host_is_404_without_naming_other_apps(edge: EdgeHarness) -> None:
    name = host(edge, "web")
    conn = http.client.HTTPSConnection(name, edge.config.https_port, timeout=5)
    conn.sock = tls_socket(edge, name)
    conn.request("GET", "/", headers={"Host": "nope.example"})
    response = conn.getresponse()
    body = response.read()
    # The connection was made for web.…; a request for another host on it is misdirected.
    assert response.status == 421
    for app in ("web", "plain", "down", "ws"):
        assert app.encode() + b"." not in body
    status, _, body = plain(edge, "no-such-app")
    assert status == 404 and b"web." not in body


def test_tls_without_sni_or_for_an_unknown_name_gets_no_handshake(edge: EdgeHarness) -> None:
    for name in (None, "unknown.example"):
        with pytest.raises(ssl.SSLError):
            tls_socket(edge, name)
    status, _, _ = https(edge, "web")  # and the edge is still fine
    assert status == 200


def _openssl_client(edge: EdgeHarness, *flags: str) -> str:
    """What `openssl s_client` saw of a handshake with the edge (its messages and key)."""
    address = f"127.0.0.1:{edge.config.https_port}"
    done = subprocess.run(
        ["openssl", "s_client", "-connect", address, "-servername", host(edge, "web"), *flags],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
    )
    return done.stdout + done.stderr


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_a_browser_leading_with_x25519_gets_no_extra_round_trip(
    edge: EdgeHarness, version: str
) -> None:
    # Browsers send an X25519 key share first (P-256 second, if at all). A server that takes
    # P-256 alone asks again (HelloRetryRequest: a second ServerHello), a round trip more on
    # every new connection.
    seen = _openssl_client(edge, "-groups", "X25519:P-256", "-msg", version)
    assert seen.count("], ServerHello\n") == 1, seen
    assert "Server Temp Key: X25519" in seen
    seen = _openssl_client(edge, "-groups", "P-256", version)  # a P-256-only client still fits
    assert "Server Temp Key: ECDH, prime256v1" in seen
    # Finite-field groups cost the server far more per handshake: not offered.
    seen = _openssl_client(edge, "-groups", "ffdhe2048", "-tls1_3")
    assert "Server Temp Key" not in seen and "Cipher is (NONE)" in seen


def test_the_tls_layer_calls_openssl_without_python_wrappers() -> None:
    # The edge's TLS layer works on the `ssl` module's C object itself: every call it makes
    # (read and write per record; handshake and close per connection) goes straight to C.
    conn = server_connection(hardened_context(), ssl.MemoryBIO(), ssl.MemoryBIO())
    for method in (conn.read, conn.write, conn.pending, conn.do_handshake, conn.shutdown):
        assert type(method).__name__ == "builtin_function_or_method"
    assert type(ssl.SSLObject.do_handshake).__name__ == "function"  # what it avoids: Python
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()  # no ClientHello yet: the error the layer expects
    assert conn.server_side and conn.pending() == 0


def test_oversized_headers_431_and_body_413(edge: EdgeHarness) -> None:
    huge = "x" * (edge.config.max_header_bytes + 10)
    reply = raw_exchange(
        edge, f"GET / HTTP/1.1\r\nHost: {host(edge, 'web')}\r\nX-Big: {huge}\r\n\r\n".encode()
    )
    assert reply.startswith(b"HTTP/1.1 431")
    status, _, _ = https(edge, "web", method="POST", body=b"y" * (edge.config.max_body_bytes + 1))
    assert status == 413


def test_a_body_read_as_its_own_segments_does_not_count_against_the_next_head(
    edge: EdgeHarness,
) -> None:
    """Keep-alive after a body: the next request's head, arriving in two reads, is judged by
    its own size (the body bytes before it are not header bytes)."""
    name = host(edge, "web")
    sock = tls_socket(edge, name)
    body = b"b" * (edge.config.max_header_bytes + 4096)
    sock.sendall(
        f"POST /first HTTP/1.1\r\nHost: {name}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    )
    time.sleep(0.05)
    sock.sendall(body)
    first = http.client.HTTPResponse(sock)  # type: ignore[arg-type]
    first.begin()
    assert first.status == 200 and len(seen_by_app(first.read())["body"]) == len(body)
    sock.sendall(b"GET /second HTTP/1.1\r\n")
    time.sleep(0.05)
    sock.sendall(f"Host: {name}\r\n\r\n".encode())
    second = http.client.HTTPResponse(sock)  # type: ignore[arg-type]
    second.begin()
    assert second.status == 200 and seen_by_app(second.read())["path"] == "/second"
    sock.close()


def test_a_body_larger_than_the_buffer_reaches_the_app_at_once(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Reading pauses while a large body waits for its upstream connection, and resumes when
    the connection takes it: no stall until the upstream timeout (a 504)."""
    harness, stop = start_edge(
        tmp_path_factory.mktemp("big"), upstream_timeout=5.0, max_body_bytes=8 * 1024 * 1024
    )
    harness.snapshot["tmp"] = tmp_path_factory.mktemp("big-ca")
    try:
        harness.set_routes({host(harness, "web"): harness.route("web")})
        body = b"z" * (2 * 1024 * 1024)
        started = time.monotonic()
        status, _, reply = https(harness, "web", method="POST", body=body)
        assert status == 200 and len(seen_by_app(reply)["body"]) == len(body)
        assert time.monotonic() - started < harness.config.upstream_timeout
    finally:
        stop()


def test_slowloris_gets_408_and_a_close(edge: EdgeHarness) -> None:
    sock = tls_socket(edge, host(edge, "web"))
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {host(edge, 'web')}\r\n".encode())  # never finished
    sock.settimeout(edge.config.header_timeout + 5)
    started = time.monotonic()
    reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < edge.config.header_timeout + 2
    assert sock.recv(65536) == b""  # closed
    sock.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"GET / HTTP/1.1\r\nHost: {h}\r\nX-Folded: a\r\n  b\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: {h}\r\nHost: other\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GARBAGE\r\n\r\n",
    ],
    ids=["cl-and-te", "two-cl", "folding", "bad-chunk", "te-gzip", "two-hosts", "no-host", "junk"],
)
def test_smuggling_and_malformed_requests_are_refused_and_closed(
    edge: EdgeHarness, request_bytes: bytes
) -> None:
    data = request_bytes.replace(b"{h}", host(edge, "web").encode())
    # A valid request follows on the same connection: it must never reach the app.
    follow = f"GET /smuggled HTTP/1.1\r\nHost: {host(edge, 'web')}\r\n\r\n".encode()
    reply = raw_exchange(edge, data + follow)
    assert reply.split(b" ", 2)[1] in (b"400", b"501"), reply[:100]
    assert b"/smuggled" not in reply
    assert reply.count(b"HTTP/1.1 ") == 1


def test_abrupt_disconnect_mid_body_leaves_the_worker_serving(edge: EdgeHarness) -> None:
    for _ in range(5):
        sock = tls_socket(edge, host(edge, "web"))
        sock.sendall(
            f"POST /p HTTP/1.1\r\nHost: {host(edge, 'web')}\r\nContent-Length: 1000\r\n"
            f"\r\npartial".encode()
        )
        sock.close()
    assert https(edge, "web")[0] == 200


# -- WebSockets ---------------------------------------------------------------------------------


def ws_connect(edge: EdgeHarness, origin: str | None, app: str = "ws") -> Any:
    return wss.connect(
        host(edge, app),
        edge.config.https_port,
        "/socket",
        context=edge.ca.client_context(edge.snapshot["tmp"]),
        origin=origin,
        timeout=5,
        max_size=2**22,
    )


def test_websocket_echo_over_wss_with_the_apps_own_origin(edge: EdgeHarness) -> None:
    own = f"https://{host(edge, 'ws')}:{edge.config.https_port}"
    with ws_connect(edge, own) as ws:
        hello = json.loads(ws.recv())
        assert hello["path"] == "/socket"
        assert hello["headers"]["x-forwarded-proto"] == "https"
        for size in (64, 16 * 1024, 1024 * 1024):
            message = "m" * size
            ws.send(message)
            assert ws.recv() == message
    with ws_connect(edge, ORIGIN_OK) as ws:  # a configured CORS origin is allowed too
        ws.recv()


def test_websocket_from_a_foreign_origin_is_refused(edge: EdgeHarness) -> None:
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(edge, "https://evil.example")
    assert refused.value.response.status_code == 403


def test_plain_ws_is_redirected_to_wss(edge: EdgeHarness) -> None:
    status, headers, _ = plain(
        edge,
        "ws",
        "/socket",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert status == 301
    assert headers["location"].startswith(f"https://{host(edge, 'ws')}:")


def test_websockets_are_isolated_from_each_other(edge: EdgeHarness) -> None:
    own = f"https://{host(edge, 'ws')}:{edge.config.https_port}"
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(ws_connect(edge, own)) for _ in range(5)]
        for ws in sockets:
            ws.recv()
        for i, ws in enumerate(sockets):
            ws.send(f"from-{i}")
        for i, ws in enumerate(sockets):
            assert ws.recv() == f"from-{i}"


def test_route_change_keeps_open_websockets(edge: EdgeHarness) -> None:
    own = f"https://{host(edge, 'ws')}:{edge.config.https_port}"
    with ws_connect(edge, own) as ws:
        ws.recv()
        routes = dict(edge.worker.table.routes)
        edge.set_routes(routes)  # a new revision, new table object
        ws.send("still here")
        assert ws.recv() == "still here"


def test_an_idle_websocket_is_closed_after_the_apps_idle_timeout(edge: EdgeHarness) -> None:
    """With `websocket_idle_timeout`, the tunnel relays through Python (to note each read's
    time) instead of being spliced: it still echoes, and closes once idle that long."""
    routes = dict(edge.worker.table.routes)
    routes[host(edge, "wsidle")] = edge.route(
        "wsidle", HttpService(websocket_idle_timeout=1.5), upstreams=(edge.ws_upstream,)
    )
    edge.set_routes(routes)
    own = f"https://{host(edge, 'wsidle')}:{edge.config.https_port}"
    with ws_connect(edge, own, app="wsidle") as ws:
        assert json.loads(ws.recv())["path"] == "/socket"
        ws.send("kept alive")
        assert ws.recv() == "kept alive"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=20)  # the edge closes it after 1.5 s of silence


def test_access_log_has_no_query_strings_or_credentials(edge: EdgeHarness) -> None:
    https(
        edge,
        "web",
        "/logged?token=sekrit",
        headers={"Authorization": "Bearer sekrit", "Cookie": "s=sekrit"},
    )
    name = host(edge, "web")
    raw_exchange(  # absolute-form, with credentials in its authority
        edge, f"GET https://user:sekrit@{name}/absolute HTTP/1.1\r\nHost: {name}\r\n\r\n".encode()
    )
    raw_exchange(  # no app at this name: logged without one
        edge, f"GET /unrouted HTTP/1.1\r\nHost: nobody.{name}\r\n\r\n".encode(), wait=0.2
    )
    edge.worker.access_log.flush()
    log = (edge.snapshot["tmp"] / "access.log").read_text()
    assert '"path": "/logged"' in log and '"path": "/absolute"' in log
    assert "sekrit" not in log
    lines = [json.loads(text) for text in log.strip().splitlines()]  # every line is JSON
    line = next(line for line in reversed(lines) if line["path"] == "/absolute")
    assert line["status"] == 200 and line["app"] == "web" and line["tls"] is True
    unrouted = next(line for line in reversed(lines) if line["path"] == "/unrouted")
    assert unrouted["app"] == "-" and unrouted["status"] == 421 and unrouted["method"] == "GET"


def test_closed_connections_are_freed_without_the_cycle_collector(edge: EdgeHarness) -> None:
    """A closed connection's protocol, TLS layer and parser reference each other only until
    the close: a worker must not depend on the cycle collector to get its memory back. (Idle
    upstream connections stay in the pool; closed ones, such as a WebSocket's, must go.)"""
    import gc

    from aerodrome.edge.proxy import EdgeProtocol
    from aerodrome.edge.tlsstream import TlsStream
    from aerodrome.edge.upstream import UpstreamConnection

    def alive() -> dict[int, object]:
        async def find() -> dict[int, object]:
            return {
                id(obj): obj
                for obj in gc.get_objects()
                if type(obj) in (EdgeProtocol, TlsStream)
                or (type(obj) is UpstreamConnection and obj.closed)
            }

        return dict(edge.run(find()))

    name = host(edge, "web")
    gc.collect()
    gc.disable()
    before: dict[int, object] = {}
    try:
        # Held, so that their ids are not reused: an earlier test's connection may still be
        # closing now, and be freed meanwhile.
        before = alive()
        for _ in range(3):
            assert https(edge, "web", "/kept")[0] == 200  # keep-alive, then the client closes
            raw_exchange(
                edge, f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode()
            )
            raw_exchange(edge, f"GET / HTTP/1.1\r\nHost: nobody.{name}\r\n\r\n".encode(), wait=0.2)
            with ws_connect(edge, f"https://{host(edge, 'ws')}:{edge.config.https_port}") as ws:
                ws.send("bye")
                assert ws.recv() is not None
        deadline = time.monotonic() + 10
        while edge.worker.metrics.open_connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert edge.worker.metrics.open_connections == 0
        left = [obj for key, obj in alive().items() if key not in before]
        assert left == []
    finally:
        before.clear()
        gc.enable()


def _edge_buffered_bytes(edge: EdgeHarness) -> int:
    import gc

    from aerodrome.edge.proxy import EdgeProtocol
    from aerodrome.edge.upstream import UpstreamConnection

    async def measure() -> int:
        total = 0
        for obj in gc.get_objects():
            if type(obj) in (EdgeProtocol, UpstreamConnection) and obj.transport is not None:
                total += obj.transport.get_write_buffer_size()
        return total

    return int(edge.run(measure()))


def test_a_client_that_does_not_read_cannot_grow_edge_memory(edge: EdgeHarness) -> None:
    """Backpressure both ways: the app echoes everything back to a client that never reads;
    the edge stops reading from each side when the other is full, so the sender blocks and
    the edge's buffers stay small."""
    import threading

    name = host(edge, "ws")
    sock = tls_socket(edge, name)
    sock.sendall(
        f"GET /socket HTTP/1.1\r\nHost: {name}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Origin: https://{name}:{edge.config.https_port}\r\n\r\n".encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    payload = b"z" * (1024 * 1024)
    # A masked binary frame (a zero mask leaves the payload as is), sent over and over.
    frame = b"\x82\xff" + len(payload).to_bytes(8, "big") + b"\0\0\0\0" + payload
    sent = 0

    def flood() -> None:
        nonlocal sent
        try:
            while sent < 256:
                sock.sendall(frame)
                sent += 1
        except OSError:
            pass

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    thread.join(4.0)
    blocked = thread.is_alive()
    buffered = _edge_buffered_bytes(edge)
    sock.close()
    assert blocked, f"sending to a client that never reads should block (sent {sent} MiB)"
    assert buffered < 4 * 1024 * 1024, f"the edge buffered {buffered} bytes"


def test_one_unusable_certificate_costs_only_its_own_hostname(edge: EdgeHarness) -> None:
    manager = TlsManager()
    manager.update(
        {"good.test.internal": edge.ca.issue("good.test.internal"),
         "bad.test.internal": (b"not a certificate", b"not a key")},
    )  # fmt: skip
    assert set(manager._contexts) == {"good.test.internal"}


# -- concurrency limits -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeHarness]:
    """An edge whose app `one` takes one request at a time (hard_limit 1) and lets others wait
    in line for up to two seconds."""
    tmp = tmp_path_factory.mktemp("limited")
    harness, stop = start_edge(tmp, queue_timeout=2.0)
    harness.snapshot["tmp"] = tmp
    service = HttpService(soft_limit=1, hard_limit=1, cors=Cors(origins=(ORIGIN_OK,)))
    harness.set_routes({f"one.{harness.config.domain}": harness.route("one", service)})
    yield harness
    stop()


def test_requests_over_the_hard_limit_wait_in_line_and_are_all_served(
    limited: EdgeHarness,
) -> None:
    EchoApp.peak = 0
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: https(limited, "one", "/sleep/100"), range(4)))
    assert [status for status, _, _ in answers] == [200] * 4
    # The app never had more than one of them at a time.
    assert max(json.loads(body)["peak"] for _, _, body in answers) == 1


def test_a_request_still_in_line_at_the_queue_timeout_gets_503_with_retry_after(
    limited: EdgeHarness,
) -> None:
    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(https, limited, "one", "/sleep/3500")
        time.sleep(0.3)
        started = time.monotonic()
        status, headers, body = https(limited, "one", "/", headers={"Origin": ORIGIN_OK})
        waited = time.monotonic() - started
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(body)["error"]["message"] == "the app is at its concurrency limit"
        assert headers["access-control-allow-origin"] == ORIGIN_OK  # a browser sees the 503
        assert waited >= 1.8  # it waited in line first, it was not refused at once
        assert holder.result()[0] == 200
    assert https(limited, "one")[0] == 200  # the slot came back


def test_a_client_that_leaves_the_line_does_not_take_the_next_free_slot(
    limited: EdgeHarness,
) -> None:
    EchoApp.peak = 0
    name = host(limited, "one")
    with ThreadPoolExecutor(2) as pool:
        holder = pool.submit(https, limited, "one", "/sleep/500")
        time.sleep(0.2)
        # This one would hold the slot for 5 s if it were still served after leaving.
        gone = tls_socket(limited, name)
        gone.sendall(b"GET /sleep/5000 HTTP/1.1\r\nHost: %b\r\n\r\n" % name.encode())
        time.sleep(0.1)
        gone.close()
        follower = pool.submit(https, limited, "one", "/sleep/10")
        assert holder.result()[0] == 200
        status, _, body = follower.result()
    assert status == 200 and json.loads(body)["peak"] == 1
