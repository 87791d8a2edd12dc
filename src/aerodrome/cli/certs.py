"""`aero certs`: an app's TLS certificates. Adds and removes custom hostnames; shows status,
issuer and expiry. Never shows a private key."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from aerodrome.cli.common import client
from aerodrome.cli.output import AppOpt, JsonFlag, confirm, console, emit_json, record, table

app = typer.Typer(
    help="Manage an app's TLS certificates and custom hostnames.", no_args_is_help=True
)

HostArg = Annotated[str, typer.Argument(help="A DNS name, e.g. www.example.com.")]

COLUMNS = [
    ("hostname", "HOSTNAME"),
    ("kind", "KIND"),
    ("issuer", "ISSUER"),
    ("status", "STATUS"),
    ("not_after", "EXPIRES"),
    ("reason", "REASON"),
]
SHOWN = (
    "hostname",
    "app",
    "kind",
    "issuer",
    "status",
    "reason",
    "serving",
    "not_before",
    "not_after",
    "renew_after",
    "serial",
    "fingerprint_sha256",
    "attempts",
    "next_attempt_at",
)


def _path(app_name: str, hostname: str | None = None) -> str:
    base = f"/v1/apps/{app_name}/certs"
    return f"{base}/{hostname}" if hostname else base


def _record(data: dict[str, Any]) -> None:
    record({key: data.get(key) for key in SHOWN}, json_mode=False)


@app.command()
def add(hostname: HostArg, app_name: AppOpt, json_mode: JsonFlag = False) -> None:
    """Add a custom hostname to an app; its certificate is obtained automatically."""
    created = client().post(_path(app_name), json={"hostname": hostname})
    if json_mode:
        emit_json(created)
        return
    console.print(
        f"Added {created['hostname']} to {app_name}: certificate {created['status']} "
        f"({created['issuer']} issuer)",
        highlight=False,
    )
    if created["issuer"] == "acme":
        console.print(
            f"  point {created['hostname']}'s DNS (A/AAAA) at this platform's edge so the CA "
            "can validate it",
            highlight=False,
        )
    console.print(f"  check with: aero certs show {created['hostname']} -a {app_name}")


@app.command("list")
def list_(app_name: AppOpt, json_mode: JsonFlag = False) -> None:
    """List an app's certificates: hostname, issuer, status, expiry."""
    rows = client().get(_path(app_name))
    table(rows, COLUMNS, json_mode=json_mode, empty=f"{app_name} has no certificates yet")


@app.command()
def show(hostname: HostArg, app_name: AppOpt, json_mode: JsonFlag = False) -> None:
    """Show one certificate's status, issuer, validity and last failure."""
    data = client().get(_path(app_name, hostname))
    if json_mode:
        emit_json(data)
    else:
        _record(data)


@app.command()
def remove(
    hostname: HostArg,
    app_name: AppOpt,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_mode: JsonFlag = False,
) -> None:
    """Remove a custom hostname and its certificate."""
    confirm(
        f"removing {hostname}",
        f"Remove {hostname} from {app_name}? The edge stops serving it.",
        yes,
    )
    result = client().delete(_path(app_name, hostname))
    if json_mode:
        emit_json(result)
    else:
        console.print(f"Removed {result['removed']} from {result['app']}", highlight=False)
