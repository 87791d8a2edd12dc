"""`aero keys`: the secrets keyring (platform admins)."""

from __future__ import annotations

from typing import Annotated

import typer

from aerodrome.cli.common import client
from aerodrome.cli.output import JsonFlag, console, emit_json, table

app = typer.Typer(
    help="Rotate and retire the keys that wrap secret data keys.", no_args_is_help=True
)


@app.command("list")
def list_(json_mode: JsonFlag = False) -> None:
    """Key versions, their state, and how many data keys each wraps."""
    rows = client().get("/v1/keys")
    table(
        rows,
        [
            ("version", "VERSION"),
            ("state", "STATE"),
            ("data_keys", "DATA KEYS"),
            ("created_at", "CREATED"),
        ],
        json_mode=json_mode,
    )


@app.command()
def rotate(json_mode: JsonFlag = False) -> None:
    """Add a key version and re-wrap every data key under it (no value is decrypted)."""
    with console.status("rotating: re-wrapping every data key…"):
        data = client().post("/v1/keys/rotate")
    if json_mode:
        emit_json(data)
    else:
        console.print(
            f"key v{data['active_version']} is active; re-wrapped {data['rewrapped']} data key(s)",
            highlight=False,
        )


@app.command()
def retire(
    below: Annotated[int, typer.Option(help="Retire every version below this one.")],
    json_mode: JsonFlag = False,
) -> None:
    """Retire old key versions (the minimum decryption version becomes BELOW)."""
    data = client().post("/v1/keys/retire", json={"below": below})
    if json_mode:
        emit_json(data)
    else:
        retired = ", ".join(f"v{v}" for v in data["retired"]) or "nothing"
        console.print(f"retired {retired}; minimum decryption version is v{below}", highlight=False)
