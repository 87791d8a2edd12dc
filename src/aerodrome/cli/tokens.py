"""`aero tokens`: mint, list, revoke, attenuate and inspect capability tokens."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from aerodrome.cli.client import read_token_input
from aerodrome.cli.common import client
from aerodrome.cli.output import AppOpt, JsonFlag, console, emit_json, err_console, record, table
from aerodrome.durations import format_duration, parse_duration
from aerodrome.errors import AeroError, InvalidInput
from aerodrome.tokens.actions import DEFAULT_EXPIRY
from aerodrome.tokens.attenuate import attenuate as attenuate_token
from aerodrome.tokens.attenuate import inspect as inspect_token
from aerodrome.tokens.attenuate import parse_public_key

app = typer.Typer(help="Mint, list, revoke, attenuate and inspect tokens.", no_args_is_help=True)
create = typer.Typer(help="Mint a new token.", no_args_is_help=True)
app.add_typer(create, name="create")

OrgOpt = Annotated[str, typer.Option("--org", "-o", help="Org slug or id.")]
NameOpt = Annotated[str | None, typer.Option("--name", "-n", help="A name to recognise it by.")]


def _expiry_opt(kind: str) -> Any:
    return typer.Option(
        "--expiry",
        "-x",
        help=f"Lifetime, e.g. 48h or 30d (default {format_duration(DEFAULT_EXPIRY[kind])}).",
    )


def _minted(data: dict[str, Any], json_mode: bool) -> None:
    if json_mode:
        emit_json(data)
        return
    expires = datetime.fromisoformat(data["expires_at"])
    left = format_duration(expires - datetime.now(UTC))
    err_console.print(
        f"{data['type']} token {data['id']} ({data['scope']}) expires {data['expires_at']} "
        f"(in {left}). It is shown once: store it now.",
        highlight=False,
    )
    sys.stdout.write(data["token"] + "\n")


@create.command()
def deploy(
    app_name: AppOpt,
    name: NameOpt = None,
    expiry: Annotated[str | None, _expiry_opt("deploy")] = None,
    json_mode: JsonFlag = False,
) -> None:
    """A token that deploys, reads and sets secrets of one app only."""
    body = {"type": "deploy", "name": name, "expiry": expiry}
    _minted(client().post(f"/v1/apps/{app_name}/tokens", json=body), json_mode)


@create.command()
def org(
    org_ref: OrgOpt,
    name: NameOpt = None,
    expiry: Annotated[str | None, _expiry_opt("org")] = None,
    json_mode: JsonFlag = False,
) -> None:
    """A token that manages one org (not its members or tokens)."""
    body = {"type": "org", "name": name, "expiry": expiry}
    _minted(client().post(f"/v1/orgs/{org_ref}/tokens", json=body), json_mode)


@create.command()
def readonly(
    org_ref: OrgOpt,
    name: NameOpt = None,
    expiry: Annotated[str | None, _expiry_opt("readonly")] = None,
    json_mode: JsonFlag = False,
) -> None:
    """A token that reads everything in one org and changes nothing."""
    body = {"type": "readonly", "name": name, "expiry": expiry}
    _minted(client().post(f"/v1/orgs/{org_ref}/tokens", json=body), json_mode)


@create.command()
def machine(
    app_name: AppOpt,
    machine_id: Annotated[str | None, typer.Option("--machine", help="Machine id (mch_…).")] = None,
    name: NameOpt = None,
    expiry: Annotated[str | None, _expiry_opt("machine")] = None,
    json_mode: JsonFlag = False,
) -> None:
    """A token for one machine of one app (used by the runtime)."""
    body = {"type": "machine", "name": name, "expiry": expiry, "machine": machine_id}
    _minted(client().post(f"/v1/apps/{app_name}/tokens", json=body), json_mode)


@app.command("list")
def list_(
    org_ref: Annotated[str | None, typer.Option("--org", "-o", help="Tokens of this org.")] = None,
    app_name: Annotated[str | None, typer.Option("--app", "-a", help="Tokens of this app.")] = None,
    json_mode: JsonFlag = False,
) -> None:
    """List tokens of an org or an app (by default: the ones you created)."""
    if org_ref and app_name:
        raise InvalidInput("give --org or --app, not both")
    path = (
        f"/v1/orgs/{org_ref}/tokens"
        if org_ref
        else f"/v1/apps/{app_name}/tokens"
        if app_name
        else "/v1/tokens"
    )
    rows = client().get(path)
    table(
        rows,
        [
            ("id", "ID"),
            ("name", "NAME"),
            ("type", "TYPE"),
            ("scope", "SCOPE"),
            ("created_by", "CREATED BY"),
            ("created_at", "CREATED"),
            ("expires_at", "EXPIRES"),
            ("revoked_at", "REVOKED AT"),
        ],
        json_mode=json_mode,
        empty="no tokens",
    )


@app.command()
def revoke(
    ref: Annotated[str, typer.Argument(help="Token id (tok_…) or a block's revocation id.")],
    from_token: Annotated[
        str | None,
        typer.Option(
            "--from-token", help="The attenuated token that carries the block ('-' reads stdin)."
        ),
    ] = None,
    json_mode: JsonFlag = False,
) -> None:
    """Revoke a token, or one attenuated block of it (its parent stays valid)."""
    body: dict[str, Any] = {}
    if from_token is not None:
        body["token"] = read_token_input(from_token)
    result = client().post(f"/v1/tokens/{ref}/revoke", json=body or None)["revoked"]
    if json_mode:
        emit_json(result)
    else:
        console.print(
            f"Revoked {result['scope']} {result['revocation_id'][:16]}… "
            f"of token {result['token_id']}",
            highlight=False,
        )


@app.command()
def attenuate(
    apps: Annotated[
        list[str] | None, typer.Option("--app", "-a", help="Only this app (repeatable).")
    ] = None,
    orgs: Annotated[
        list[str] | None, typer.Option("--org", "-o", help="Only this org (repeatable).")
    ] = None,
    actions: Annotated[
        str | None, typer.Option(help="Only these actions, comma-separated.")
    ] = None,
    expiry: Annotated[
        str | None, typer.Option("--expiry", "-x", help="Expire sooner, e.g. 1h.")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", "-t", help="Token to narrow ('-' reads stdin).")
    ] = None,
    public_key: Annotated[
        str | None,
        typer.Option(help="The platform's token public key (default: AERO_TOKEN_PUBLIC_KEY)."),
    ] = None,
    json_mode: JsonFlag = False,
) -> None:
    """Narrow a token offline (no server call) and print the new token."""
    key_text = public_key or os.environ.get("AERO_TOKEN_PUBLIC_KEY")
    if not key_text:
        raise AeroError(
            "the platform's public key is needed to re-serialise the token",
            hint="set AERO_TOKEN_PUBLIC_KEY (in aero.env; `aero tokens public-key` "
            "prints it) or pass --public-key",
            code="missing_public_key",
        )
    source = read_token_input(token)
    narrowed = attenuate_token(
        source,
        parse_public_key(key_text),
        apps=apps,
        orgs=orgs,
        actions=[a.strip() for a in actions.split(",") if a.strip()] if actions else None,
        expiry=parse_duration(expiry) if expiry else None,
    )
    info = inspect_token(narrowed)
    last = info.blocks[-1]
    if json_mode:
        emit_json(
            {
                "token": narrowed,
                "revocation_id": last.revocation_id,
                "restrictions": last.restrictions,
                "expires_at": info.expires_at.isoformat() if info.expires_at else None,
            }
        )
        return
    err_console.print(
        f"attenuated token {info.token_id}: block {last.index} "
        f"(revocation id {last.revocation_id[:16]}…) adds {last.restrictions}",
        highlight=False,
    )
    sys.stdout.write(narrowed + "\n")


@app.command()
def inspect(
    token: Annotated[
        str | None, typer.Option("--token", "-t", help="Token to show ('-' reads stdin).")
    ] = None,
    json_mode: JsonFlag = False,
) -> None:
    """Show what a token allows, block by block, without the server."""
    info = inspect_token(read_token_input(token))
    if json_mode:
        emit_json(info.to_dict())
        return
    record(
        {
            "token": info.token_id,
            "type": info.kind,
            "user": info.user_id,
            "expires_at": info.expires_at.isoformat() if info.expires_at else None,
            "blocks": len(info.blocks),
        },
        json_mode=False,
    )
    for block in info.blocks:
        console.print(
            f"\n[bold]block {block.index}[/bold] "
            f"{'(authority)' if block.index == 0 else '(attenuation)'}  "
            f"revocation id {block.revocation_id}",
            highlight=False,
        )
        for key, value in block.restrictions.items():
            shown = ", ".join(map(str, value)) if isinstance(value, list) else value
            console.print(f"  {key}: {shown}", highlight=False)
    console.print("\n(decoded without checking signatures: the server verifies them)", style="dim")


@app.command("public-key")
def public_key_cmd(json_mode: JsonFlag = False) -> None:
    """Print the platform's token public key (for offline attenuation and verification)."""
    data = client().request("GET", "/v1/tokens/public-key", auth=False)
    if json_mode:
        emit_json(data)
    else:
        sys.stdout.write(data["public_key"] + "\n")
