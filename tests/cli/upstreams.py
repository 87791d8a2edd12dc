"""`python -m tests.cli.upstreams HTTP_PORT WS_PORT`: a trivial app for end-to-end tests, an
HTTP echo on one port and a WebSocket echo on the other, on loopback."""

from __future__ import annotations

import asyncio
import json
import sys
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


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
