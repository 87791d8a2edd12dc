"""Machine logs of an app: already redacted when stored, read by cursor, optionally waited for.

The agent writes them under `DATA/logs/apps` (`runtime/logstore.py`); the API process reads the
same directory.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from aerodrome.api.authz import AppParam, AuthorizedRoute, Caller, requires
from aerodrome.errors import InvalidInput
from aerodrome.ids import MACHINE_ID
from aerodrome.runtime.logstore import LogStore, Page, StoredLine

router = APIRouter(prefix="/v1", route_class=AuthorizedRoute, tags=["logs"])

MAX_LIMIT = 1000
MAX_WAIT = 25.0  # below the CLI's 30 s timeout and common proxies' idle timeouts
POLL = 0.25


def log_store(caller: Caller) -> LogStore:
    return LogStore(caller.services.settings.data_dir / "logs" / "apps")


def line_view(line: StoredLine) -> dict[str, Any]:
    return {
        "seq": line.seq,
        "time": datetime.fromtimestamp(line.time, UTC).isoformat(),
        "machine": line.machine_id,
        "region": line.region,
        "stream": line.stream,
        "message": line.message,
    }


@router.get("/apps/{app}/logs")
async def read_logs(
    app: str,
    request: Request,
    machine: str | None = Query(None, max_length=64, description="only this machine's lines"),
    after: int | None = Query(
        None, ge=0, description="a `next` cursor; 0: from the oldest line kept; absent: the tail"
    ),
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
    wait: float = Query(
        0, ge=0, le=MAX_WAIT, description="with `after`: seconds to wait for a first new line"
    ),
    caller: Caller = Depends(requires("logs.read", AppParam())),
) -> dict[str, Any]:
    """Lines oldest first, each {seq, time, machine, region, stream, message}, and `next`, the
    cursor to pass as `after` to read on. With `after` and `wait`, answers as soon as a line
    exists (or after `wait` seconds, with none)."""
    target = caller.target.app
    assert target is not None
    if machine is not None and not MACHINE_ID.fullmatch(machine):
        raise InvalidInput(
            "machine must be a machine id: mch_ and 24 characters a-z, 2-7",
            hint="the machine column of `aero logs -a APP` shows them",
        )
    store = log_store(caller)

    def read() -> Page:
        return store.page(target.id, machine_id=machine, after=after, limit=limit)

    page = await run_in_threadpool(read)
    deadline = time.monotonic() + wait
    while not page.lines and after is not None and time.monotonic() < deadline:
        await asyncio.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
        if await request.is_disconnected():
            break
        page = await run_in_threadpool(read)
    return {"lines": [line_view(x) for x in page.lines], "next": page.next}
