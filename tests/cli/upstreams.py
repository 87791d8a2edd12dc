"""`python -m tests.cli.upstreams HTTP_PORT WS_PORT`: a trivial app for end-to-end tests, an
HTTP echo on one port and a WebSocket echo on the other, on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvloop
import websockets

from tests.edge.support import EchoApp


async def main(http_port: int, ws_port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(EchoApp, "127.0.0.1", http_port)

    async def echo(ws: Any) -> None:
        await ws.send(json.dumps({"path": ws.request.path, "headers": dict(ws.request.headers)}))
        async for message in ws:
            await ws.send(message)

    async with websockets.serve(echo, "127.0.0.1", ws_port):
        await asyncio.Future()


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def running(http_port: int, ws_port: int) -> Iterator[None]:
    """Both upstreams in a child process, from when both ports answer until the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.cli.upstreams", str(http_port), str(ws_port)],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        wait_for_port(http_port)
        wait_for_port(ws_port)
        yield
    finally:
        process.terminate()
        process.wait(10)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
