"""`aero machines`: what runs an app, and stopping, starting or restarting one machine."""

from __future__ import annotations

from typing import Annotated

import typer

from aerodrome.cli.common import client
from aerodrome.cli.output import AppOpt, JsonFlag, console, emit_json, table

app = typer.Typer(help="List, stop, start and restart an app's machines.", no_args_is_help=True)
MachineArg = Annotated[str, typer.Argument(help="Machine id (mch_…).")]


@app.command("list")
def list_(app_name: AppOpt, json_mode: JsonFlag = False) -> None:
    """Machines with their state, release, region and health."""
    rows = client().get(f"/v1/apps/{app_name}/machines")
    table(
        rows,
        [
            ("id", "ID"),
            ("state", "STATE"),
            ("release", "RELEASE"),
            ("region", "REGION"),
            ("health", "HEALTH"),
            ("address", "ADDRESS"),
            ("reason", "REASON"),
            ("updated_at", "UPDATED"),
        ],
        json_mode=json_mode,
        empty=f"no machines: deploy with `aero deploy -a {app_name}`",
    )


def _ask(what: str, machine: str, app_name: str, json_mode: bool, done: str) -> None:
    row = client().post(f"/v1/apps/{app_name}/machines/{machine}/{what}")
    if json_mode:
        emit_json(row)
    else:
        console.print(
            f"machine {row['id']} of {app_name} {done} (now {row['state']}); "
            f"follow it with `aero machines list -a {app_name}`",
            highlight=False,
        )


@app.command()
def stop(machine: MachineArg, app_name: AppOpt, json_mode: JsonFlag = False) -> None:
    """Drain a machine (no new requests reach it), then stop it."""
    _ask("stop", machine, app_name, json_mode, "will drain and stop")


@app.command()
def start(machine: MachineArg, app_name: AppOpt, json_mode: JsonFlag = False) -> None:
    """Start a stopped or failed machine; it takes traffic once its check passes."""
    _ask("start", machine, app_name, json_mode, "will start")


@app.command()
def restart(machine: MachineArg, app_name: AppOpt, json_mode: JsonFlag = False) -> None:
    """Drain, stop and start a machine again (a fresh credential, the release's secrets)."""
    _ask("restart", machine, app_name, json_mode, "will restart")
