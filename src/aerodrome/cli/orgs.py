"""`aero orgs`: organizations and their members."""

from __future__ import annotations

from typing import Annotated

import typer

from aerodrome.cli.common import client
from aerodrome.cli.output import JsonFlag, console, record, table

app = typer.Typer(help="Create and inspect organizations.", no_args_is_help=True)
members = typer.Typer(help="List, add and remove an org's members.", no_args_is_help=True)
app.add_typer(members, name="members")

OrgOpt = Annotated[str, typer.Option("--org", "-o", help="Org slug or id.")]


@app.command()
def create(
    slug: Annotated[str, typer.Argument(help="Short name: lower-case letters, digits, dashes.")],
    name: Annotated[str | None, typer.Option(help="Display name (defaults to the slug).")] = None,
    json_mode: JsonFlag = False,
) -> None:
    """Create an org; you become its admin."""
    org = client().post("/v1/orgs", json={"slug": slug, "name": name})
    if json_mode:
        record(org, json_mode=True)
    else:
        console.print(f"Created org [bold]{org['slug']}[/bold] ({org['id']})")


@app.command("list")
def list_(json_mode: JsonFlag = False) -> None:
    """List the orgs you belong to."""
    rows = client().get("/v1/orgs")
    table(
        rows,
        [("slug", "SLUG"), ("name", "NAME"), ("id", "ID"), ("created_at", "CREATED")],
        json_mode=json_mode,
        empty="no orgs yet: create one with `aero orgs create SLUG`",
    )


@app.command()
def show(
    org: Annotated[str, typer.Argument(help="Org slug or id.")], json_mode: JsonFlag = False
) -> None:
    """Show one org."""
    record(client().get(f"/v1/orgs/{org}"), json_mode=json_mode)


@members.command("list")
def members_list(org: OrgOpt, json_mode: JsonFlag = False) -> None:
    """List an org's members and their roles."""
    rows = client().get(f"/v1/orgs/{org}/members")
    table(
        rows,
        [("email", "EMAIL"), ("role", "ROLE"), ("user_id", "USER"), ("added_at", "ADDED")],
        json_mode=json_mode,
    )


@members.command("add")
def members_add(
    email: Annotated[str, typer.Argument(help="The member's email.")],
    org: OrgOpt,
    role: Annotated[str, typer.Option(help="admin or member.")] = "member",
    json_mode: JsonFlag = False,
) -> None:
    """Add a user to an org (the user is created if new)."""
    member = client().post(f"/v1/orgs/{org}/members", json={"email": email, "role": role})
    if json_mode:
        record(member, json_mode=True)
    else:
        console.print(f"Added {member['email']} to {org} as {member['role']}")


@members.command("remove")
def members_remove(
    email: Annotated[str, typer.Argument(help="The member's email.")],
    org: OrgOpt,
    json_mode: JsonFlag = False,
) -> None:
    """Remove a user from an org."""
    result = client().delete(f"/v1/orgs/{org}/members/{email}")
    if json_mode:
        record(result, json_mode=True)
    else:
        console.print(f"Removed {result['removed']} from {result['org']}")
