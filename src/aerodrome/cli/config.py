"""`aero config`: check an `aerodrome.toml` before deploying it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aerodrome.cli.common import client
from aerodrome.cli.output import JsonFlag, console, emit_json
from aerodrome.runtime.config import DEFAULT_FILE, load_config_file

app = typer.Typer(
    help="Validate an aerodrome.toml, or show an app's deployed one.", no_args_is_help=True
)


@app.command()
def validate(
    config: Annotated[Path, typer.Option("--config", "-c", help="Path to aerodrome.toml.")] = Path(
        DEFAULT_FILE
    ),
    json_mode: JsonFlag = False,
) -> None:
    """Check the whole file; every problem is listed with its line."""
    parsed = load_config_file(config)
    summary = {
        "app": parsed.app,
        "primary_region": parsed.primary_region,
        "processes": parsed.processes,
        "env": sorted(parsed.env),
        "internal_port": parsed.http_service.internal_port if parsed.http_service else None,
        "checks": len(parsed.http_service.checks) if parsed.http_service else 0,
        "strategy": parsed.strategy,
    }
    if json_mode:
        emit_json({"valid": True, **summary})
    else:
        console.print(
            f"{config}: valid (app {parsed.app}, {len(parsed.processes)} process group(s),"
            f" {summary['checks']} check(s), {parsed.strategy} deploys)",
            highlight=False,
        )


@app.command()
def show(
    app_name: Annotated[str, typer.Option("--app", "-a", help="App name or id.")],
    json_mode: JsonFlag = False,
) -> None:
    """The aerodrome.toml of the app's newest release with code, as deployed."""
    shown = client().get(f"/v1/apps/{app_name}/config")
    if json_mode:
        emit_json(shown)
        return
    console.print(f"# {app_name}, release {shown['release']}", style="dim", highlight=False)
    console.print(shown["text"], highlight=False, markup=False, end="")
