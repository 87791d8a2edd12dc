"""The machine-local API: a Unix socket per machine that tells the app who it is.

The agent starts one `LocalApi` per machine, before the machine, and passes its path as
`AERO_API_SOCKET`. The server holds the machine's credential (inside its `CredentialCheck`);
the app never sees it. Every request re-checks that credential (revocation, expiry, scope), so
revoking a machine's token silences its API at once.

    GET /v1/self  ->  {"app", "app_id", "org", "org_id", "machine", "release", "region"}

HTTP/1.1, deliberately small and strict: GET only, no request bodies (413), at most 8 KiB of
request line and headers (431), CRLF line endings, exactly one Host, origin-form targets, a
timeout on reading the headers (408), keep-alive unless `Connection: close` or HTTP/1.0.
Errors are JSON (`{"error": {"code", "message", "hint"}}`, as the platform API's); after a
malformed request the connection is closed.

The socket is 0600 in a directory that is 0700, both owned by the machine's uid when it runs
as one (`owner_uid`), so another machine cannot connect to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http import HTTPStatus
from pathlib import Path

from aerodrome.access import decide
from aerodrome.services import Services
from aerodrome.store.models import App, Org
from aerodrome.tokens.verify import Decision

log = logging.getLogger("aerodrome.localapi")

MAX_HEAD = 8 * 1024  # request line and headers together
HEADER_TIMEOUT = 10.0  # to read a request's headers, and the idle time between requests
MAX_CONNECTIONS = 16  # per machine
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with its NUL

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(r"/[\x21-\x7e]*")
_VERSION = re.compile(r"HTTP/\d\.\d")
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # control characters other than HT


@dataclass(frozen=True)
class Identity:
    """What `GET /v1/self` answers: the agent knows all of it when it starts the machine."""

    app: str
    app_id: str
    org: str  # the org's slug
    org_id: str
    machine: str
    release: int
    region: str


# Is the machine's credential still good for `machine.self`? Blocking (it reads the store): run
# in a worker thread, one at a time per machine.
CredentialCheck = Callable[[], Decision]


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, *, close: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.close = close


@dataclass(frozen=True)
class Head:
    method: str
    target: str
    keep_alive: bool


def parse_head(lines: list[bytes]) -> Head:
    """The request line and header lines (each without its CRLF) of one request, checked.
    Raises `HttpError` for anything this server does not accept."""
    if not lines:
        raise HttpError(400, "bad_request", "empty request")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "bad_request", "malformed request line") from None
    if not _TOKEN.fullmatch(method.encode()):
        raise HttpError(400, "bad_request", "malformed method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if _VERSION.fullmatch(version):
            raise HttpError(505, "version_not_supported", f"{version} is not supported")
        raise HttpError(400, "bad_request", "malformed HTTP version")
    if not _TARGET.fullmatch(target):
        raise HttpError(400, "bad_request", "the request target must be a path")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            # Also catches obsolete line folding (a line starting with a space or a tab).
            raise HttpError(400, "bad_request", "malformed header line")
        value = value.strip(b" \t")
        if _CTL.search(value):
            raise HttpError(400, "bad_request", "control character in a header value")
        headers.setdefault(name.decode("ascii").lower(), []).append(value.decode("latin-1"))
    hosts = headers.get("host", [])
    if len(hosts) > 1 or (version == "HTTP/1.1" and not hosts):
        raise HttpError(400, "bad_request", "a request needs exactly one Host header")
    lengths = headers.get("content-length", [])
    if len(lengths) > 1 or (lengths and not (lengths[0].isascii() and lengths[0].isdigit())):
        raise HttpError(400, "bad_request", "malformed Content-Length")
    if "transfer-encoding" in headers or (lengths and lengths[0].strip("0")):
        raise HttpError(413, "body_too_large", "this API accepts no request bodies")
    connection = {
        token.strip().lower()
        for value in headers.get("connection", [])
        for token in value.split(",")
    }
    keep_alive = version == "HTTP/1.1" and "close" not in connection
    return Head(method, target, keep_alive)


def render(status: int, body: object, *, close: bool, extra: dict[str, str] | None = None) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode() + b"\n"
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        "Cache-Control: no-store",
        *(f"{name}: {value}" for name, value in (extra or {}).items()),
    ]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


def error_body(code: str, message: str, hint: str = "") -> dict[str, object]:
    return {"error": {"code": code, "message": message, "hint": hint}}


class LocalApi:
    """One machine's API server. `start` it before the machine, `close` it after."""

    def __init__(
        self,
        path: Path,
        identity: Identity,
        check: CredentialCheck,
        header_timeout: float,
        max_connections: int,
    ) -> None:
        self.path = path
        self.identity = identity
        self.check = check  # the agent may swap in a check holding a fresh credential
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._check_lock = asyncio.Lock()
        self._refused = ""
        self._made_directory = False

    def __repr__(self) -> str:
        return f"LocalApi({str(self.path)!r}, machine={self.identity.machine!r})"

    @classmethod
    async def start(
        cls,
        path: Path,
        identity: Identity,
        check: CredentialCheck,
        *,
        owner_uid: int | None = None,
        header_timeout: float = HEADER_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> LocalApi:
        """Listen on `path` (its directory is created 0700 if missing). With `owner_uid`, the
        socket and its directory belong to that uid (gid the same)."""
        api = cls(path, identity, check, header_timeout, max_connections)
        api._made_directory = not os.path.lexists(path.parent)
        sock = bind_private(path, owner_uid)
        try:
            api._server = await asyncio.start_unix_server(api._serve, sock=sock, limit=MAX_HEAD + 2)
        except BaseException:
            sock.close()
            api._remove()
            raise
        return api

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._remove()

    def _remove(self) -> None:
        # Only what this server made; the directory may belong to the machine's uid, so
        # nothing in it is followed or walked.
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()
        if self._made_directory:
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()

    # -- one connection ----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            if len(self._connections) > self.max_connections:
                await self._send(writer, 503, error_body("busy", "too many connections"), True)
                return
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, TimeoutError):
            pass
        except Exception as exc:  # never let a bad client take the server down
            log.error("local API connection failed: %s", type(exc).__name__)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; whether the connection stays open for another."""
        try:
            async with asyncio.timeout(self.header_timeout):  # idle between requests
                pending = await reader.read(1)
        except TimeoutError:
            return False
        if not pending:
            return False  # the client closed between requests
        lines: list[bytes] = []
        try:
            async with asyncio.timeout(self.header_timeout):
                size = 0
                while True:
                    line = pending if pending == b"\n" else pending + await reader.readuntil(b"\n")
                    pending = b""
                    size += len(line)
                    if size > MAX_HEAD:
                        raise asyncio.LimitOverrunError("head too large", size)
                    if not line.endswith(b"\r\n"):
                        raise HttpError(400, "bad_request", "lines must end with CRLF")
                    if line == b"\r\n":
                        break
                    lines.append(line[:-2])
            head = parse_head(lines)
        except asyncio.IncompleteReadError:
            await self._send(writer, 400, error_body("bad_request", "incomplete request"))
            return False
        except asyncio.LimitOverrunError:
            body = error_body("headers_too_large", f"request headers exceed {MAX_HEAD} bytes")
            await self._send(writer, 431, body)
            return False
        except TimeoutError:
            await self._send(writer, 408, error_body("timeout", "request headers too slow"))
            return False
        except HttpError as exc:
            await self._send(writer, exc.status, error_body(exc.code, exc.message))
            return False
        status, answer, extra = await self._route(head)
        await self._send(writer, status, answer, not head.keep_alive, extra)
        return head.keep_alive

    async def _route(self, head: Head) -> tuple[int, object, dict[str, str] | None]:
        path = head.target.partition("?")[0]
        if path != "/v1/self":
            return 404, error_body("not_found", f"no such path: {path}"), None
        if head.method != "GET":
            body = error_body("method_not_allowed", f"{head.method} is not allowed here")
            return 405, body, {"Allow": "GET"}
        async with self._check_lock:
            try:
                decision = await asyncio.to_thread(self.check)
            except Exception as exc:
                log.error("machine credential check failed: %s", type(exc).__name__)
                return 500, error_body("internal", "could not check the machine credential"), None
        if not decision.allowed:
            if decision.reason != self._refused:  # once per reason, not once per poll
                log.warning(
                    "machine %s: credential refused (%s)", self.identity.machine, decision.reason
                )
            self._refused = decision.reason
            return (
                decision.status,
                error_body(decision.reason, decision.message, decision.hint),
                None,
            )
        self._refused = ""
        return 200, asdict(self.identity), None

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: object,
        close: bool = True,
        extra: dict[str, str] | None = None,
    ) -> None:
        writer.write(render(status, body, close=close, extra=extra))
        async with asyncio.timeout(self.header_timeout):  # a client that never reads
            await writer.drain()


def bind_private(path: Path, owner_uid: int | None = None) -> socket.socket:
    """A listening Unix socket at `path`, mode 0600, in a directory that is mode 0700.

    The directory is created 0700 (an existing one must be a real directory, not a link,
    owned by us or `owner_uid`, and is made 0700), and the socket is bound under umask 077, so
    neither is ever reachable by anyone else, not even for a moment. With `owner_uid`, both are
    then given to that uid."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ValueError(f"socket path is longer than {MAX_SOCKET_PATH} bytes: {path}")
    directory = path.parent
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        found = directory.lstat()
        if not stat.S_ISDIR(found.st_mode):
            raise NotADirectoryError(f"{directory} is not a directory") from None
        if found.st_uid not in (os.geteuid(), owner_uid):
            raise PermissionError(f"{directory} belongs to uid {found.st_uid}") from None
    directory.chmod(0o700)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        path.unlink()  # a stale socket from an earlier run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # umask is per process: 077 only ever narrows what another thread creates meanwhile.
        previous = os.umask(0o077)
        try:
            sock.bind(str(path))
        finally:
            os.umask(previous)
        path.chmod(0o600)
        if owner_uid is not None:
            os.chown(path, owner_uid, owner_uid, follow_symlinks=False)
            os.chown(directory, owner_uid, owner_uid, follow_symlinks=False)
        sock.listen(MAX_CONNECTIONS)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return sock


# -- the platform's check ------------------------------------------------------------------------


class MachineCredentialCheck:
    """Holds a machine's credential and asks the platform, per call, whether it still allows
    `machine.self` on that machine: following revocations, checking expiry, then `decide`."""

    def __init__(self, services: Services, credential: str, identity: Identity) -> None:
        self._services = services
        self._credential = credential
        self._identity = identity

    def __repr__(self) -> str:  # the credential never shows
        return f"MachineCredentialCheck(machine={self._identity.machine!r})"

    def __call__(self) -> Decision:
        services = self._services
        services.refresh_revocations()
        verified = services.verifier.verify(self._credential)
        if isinstance(verified, Decision):
            return verified
        if verified.kind != "machine":
            return Decision(False, "action_not_allowed", "only a machine credential may answer")
        with services.store.read() as session:
            app = session.get(App, self._identity.app_id)
            org = session.get(Org, self._identity.org_id)
            if app is None or org is None:
                return Decision(False, "wrong_app", f"app {self._identity.app} no longer exists")
            return decide(
                services,
                session,
                verified,
                None,
                "machine.self",
                org,
                app,
                machine_id=self._identity.machine,
            )
