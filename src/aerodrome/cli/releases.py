"""`aero releases`: an app's releases."""

from __future__ import annotations

from typing import Annotated

import typer

from aerodrome.cli.common import client
from aerodrome.cli.output import AppOpt, JsonFlag, console, emit_json, record, table
from aerodrome.cli.rollout import WAIT, DetachOpt, WaitOpt, roll_back

app = typer.Typer(help="List, show and roll back an app's releases.", invoke_without_command=True)


@app.callback()
def releases(
    ctx: typer.Context,
    app_name: Annotated[str | None, typer.Option("--app", "-a", help="App name or id.")] = None,
    json_mode: JsonFlag = False,
) -> None:
    """List releases, newest first: `aero releases -a APP`."""
    if ctx.invoked_subcommand is not None:
        return
    if app_name is None:
        raise typer.BadParameter("give the app with -a APP", param_hint="--app")
    rows = client().get(f"/v1/apps/{app_name}/releases")
    for row in rows:
        row["secret_count"] = len(row["secrets"])
    table(
        rows,
        [
            ("number", "VERSION"),
            ("status", "STATUS"),
            ("description", "DESCRIPTION"),
            ("secret_count", "SECRETS"),
            ("created_by", "BY"),
            ("created_at", "CREATED"),
        ],
        json_mode=json_mode,
        empty="no releases yet",
    )


NumberArg = Annotated[int, typer.Argument(help="Release number (see `aero releases -a APP`).")]


@app.command()
def show(number: NumberArg, app_name: AppOpt, json_mode: JsonFlag = False) -> None:
    """One release: its rollout status, and the machines that run it."""
    release = client().get(f"/v1/apps/{app_name}/releases/{number}")
    if json_mode:
        emit_json(release)  # as the API gives it: secrets as {name: version}
        return
    machines = release.pop("machines")
    release["secrets"] = ", ".join(f"{k} v{v}" for k, v in release["secrets"].items()) or "-"
    record(release, json_mode=False, title=f"release {number} of {app_name}")
    if machines is None:
        console.print("  machines: not shown (this token may not read machines)", highlight=False)
    for machine in machines or []:
        console.print(
            f"  {machine['id']}  {machine['state']}  {machine['health']}  {machine['reason']}",
            highlight=False,
        )


@app.command()
def rollback(
    number: NumberArg,
    app_name: AppOpt,
    detach: DetachOpt = False,
    wait_timeout: WaitOpt = WAIT,
    json_mode: JsonFlag = False,
) -> None:
    """A new release with release NUMBER's code and configuration (and today's secrets)."""
    roll_back(client(), app_name, number, detach=detach, json_mode=json_mode, timeout=wait_timeout)
