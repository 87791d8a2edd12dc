"""The machine-local API: a machine asks its socket who it is; the credential behind the answer
stays with the agent; a revoked credential gets no identity; bad requests get clean errors."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aerodrome.ids import new_id
from aerodrome.platform import apps as app_rules
from aerodrome.platform import orgs as org_rules
from aerodrome.platform import tokens as token_records
from aerodrome.platform.apps import MACHINE_UIDS
from aerodrome.runtime.localapi import (
    MAX_HEAD,
    HttpError,
    Identity,
    LocalApi,
    MachineCredentialCheck,
    bind_private,
    parse_head,
)
from aerodrome.runtime.machine import LogLine, Machine, MachineSpec
from aerodrome.secrets.redact import Redactor
from aerodrome.services import Services
from aerodrome.store.models import Token
from aerodrome.tokens.mint import Scope
from aerodrome.tokens.verify import ALLOW, Decision

IDENTITY = Identity(
    app="web",
    app_id="app_" + "a" * 24,
    org="acme",
    org_id="org_" + "o" * 24,
    machine="mch_" + "m" * 24,
    release=7,
    region="local",
)
PRODUCTION, TEST = MACHINE_UIDS["production"][0], MACHINE_UIDS["test"][1]
CURL = 'curl -sS -w "status=%{http_code}\\n" --unix-socket "$AERO_API_SOCKET" http://x/v1/self'


def machine_spec(workdir: Path, command: str, sock: Path, **kw: Any) -> MachineSpec:
    return MachineSpec(
        machine_id=IDENTITY.machine,
        app="web",
        release=7,
        region="local",
        command=command,
        workdir=workdir,
        port=31998,
        api_socket=sock,
        **kw,
    )


async def run(spec: MachineSpec) -> tuple[list[str], int]:
    lines: list[LogLine] = []
    machine = Machine(spec, Redactor([]), lines.append)
    await machine.start({})
    code = await machine.wait()
    return [line.message for line in lines], code


# -- a real machine, the platform's check ---------------------------------------------------------


def test_a_machine_reads_its_identity_and_never_sees_the_credential(
    services: Services, open_dir: Path
) -> None:
    with services.store.write() as tx:
        admin = org_rules.get_or_create_user(tx, "a@example.com")
        org = org_rules.create_org(tx, "acme", None, admin)
        app = app_rules.create_app(tx, org, "web", "production", admin.id)
        minted, row = token_records.create_token(
            tx,
            services.root,
            Scope("machine", org_id=org.id, app_id=app.id, machine_id=IDENTITY.machine),
            created_by="agent",
        )
        identity = Identity("web", app.id, "acme", org.id, IDENTITY.machine, 7, "local")
    credential = minted.token
    assert credential.startswith("aero1_")
    check = MachineCredentialCheck(services, credential, identity)
    assert credential not in repr(check)
    sock = open_dir / "api" / "api.sock"
    command = f"{CURL}; env"

    async def go() -> tuple[list[str], list[str], int, int]:
        api = await LocalApi.start(sock, identity, check)
        try:
            modes = sock.stat().st_mode, sock.parent.stat().st_mode
            first, code = await run(machine_spec(open_dir / "machine", command, sock))
            assert code == 0
            with services.store.write() as tx:
                token_records.revoke_record(tx, tx.session.get(Token, row.id))
            second, _ = await run(machine_spec(open_dir / "machine", CURL, sock))
        finally:
            await api.close()
        return first, second, *modes

    first, second, sock_mode, dir_mode = asyncio.run(go())
    assert stat.S_ISSOCK(sock_mode) and sock_mode & 0o777 == 0o600
    assert dir_mode & 0o777 == 0o700
    assert json.loads(first[0]) == {
        "app": "web",
        "app_id": identity.app_id,
        "org": "acme",
        "org_id": identity.org_id,
        "machine": IDENTITY.machine,
        "release": 7,
        "region": "local",
    }
    assert first[1] == "status=200"
    assert f"AERO_API_SOCKET={sock}" in first
    assert not any("aero1_" in line or credential in line for line in first)
    # Revoked: no identity, a JSON error.
    assert second[1] == "status=401"
    assert json.loads(second[0])["error"]["code"] == "revoked"
    assert not sock.exists() and not sock.parent.exists()  # removed on close


def test_the_check_follows_scope_and_expiry(services: Services) -> None:
    with services.store.write() as tx:
        admin = org_rules.get_or_create_user(tx, "a@example.com")
        org = org_rules.create_org(tx, "acme", None, admin)
        app = app_rules.create_app(tx, org, "web", "production", admin.id)
        other, _ = token_records.create_token(
            tx,
            services.root,
            Scope("machine", org_id=org.id, app_id=app.id, machine_id=new_id("mch")),
            created_by="agent",
        )
        short, _ = token_records.create_token(
            tx,
            services.root,
            Scope("machine", org_id=org.id, app_id=app.id, machine_id=IDENTITY.machine),
            created_by="agent",
            expiry=timedelta(seconds=3),  # rounded down to the second when minted
        )
    identity = Identity("web", app.id, "acme", org.id, IDENTITY.machine, 7, "local")
    wrong = MachineCredentialCheck(services, other.token, identity)()
    assert (wrong.allowed, wrong.reason, wrong.status) == (False, "wrong_machine", 403)
    assert MachineCredentialCheck(services, short.token, identity)().allowed
    time.sleep(max(0.0, (short.expires_at - datetime.now(UTC)).total_seconds()) + 0.2)
    expired = MachineCredentialCheck(services, short.token, identity)()
    assert (expired.reason, expired.status) == ("expired", 401)
    garbage = MachineCredentialCheck(services, "aero1_nope_0", identity)()
    assert garbage.status == 401


def test_only_the_machines_uid_can_connect(open_dir: Path) -> None:
    sock = open_dir / "api" / "api.sock"
    for name in ("production", "test"):
        (open_dir / name).mkdir()

    async def go() -> tuple[list[str], list[str], os.stat_result, os.stat_result]:
        api = await LocalApi.start(sock, IDENTITY, lambda: ALLOW, owner_uid=PRODUCTION)
        try:
            owners = sock.stat(), sock.parent.stat()
            mine, _ = await run(
                machine_spec(open_dir / "production", CURL + "; id -u", sock, user=PRODUCTION)
            )
            probe = CURL + '; test -e "$AERO_API_SOCKET" || echo cannot-see-it; id -u'
            theirs, _ = await run(machine_spec(open_dir / "test", probe, sock, user=TEST))
        finally:
            await api.close()
        return mine, theirs, *owners

    mine, theirs, sock_st, dir_st = asyncio.run(go())
    assert (sock_st.st_uid, sock_st.st_gid, sock_st.st_mode & 0o777) == (PRODUCTION,) * 2 + (0o600,)
    assert (dir_st.st_uid, dir_st.st_mode & 0o777) == (PRODUCTION, 0o700)
    assert json.loads(mine[0])["machine"] == IDENTITY.machine and mine[-1] == str(PRODUCTION)
    assert theirs[-1] == str(TEST)
    assert not any(line.startswith("{") for line in theirs)
    assert "status=000" in theirs and "cannot-see-it" in theirs  # curl could not connect


# -- HTTP, against a server on a background loop ------------------------------------------------


class Background:
    def __init__(self, path: Path, check: Callable[[], Decision], **kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.path = path
        self.api = self.call(LocalApi.start(path, IDENTITY, check, **kw))

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        self.call(self.api.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def server(open_dir: Path) -> Iterator[Background]:
    running = Background(open_dir / "api" / "api.sock", lambda: ALLOW, header_timeout=0.5)
    try:
        yield running
    finally:
        running.close()


def exchange(path: Path, data: bytes, *, shut: bool = True, wait: float = 5.0) -> bytes:
    """Send `data` (then end our side), read until the server closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(wait)
        sock.connect(str(path))
        try:
            sock.sendall(data)
            if shut:
                sock.shutdown(socket.SHUT_WR)
        except BrokenPipeError:
            pass  # the server answered and closed before reading everything
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


