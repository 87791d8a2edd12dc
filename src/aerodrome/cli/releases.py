"""`aero releases`: an app's releases."""

from __future__ import annotations

from typing import Annotated

import typer

from aerodrome.cli.common import client
from aerodrome.cli.output import JsonFlag, table

app = typer.Typer(help="List an app's releases.", invoke_without_command=True)


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
            ("description", "DESCRIPTION"),
            ("secret_count", "SECRETS"),
            ("created_by", "BY"),
            ("created_at", "CREATED"),
        ],
        json_mode=json_mode,
        empty="no releases yet",
    )
