"""hello: aerodrome's example app, one file of standard-library Python.

It shows what an app on aerodrome gets and does:

- It listens where the platform tells it, 127.0.0.1:$PORT. The edge in front of it terminates
  HTTPS (https://hello.localhost:8443 under `aero up`) and only then talks to this process.
- It knows which release, machine and region it is: $AERO_RELEASE, $AERO_MACHINE_ID, $AERO_REGION.
- It uses a secret without ever showing it. SESSION_KEY (`aero secrets set -a hello
  SESSION_KEY=-`) arrives in the environment and signs a visit-counter cookie (HMAC-SHA256);
  the page says how long the key is, never what it is.
- GET /healthz answers 200: the check in aerodrome.toml the agent waits for before moving
  traffic to a new release.
- GET /ws is a WebSocket echo, RFC 6455 written out by hand so you can read how it works.
  The edge has already refused handshakes from foreign origins; this server trusts it for that.

Run it on its own:  PORT=8000 SESSION_KEY=dev-only python3 app.py  (then http://127.0.0.1:8000)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import signal
import string
import struct
from html import escape

PORT = int(os.environ.get("PORT", "8000"))
APP = os.environ.get("AERO_APP_NAME", "hello")
RELEASE = os.environ.get("AERO_RELEASE", "-")
MACHINE = os.environ.get("AERO_MACHINE_ID", "local")
REGION = os.environ.get("AERO_REGION", "local")
# Secrets are read once at start: a changed secret makes a new release, so a new process.
SESSION_KEY = os.environ.get("SESSION_KEY", "").encode()

MAX_HEAD = 16 * 1024  # request line and headers
MAX_MESSAGE = 64 * 1024  # one WebSocket message, fragments reassembled
IDLE_TIMEOUT = 75.0  # seconds a keep-alive connection may wait for its next request

REASONS = {
    101: "Switching Protocols", 200: "OK", 400: "Bad Request", 404: "Not Found",
    405: "Method Not Allowed", 426: "Upgrade Required", 431: "Request Header Fields Too Large",
}  # fmt: skip


def log(line: str) -> None:
    print(line, flush=True)  # the platform keeps stdout per app, with secret values masked


# -- HTTP/1.1 -------------------------------------------------------------------------------------


class BadRequest(Exception):
    def __init__(self, status: int = 400) -> None:
        self.status = status


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, str, dict[str, str]] | None:
    """(method, path, version, headers) of the next request; None when the client is done."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
        return None  # closed, or idle too long
    except asyncio.LimitOverrunError:
        raise BadRequest(431) from None
    request_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest()
    headers = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest()
        headers[name.lower()] = value.strip()  # a repeated header keeps its last value
    method, target, version = parts
    return method, target.partition("?")[0], version, headers


