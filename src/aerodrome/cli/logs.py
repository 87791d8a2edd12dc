"""`aero logs`: what an app's machines printed (masked before it was stored), once or following.

Human output is one line per log line: `TIME MACHINE[REGION] STREAM  MESSAGE`, with control
characters shown escaped so an app cannot drive the terminal; `--json` prints one JSON object
per line (in follow mode too), as the API gives it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.markup import escape

from aerodrome.cli.client import Client
from aerodrome.cli.common import client
from aerodrome.cli.output import JsonFlag, err_console, visible
from aerodrome.errors import AeroError

FOLLOW_BATCH = 1000  # the API's largest page
FOLLOW_WAIT = 20  # seconds the API holds a follow request open; below the client's timeout
MIN_INTERVAL = 0.5  # never ask more often than this when nothing comes
MAX_BACKOFF = 10.0


def _time(value: str) -> str:
    try:
        return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError):
        return visible(str(value))


def _print(lines: list[dict[str, Any]], json_mode: bool) -> None:
    out = []
    for line in lines:
        if json_mode:
            out.append(json.dumps(line, separators=(",", ":")))
            continue
        machine = visible(str(line.get("machine", "")))
        region = visible(str(line.get("region", "")))
        stream = visible(str(line.get("stream", "")))
        out.append(
            f"{_time(line.get('time', ''))} {machine}[{region}] {stream:<6}  "
            f"{visible(str(line.get('message', '')))}"
        )
    if out:
        sys.stdout.write("\n".join(out) + "\n")
        sys.stdout.flush()


def _transient(error: AeroError) -> bool:
    """Worth retrying while following: the API is restarting, unreachable or overloaded."""
    return error.code == "unreachable" or error.status == 429 or error.status >= 500


def _follow(api: Client, path: str, params: dict[str, Any], cursor: int, json_mode: bool) -> None:
    backoff = 1.0
    while True:
        started = time.monotonic()
        try:
            page = api.get(
                path, params={**params, "after": cursor, "limit": FOLLOW_BATCH, "wait": FOLLOW_WAIT}
            )
        except AeroError as error:
            if not _transient(error):
                raise
            err_console.print(
                f"[yellow]aero logs:[/yellow] {escape(error.message)}; retrying in {backoff:.0f}s",
                highlight=False,
                markup=True,
                soft_wrap=True,
            )
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            continue
        backoff = 1.0
        _print(page["lines"], json_mode)
        cursor = page["next"]
        if not page["lines"]:
            time.sleep(max(0.0, MIN_INTERVAL - (time.monotonic() - started)))


def logs(
    app_name: Annotated[str, typer.Option("--app", "-a", help="App name or id.")],
    machine: Annotated[
        str | None, typer.Option("--machine", help="Only this machine's lines (mch_…).")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until Ctrl-C.")
    ] = False,
    lines: Annotated[
        int, typer.Option("--lines", "-n", min=1, max=1000, help="How many recent lines to show.")
    ] = 100,
    json_mode: JsonFlag = False,
) -> None:
    """Show an app's machine output: time, machine, region, stream, message. Secret values were
    masked before the lines were stored."""
    if hasattr(sys.stdout, "reconfigure"):  # never die on a terminal that cannot show a char
        sys.stdout.reconfigure(errors="backslashreplace")
    api = client()
    path = f"/v1/apps/{quote(app_name, safe='')}/logs"
    params = {"machine": machine}
    try:
        page = api.get(path, params={**params, "limit": lines})
        _print(page["lines"], json_mode)
        if not follow:
            if not page["lines"] and not json_mode:
                err_console.print(
                    f"no log lines for {app_name} yet: its machines have printed nothing "
                    "(deploy with `aero deploy`)",
                    highlight=False,
                    markup=False,
                    soft_wrap=True,
                )
            return
        _follow(api, path, params, page["next"], json_mode)
    except KeyboardInterrupt:
        return  # Ctrl-C is how following ends: not an error
    except BrokenPipeError:  # `aero logs … | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return
