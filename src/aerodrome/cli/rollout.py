"""Follow a release until the agent has it serving, or it fails; shared by `aero deploy`,
rollbacks (`aero releases rollback`, `aero deploy --rollback`) and secrets changes."""

from __future__ import annotations

import time
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.markup import escape

from aerodrome.cli.client import Client
from aerodrome.cli.output import console, emit_json, err_console, visible
from aerodrome.errors import AeroError
from aerodrome.ids import MACHINE_ID

WAIT = 300.0  # seconds a release may take to serve before the CLI gives up waiting
DetachOpt = Annotated[bool, typer.Option("--detach", help="Return once the release exists.")]
WaitOpt = Annotated[
    float, typer.Option("--wait-timeout", help="Seconds to wait for the release to serve.")
]
LAST_LINES = 15
POLL = 0.5


def app_url(api: Client, app: str) -> str | None:
    """`https://APP.DOMAIN[:PORT]/` when the CLI talks to the API through the edge."""
    parts = urlsplit(api.url)
    host = parts.hostname or ""
    if not host.startswith("api."):
        return None
    port = f":{parts.port}" if parts.port and parts.port != 443 else ""
    return f"https://{app}.{host.removeprefix('api.')}{port}/"


def _summary(release: dict[str, Any]) -> str:
    if release["machines"] is None:  # a token that may not read machines
        return f"release {release['number']}: {release['status']} (machines not shown)"
    states: dict[str, int] = {}
    for machine in release["machines"]:
        label = (
            machine["state"] if machine["state"] != "started" else f"started/{machine['health']}"
        )
        states[label] = states.get(label, 0) + 1
    machines = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "no machine yet"
    return f"release {release['number']}: {release['status']} ({machines})"


def wait(api: Client, app: str, number: int, *, timeout: float, show: bool) -> dict[str, Any]:
    """The release once `complete`, `failed` or `superseded`, polled (with a spinner of its
    machines' states if `show`); AeroError `deploy_timeout` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    with console.status("waiting for the agent", spinner="dots") as status:
        if not show:
            status.stop()
        while True:
            release: dict[str, Any] = api.get(f"/v1/apps/{app}/releases/{number}")
            if release["status"] in ("complete", "failed", "superseded"):
                return release
            if time.monotonic() > deadline:
                raise AeroError(
                    f"release {number} of {app} is still {release['status']} after {timeout:.0f}s",
                    hint=f"see `aero machines list -a {app}` and `aero logs -a {app}`",
                    code="deploy_timeout",
                )
            if show:
                status.update(escape(_summary(release)))
            time.sleep(POLL)


def wait_through(
    api: Client, app: str, number: int, *, timeout: float, show: bool, secrets_change: bool
) -> dict[str, Any]:
    """`wait`, and when the release is superseded by one that carries this change (any later
    release carries a secrets change; a deploy's only if the next one has its code, as a
    secrets change made meanwhile does), the release that does, until one ends."""
    deadline = time.monotonic() + timeout
    while True:
        left = max(0.0, deadline - time.monotonic())
        release = wait(api, app, number, timeout=left, show=show)
        after = release.get("superseded_by")
        if release["status"] != "superseded" or not after:
            return release
        if not (secrets_change or after["carries_code"]):
            return release
        if show:
            console.print(
                f"release {number} of {app} was superseded by release {after['number']}, "
                "which carries it",
                style="dim",
                highlight=False,
            )
        number = after["number"]


def follow(
    api: Client,
    app: str,
    number: int,
    *,
    json_mode: bool,
    timeout: float,
    extra: dict[str, Any] | None = None,
    secrets_change: bool = False,
) -> None:
    """Wait for the release (or the one that carries it): `complete` exits 0 (with the app's
    URL), `failed` exits 1 with the reason and the failing machine's last log lines (scrubbed
    of secrets when stored), `superseded` by a release without it exits 1."""
    release = wait_through(
        api, app, number, timeout=timeout, show=not json_mode, secrets_change=secrets_change
    )
    number = release["number"]
    lines, unreadable = (
        _last_lines(api, app, release) if release["status"] == "failed" else ([], "")
    )
    url = app_url(api, app)
    if json_mode:
        shown = {"app": app, "release": release, "url": url, "logs": lines}
        if unreadable:
            shown["logs_unavailable"] = unreadable
        emit_json({**shown, **(extra or {})})
    elif release["status"] == "superseded":
        err_console.print(
            f"[yellow]release {number} of {app} will not roll out:[/yellow] "
            f"{escape(release['status_reason'])}; see `aero releases -a {app}`",
            highlight=False,
        )
    elif release["status"] == "complete":
        machines = release["machines"]
        where = f" on {len(machines)} machine(s)" if machines is not None else ""
        console.print(
            f"release {number} of {app} is serving{where}" + (f": {url}" if url else ""),
            highlight=False,
        )
    else:
        err_console.print(
            f"[red]release {number} of {app} failed:[/red] "
            f"{escape(visible(release['status_reason']))}",
            highlight=False,
            soft_wrap=True,
        )
        err_console.print("  the previous release keeps serving", highlight=False)
        if unreadable:
            err_console.print(
                f"  (its log lines are not shown: {escape(unreadable)})", highlight=False
            )
        if lines:
            err_console.print(f"  last log lines of {lines[0]['machine']}:", highlight=False)
            for line in lines:
                err_console.print(
                    f"    {line['stream']:<6} {escape(visible(line['message']))}",
                    highlight=False,
                    soft_wrap=True,
                )
    if release["status"] in ("failed", "superseded"):
        raise typer.Exit(1)


def _last_lines(api: Client, app: str, release: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The failing machine's last log lines, or why they cannot be shown."""
    found = MACHINE_ID.search(release.get("status_reason", ""))
    if found is None:
        return [], ""
    try:
        page = api.get(f"/v1/apps/{app}/logs?machine={found.group(0)}&limit={LAST_LINES}")
    except AeroError as error:  # e.g. a token that may deploy but not read logs
        if error.status == 403:
            return [], "this token may not read logs (logs.read)"
        return [], error.message
    return list(page["lines"]), ""


def roll_back(
    api: Client, app: str, number: int, *, detach: bool, json_mode: bool, timeout: float
) -> None:
    """A new release with release `number`'s code and config; followed unless `detach`."""
    release = api.post(f"/v1/apps/{app}/releases/{number}/rollback")
    if json_mode and detach:
        emit_json(release)
    elif not json_mode:
        console.print(
            f"release {release['number']} of {app} rolls back to release {number}",
            highlight=False,
        )
    if not detach:
        follow(api, app, release["number"], json_mode=json_mode, timeout=timeout)