def response(
    status: int, body: bytes, headers: dict[str, str] | None = None, *, keep_alive: bool = True
) -> bytes:
    head = [f"HTTP/1.1 {status} {REASONS[status]}", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if not keep_alive:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def text(status: int, message: str, *, keep_alive: bool = True) -> bytes:
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    return response(status, message.encode() + b"\n", headers, keep_alive=keep_alive)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One connection: requests one after another (keep-alive), or one WebSocket."""
    try:
        while request := await read_request(reader):
            method, path, version, headers = request
            connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
            keep_alive = version == "HTTP/1.1" and "close" not in connection
            has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
            if method not in ("GET", "HEAD") or has_body:
                # This app reads no request bodies; closing keeps the connection's framing safe.
                writer.write(text(405, "only GET and HEAD, without a body", keep_alive=False))
                log(f"{method} {path} 405")
                break
            if path == "/ws" and headers.get("upgrade", "").lower() == "websocket":
                await websocket(reader, writer, method, version, headers)
                break
            status, body, extra = route(path, headers)
            out = response(status, body, extra, keep_alive=keep_alive)
            writer.write(out[: len(out) - len(body)] if method == "HEAD" else out)
            await writer.drain()
            log(f"{method} {path} {status}")
            if not keep_alive:
                break
    except BadRequest as bad:
        writer.write(text(bad.status, REASONS[bad.status], keep_alive=False))
    except ConnectionError:
        pass
    finally:
        writer.close()


def route(path: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    if path == "/healthz":
        return 200, b"ok\n", {"Content-Type": "text/plain", "Cache-Control": "no-store"}
    if path == "/":
        return page(headers)
    if path == "/ws":
        return 426, b"a WebSocket endpoint: connect with wss://\n", {"Upgrade": "websocket"}
    return 404, b"not found\n", {"Content-Type": "text/plain"}


# -- the page, and the secret -----------------------------------------------------------------


def sign(value: str) -> str:
    """`value.signature`: only a holder of SESSION_KEY can make one that `unsign` accepts."""
    mac = hmac.new(SESSION_KEY, value.encode(), hashlib.sha256).digest()
    return value + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def unsign(signed: str) -> str | None:
    value = signed.rpartition(".")[0]
    return value if value and hmac.compare_digest(sign(value), signed) else None


def cookie(headers: dict[str, str], name: str) -> str:
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


PAGE = string.Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>$app on aerodrome</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem}
code,pre{background:#f3f3f3;padding:0 .2em}</style></head>
<body>
<h1>hello from aerodrome</h1>
<p>app <b>$app</b> · release <b>$release</b> · machine <code>$machine</code>
 · region <b>$region</b></p>
<p>$secret</p>
<h2>WebSocket echo</h2>
<form><input id="message" value="hello, echo" aria-label="message"> <button>send</button></form>
<pre id="log"></pre>
<script>
// Same host, over TLS: the edge only lets wss:// handshakes from this page's own origin through.
const logLine = (line) => { document.getElementById("log").textContent += line + "\\n"; };
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
const ws = new WebSocket(scheme + location.host + "/ws");
ws.onopen = () => { logLine("connected to " + ws.url); ws.send("hello from the page"); };
ws.onmessage = (event) => logLine("echo: " + event.data);
ws.onclose = (event) => logLine("closed (" + event.code + ")");
document.querySelector("form").onsubmit = (event) => {
  event.preventDefault();
  const text = document.getElementById("message").value;
  if (ws.readyState === WebSocket.OPEN) { ws.send(text); logLine("sent: " + text); }
};
</script>
</body></html>
""")


