"""`aero auth`: who am I."""

from __future__ import annotations

import typer

from aerodrome.cli.common import client
from aerodrome.cli.output import JsonFlag, record

app = typer.Typer(help="Show who the current token belongs to.", no_args_is_help=True)


@app.command()
def whoami(json_mode: JsonFlag = False) -> None:
    """Show the user and token behind AERO_API_TOKEN."""
    data = client().get("/v1/auth/whoami")
    user = data.get("user") or {}
    if json_mode:
        record(data, json_mode=True)
        return
    record(
        {
            "user": user.get("email", "-"),
            "token": data["token_id"],
            "type": data["type"],
            "attenuated": data["attenuated"],
            "expires_at": data["expires_at"],
        },
        json_mode=False,
    )
