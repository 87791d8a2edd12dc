"""`aero apps`: create, list, show and destroy apps."""

from __future__ import annotations

from typing import Annotated

import typer

from aerodrome.cli.common import client
from aerodrome.cli.output import JsonFlag, confirm, console, record, table

app = typer.Typer(help="Create and manage apps.", no_args_is_help=True)

COLUMNS = [
    ("name", "NAME"),
    ("org", "ORG"),
    ("environment", "ENVIRONMENT"),
    ("id", "ID"),
    ("created_at", "CREATED"),
]


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Globally unique app name (becomes its hostname).")],
    org: Annotated[str, typer.Option("--org", "-o", help="Org that owns the app.")],
    environment: Annotated[str, typer.Option("--env", help="production or test.")] = "production",
    json_mode: JsonFlag = False,
) -> None:
    """Create an app in an org."""
    created = client().post(f"/v1/orgs/{org}/apps", json={"name": name, "environment": environment})
    if json_mode:
        record(created, json_mode=True)
    else:
        console.print(
            f"Created app [bold]{created['name']}[/bold] in {created['org']} "
            f"({created['environment']}, {created['id']})"
        )


@app.command("list")
def list_(
    org: Annotated[str | None, typer.Option("--org", "-o", help="Only this org's apps.")] = None,
    json_mode: JsonFlag = False,
) -> None:
    """List the apps you can see."""
    rows = client().get("/v1/apps", params={"org": org})
    table(rows, COLUMNS, json_mode=json_mode, empty="no apps")


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="App name or id.")], json_mode: JsonFlag = False
) -> None:
    """Show one app."""
    record(client().get(f"/v1/apps/{name}"), json_mode=json_mode)


@app.command()
def destroy(
    name: Annotated[str, typer.Argument(help="App name or id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_mode: JsonFlag = False,
) -> None:
    """Destroy an app and revoke every token scoped to it."""
    confirm(f"destroying {name}", f"Destroy app {name} and revoke its tokens?", yes)
    result = client().delete(f"/v1/apps/{name}")
    if json_mode:
        record(result, json_mode=True)
    else:
        console.print(
            f"Destroyed {result['destroyed']}; revoked {len(result['revoked_tokens'])} token(s)"
        )