def page(headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    extra = {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}
    if SESSION_KEY:
        previous = unsign(cookie(headers, "visits")) or "0"
        visits = int(previous) + 1 if previous.isdigit() else 1
        secret = (
            f"SESSION_KEY is set ({len(SESSION_KEY)} bytes). It signs this browser's visit "
            f"counter: this is visit <b>{visits}</b>. A cookie changed by hand, or signed with "
            "another key, counts from 1 again."
        )
        extra["Set-Cookie"] = (
            f"visits={sign(str(visits))}; Path=/; Max-Age=31536000; Secure; HttpOnly; SameSite=Lax"
        )
    else:
        secret = (
            "<b>SESSION_KEY is missing.</b> Set it with "
            f"<code>aero secrets set -a {escape(APP)} SESSION_KEY=-</code> (the value is read "
            "from stdin); the machine restarts with it."
        )
    html = PAGE.substitute(
        app=escape(APP), release=escape(RELEASE), machine=escape(MACHINE),
        region=escape(REGION), secret=secret,
    )  # fmt: skip
    return 200, html.encode(), extra


# -- WebSocket (RFC 6455) -------------------------------------------------------------------------

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # fixed by the RFC
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
SOCKETS: set[asyncio.StreamWriter] = set()  # open WebSockets, told "going away" at shutdown


class Closing(Exception):
    """End the WebSocket with this close code (RFC 6455 section 7.4)."""

    def __init__(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason


async def websocket(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    method: str,
    version: str,
    headers: dict[str, str],
) -> None:
    """The opening handshake (section 4.2), then the echo."""
    if headers.get("sec-websocket-version") != "13":
        writer.write(text(426, "WebSocket version 13 only", keep_alive=False))
        return
    key = headers.get("sec-websocket-key", "")
    connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    try:
        key_ok = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        key_ok = False
    if method != "GET" or version != "HTTP/1.1" or "upgrade" not in connection or not key_ok:
        writer.write(text(400, "not a valid WebSocket handshake", keep_alive=False))
        return
    # Proof that this server read the handshake; SHA-1 here is a checksum, not security.
    digest = hashlib.sha1(key.encode() + GUID, usedforsecurity=False).digest()
    accept = base64.b64encode(digest).decode()
    writer.write(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
    )
    log("GET /ws 101")
    SOCKETS.add(writer)
    try:
        await echo(reader, writer)
    finally:
        SOCKETS.discard(writer)


def frame(opcode: int, payload: bytes) -> bytes:
    """A final, unmasked frame (servers never mask)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return header + payload


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte key repeated, as one big-integer operation (fast in pure Python)."""
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


async def read_frame(reader: asyncio.StreamReader) -> tuple[bool, int, bytes]:
    """(fin, opcode, unmasked payload) of the next frame from the client (section 5.2)."""
    first, second = await reader.readexactly(2)
    fin, opcode, length = bool(first & 0x80), first & 0x0F, second & 0x7F
    if first & 0x70:
        raise Closing(1002, "reserved bits set: no extension was negotiated")
    if not second & 0x80:
        raise Closing(1002, "client frames must be masked")
    if opcode >= CLOSE and (not fin or length > 125):
        raise Closing(1002, "control frames are final and at most 125 bytes")
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    if length > MAX_MESSAGE:  # refused before reading it
        raise Closing(1009, f"messages are limited to {MAX_MESSAGE} bytes")
    mask = await reader.readexactly(4)
    return fin, opcode, unmask(await reader.readexactly(length), mask)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send every text or binary message back; answer pings; reassemble fragments."""
    kind, parts, size = 0, [], 0  # the message being reassembled: its opcode, pieces, bytes
    try:
        while True:
            fin, opcode, payload = await read_frame(reader)
            if opcode == CLOSE:
                # Echo the peer's close code and end the connection (section 5.5.1).
                writer.write(frame(CLOSE, closing_reply(payload)))
                await writer.drain()
                return
            if opcode == PING:  # control frames may arrive between the fragments of a message
                writer.write(frame(PONG, payload))
                await writer.drain()
                continue
            if opcode == PONG:
                continue
            if opcode in (TEXT, BINARY):
                if kind:
                    raise Closing(1002, "a new message began before the last one ended")
                kind = opcode
            elif opcode != CONTINUATION or not kind:
                raise Closing(1002, "unknown opcode or a continuation of nothing")
            size += len(payload)
            if size > MAX_MESSAGE:
                raise Closing(1009, f"messages are limited to {MAX_MESSAGE} bytes")
            parts.append(payload)
            if fin:
                message = b"".join(parts)
                if kind == TEXT:
                    try:
                        message.decode("utf-8")
                    except UnicodeDecodeError:
                        raise Closing(1007, "text messages must be UTF-8") from None
                writer.write(frame(kind, message))
                await writer.drain()
                kind, parts, size = 0, [], 0
    except Closing as closing:
        writer.write(frame(CLOSE, struct.pack("!H", closing.code) + closing.reason.encode()))
        await writer.drain()
    except asyncio.IncompleteReadError:
        pass  # the client went away without a close frame


def closing_reply(payload: bytes) -> bytes:
    """The payload of our answer to a close frame: its code, or 1002 if it is malformed."""
    if not payload:
        return b""  # no code given: none sent back
    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 0
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return struct.pack("!H", 1007)
    if code in CLOSE_CODES or 3000 <= code <= 4999:
        return struct.pack("!H", code)
    return struct.pack("!H", 1002)


# -- main -----------------------------------------------------------------------------------------


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", PORT, limit=MAX_HEAD)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # kill_signal (default SIGINT), or SIGTERM
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    log(f"{APP} release {RELEASE} listening on 127.0.0.1:{PORT}")
    async with server:
        await stop.wait()
    for writer in list(SOCKETS):  # tell WebSocket clients to reconnect (to the next release)
        writer.write(frame(CLOSE, struct.pack("!H", 1001) + b"going away"))
        writer.close()
    log("stopped")


if __name__ == "__main__":
    asyncio.run(main())