def responses(data: bytes) -> list[tuple[int, dict[str, str], Any]]:
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in header_lines)}
        length = int(headers["content-length"])
        out.append((int(status), headers, json.loads(rest[:length])))
        data = rest[length:]
    return out


GOOD = b"GET /v1/self HTTP/1.1\r\nHost: x\r\n\r\n"


def test_identity_and_keep_alive(server: Background) -> None:
    [(status, headers, body)] = responses(exchange(server.path, GOOD))
    assert status == 200 and body["machine"] == IDENTITY.machine and body["release"] == 7
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store" and "connection" not in headers
    # Two pipelined requests on one connection, then one that asks to close.
    two = responses(exchange(server.path, GOOD + b"GET /v1/self?x=1 HTTP/1.1\r\nhost: x\r\n\r\n"))
    assert [status for status, _, _ in two] == [200, 200]
    closing = GOOD.replace(b"\r\n\r\n", b"\r\nConnection: keep-alive, Close\r\n\r\n")
    [(status, headers, _)] = responses(exchange(server.path, closing + GOOD, shut=False))
    assert status == 200 and headers["connection"] == "close"
    # HTTP/1.0: no Host needed, closed after the answer.
    [(status, headers, _)] = responses(
        exchange(server.path, b"GET /v1/self HTTP/1.0\r\n\r\n", shut=False)
    )
    assert status == 200 and headers["connection"] == "close"


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /v1/other HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not_found"),
        (b"POST /v1/self HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed"),
        (b"POST /v1/self HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 413, None),
        (
            b"POST /v1/self HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            413,
            None,
        ),
        (b"GET /v1/self HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n", 400, None),
        (
            b"GET /v1/self HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            400,
            None,
        ),
        (b"GET /v1/self HTTP/1.1\r\n\r\n", 400, "bad_request"),
        (b"GET /v1/self HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400, None),
        (b"GET /v1/self HTTP/1.1\nHost: x\n\n", 400, None),
        (b"GET /v1/self HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400, None),
        (b"GET /v1/self HTTP/1.1\r\nHost : x\r\n\r\n", 400, None),
        (b"GET /v1/self HTTP/1.1\r\nHost: x\x00y\r\n\r\n", 400, None),
        (b"GET  /v1/self HTTP/1.1\r\nHost: x\r\n\r\n", 400, None),
        (b"GET http://x/v1/self HTTP/1.1\r\nHost: x\r\n\r\n", 400, None),
        (b"GET /v1/self HTTP/2.0\r\nHost: x\r\n\r\n", 505, "version_not_supported"),
        (b"GET /v1/self FTP/1.1\r\nHost: x\r\n\r\n", 400, None),
        (b"G\xc3\xa9T /v1/self HTTP/1.1\r\nHost: x\r\n\r\n", 400, None),
        (b"\r\nGET /v1/self HTTP/1.1\r\nHost: x\r\n\r\n", 400, None),
        (b"GET /v1/self HTTP/1.1\r\nHost: x\r\n", 400, None),  # ended before the blank line
        (b"GET /v1/self HTTP/1.1\r\nHost: x\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n", 431, None),
        (b"GET /v1/self HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 2000 + b"\r\n", 431, None),
    ],
)
def test_bad_requests_get_clean_errors(
    server: Background, request_bytes: bytes, status: int, code: str | None
) -> None:
    out = exchange(server.path, request_bytes)
    [(got, headers, body)] = responses(out)
    assert got == status, body
    assert set(body["error"]) == {"code", "message", "hint"}
    if code:
        assert body["error"]["code"] == code
    if status == 405:
        assert headers["allow"] == "GET"
    if status not in (404, 405):
        assert headers["connection"] == "close"
    # The server is still there.
    assert responses(exchange(server.path, GOOD))[0][0] == 200


def test_slow_and_idle_clients_are_dropped(server: Background) -> None:
    started = time.monotonic()
    [(status, _, body)] = responses(
        exchange(server.path, b"GET /v1/self HTTP/1.1\r\nHo", shut=False)
    )
    assert status == 408 and body["error"]["code"] == "timeout"
    assert exchange(server.path, b"", shut=False) == b""  # idle: closed without a word
    assert time.monotonic() - started < 4


def eventually(path: Path, status: int) -> tuple[int, dict[str, str], Any]:
    """The first answer to GOOD with `status`, within 5 s (the server's own pace on a busy
    machine)."""
    deadline = time.monotonic() + 5
    while True:
        [answer] = responses(exchange(path, GOOD))
        if answer[0] == status or time.monotonic() > deadline:
            assert answer[0] == status, answer
            return answer
        time.sleep(0.05)


def test_connections_are_bounded(open_dir: Path) -> None:
    running = Background(open_dir / "api" / "api.sock", lambda: ALLOW, max_connections=2)
    try:
        held = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
        for sock in held:
            sock.connect(str(running.path))
        assert eventually(running.path, 503)[2]["error"]["code"] == "busy"
        for sock in held:
            sock.close()
        eventually(running.path, 200)  # the server noticed them go
    finally:
        running.close()


def test_a_refused_or_failing_check_gives_no_identity(open_dir: Path) -> None:
    refused = Decision(False, "revoked", "token tok_x has been revoked", "ask for a new one")
    running = Background(open_dir / "a" / "api.sock", lambda: refused)

    def boom() -> Decision:
        raise RuntimeError("store is down")

    failing = Background(open_dir / "b" / "api.sock", boom)
    try:
        [(status, _, body)] = responses(exchange(running.path, GOOD))
        assert status == 401 and body["error"]["code"] == "revoked" and "machine" not in body
        [(status, _, body)] = responses(exchange(failing.path, GOOD))
        assert status == 500 and body["error"]["code"] == "internal"
    finally:
        running.close()
        failing.close()


def test_the_socket_file(open_dir: Path) -> None:
    with pytest.raises(ValueError, match="longer than"):
        bind_private(open_dir / ("x" * 120) / "api.sock")
    (open_dir / "file").mkdir()
    (open_dir / "file" / "api.sock").write_text("not a socket")
    with pytest.raises(FileExistsError):
        bind_private(open_dir / "file" / "api.sock")
    # Close removes the socket, and the directory if it made it.
    running = Background(open_dir / "api" / "api.sock", lambda: ALLOW)
    running.close()
    assert not (open_dir / "api").exists()
    # A stale socket from an earlier run is replaced; a directory it did not make stays.
    stale = bind_private(open_dir / "file" / "other.sock")
    stale.close()
    running = Background(open_dir / "file" / "other.sock", lambda: ALLOW)
    assert responses(exchange(running.path, GOOD))[0][0] == 200
    running.close()
    assert (open_dir / "file").is_dir() and not (open_dir / "file" / "other.sock").exists()
    os.chown(open_dir / "file", TEST, TEST)
    with pytest.raises(PermissionError, match="belongs to uid"):
        bind_private(open_dir / "file" / "api.sock", owner_uid=PRODUCTION)


# -- fuzzing ------------------------------------------------------------------------------------

_line = st.binary(max_size=40) | st.sampled_from(
    [b"Host: x", b"host:x", b"Content-Length: 0", b"Content-Length: 1", b"Connection: close",
     b"Transfer-Encoding: chunked", b" folded", b"X:\x00", b"X: \xff", b"", b":", b"Host: x\r"]
)  # fmt: skip
_request_line = st.builds(
    lambda m, t, v: b" ".join((m, t, v)),
    st.sampled_from([b"GET", b"POST", b"HEAD", b"G T", b"", b"\xff"]),
    st.sampled_from([b"/v1/self", b"/", b"*", b"/v1/self?a=b", b"/\x00", b"//", b""]),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b"HTTP/1", b""]),
)
_requestish = st.builds(
    lambda first, rest, sep, tail: sep.join([first, *rest]) + sep + sep + tail,
    _request_line,
    st.lists(_line, max_size=6),
    st.sampled_from([b"\r\n", b"\n", b"\r"]),
    st.binary(max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=8) | st.lists(_line, max_size=8))
def test_parse_head_only_ever_refuses_cleanly(lines: list[bytes]) -> None:
    try:
        head = parse_head(lines)
    except HttpError as exc:
        assert exc.status in {400, 413, 505}
    else:
        assert head.target.startswith("/") and head.method


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=_requestish | st.binary(max_size=200))
def test_the_server_survives_anything(server: Background, data: bytes) -> None:
    out = exchange(server.path, data)
    if out:
        assert out.startswith(b"HTTP/1.1 ")
        for status, _, body in responses(out):
            assert status in {200, 400, 404, 405, 408, 413, 431, 505}
            assert ("error" in body) == (status != 200)
    assert responses(exchange(server.path, GOOD))[0][0] == 200
