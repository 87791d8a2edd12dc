"""`aero audit`: read and verify the tamper-evident audit log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aerodrome.cli.common import client
from aerodrome.cli.output import JsonFlag, console, emit_json, err_console, table
from aerodrome.errors import AeroError

app = typer.Typer(help="List and verify the audit log.", no_args_is_help=True)


@app.command("list")
def list_(
    org: Annotated[str | None, typer.Option("--org", "-o", help="Only this org's events.")] = None,
    after: Annotated[int, typer.Option(help="Events after this sequence number.")] = 0,
    limit: Annotated[int, typer.Option(help="At most this many events.")] = 100,
    json_mode: JsonFlag = False,
) -> None:
    """List audit events (all of them needs a platform admin)."""
    path = f"/v1/orgs/{org}/audit" if org else "/v1/audit"
    data = client().get(path, params={"after": after, "limit": limit})
    table(
        data["events"],
        [
            ("seq", "SEQ"),
            ("at", "TIME"),
            ("actor", "ACTOR"),
            ("action", "ACTION"),
            ("target", "TARGET"),
            ("outcome", "OUTCOME"),
            ("reason", "REASON"),
            ("client_ip", "IP"),
        ],
        json_mode=json_mode,
        empty="no events",
    )


@app.command()
def verify(
    database_url: Annotated[
        str | None,
        typer.Option(help="Verify this database directly (e.g. a copy) instead of asking the API."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Data directory holding the audit key and checkpoints (with --database-url)."
        ),
    ] = None,
    json_mode: JsonFlag = False,
) -> None:
    """Recompute the hash chain and check the signed checkpoints."""
    if database_url is not None:
        from aerodrome.audit.store import audit_public_key, verify_store
        from aerodrome.config import Settings
        from aerodrome.store.db import Store

        settings = Settings.from_env(data_dir)
        store = Store(database_url)
        try:
            report = verify_store(
                store, audit_public_key(settings.keys_dir), settings.checkpoint_file
            ).__dict__
        finally:
            store.dispose()
    else:
        report = client().get("/v1/audit/verify")
    if json_mode:
        emit_json(report)
    elif report["ok"]:
        console.print(
            f"audit log OK: {report['events']} events, "
            f"{report['checkpoints']} signed checkpoints verified"
        )
    else:
        err_console.print(
            f"[red]audit log FAILED verification[/red]: first bad event {report['first_bad_seq']}"
        )
        for problem in report["problems"]:
            err_console.print(f"  - {problem}", highlight=False)
    if not report["ok"]:
        if json_mode:
            raise typer.Exit(1)
        raise AeroError(
            f"audit log tampered: first bad event {report['first_bad_seq']}",
            hint="restore the database from a backup and investigate",
            code="audit_tampered",
        )
