"""`aero upstreams` and `aero http-service`: where the edge sends an app's traffic, and how."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from aerodrome.cli.common import client
from aerodrome.cli.output import AppOpt, JsonFlag, console, emit_json, record, table
from aerodrome.errors import InvalidInput

app = typer.Typer(help="Register the addresses the edge routes an app to.", no_args_is_help=True)
http_app = typer.Typer(
    help="Show or set an app's HTTP service settings (HTTPS, HSTS, CORS, limits).",
    no_args_is_help=True,
)


@app.command("list")
def list_(app_name: AppOpt, json_mode: JsonFlag = False) -> None:
    """List an app's upstream addresses."""
    rows = client().get(f"/v1/apps/{app_name}/upstreams")
    table(
        rows,
        [("id", "ID"), ("address", "ADDRESS"), ("created_by", "BY"), ("created_at", "CREATED")],
        json_mode=json_mode,
        empty="no upstreams",
    )


@app.command()
def add(
    address: Annotated[str, typer.Argument(help="IP:PORT")],
    app_name: AppOpt,
    json_mode: JsonFlag = False,
) -> None:
    """Route the app's traffic to ADDRESS (too)."""
    row = client().post(f"/v1/apps/{app_name}/upstreams", json={"address": address})
    if json_mode:
        emit_json(row)
    else:
        console.print(
            f"added upstream {row['address']} ({row['id']}) to {app_name}", highlight=False
        )


@app.command()
def remove(
    upstream_id: Annotated[str, typer.Argument(help="Upstream id (ups_…).")],
    app_name: AppOpt,
    json_mode: JsonFlag = False,
) -> None:
    """Stop routing to an upstream."""
    data = client().delete(f"/v1/apps/{app_name}/upstreams/{upstream_id}")
    if json_mode:
        emit_json(data)
    else:
        console.print(f"removed {upstream_id}", highlight=False)


@http_app.command()
def show(app_name: AppOpt, json_mode: JsonFlag = False) -> None:
    """Show the settings the edge applies to this app."""
    data = client().get(f"/v1/apps/{app_name}/http-service")
    if json_mode:
        emit_json(data)
    else:
        record(
            {k: json.dumps(v) if isinstance(v, dict) else v for k, v in data.items()},
            json_mode=False,
        )


@http_app.command("set")
def set_(
    app_name: AppOpt,
    file: Annotated[Path, typer.Option("--file", "-f", help="JSON document of settings.")],
    json_mode: JsonFlag = False,
) -> None:
    """Replace the settings with a validated JSON document."""
    try:
        body = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {file}: {exc}") from exc
    data = client().request("PUT", f"/v1/apps/{app_name}/http-service", json=body)
    if json_mode:
        emit_json(data)
    else:
        console.print(f"updated the HTTP service of {app_name}", highlight=False)
