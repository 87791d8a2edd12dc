"""`aero secrets`: set, import, unset, list, deploy, history, rollback. Never shows a value."""

from __future__ import annotations

import io
import sys
from typing import Annotated, Any

import typer
from dotenv import dotenv_values

from aerodrome.cli.common import client
from aerodrome.cli.output import AppOpt, JsonFlag, console, emit_json, err_console, table
from aerodrome.cli.rollout import WAIT, follow, wait_through
from aerodrome.errors import InvalidInput

app = typer.Typer(
    help="Manage an app's secrets (write-only: values are never shown).", no_args_is_help=True
)

StageOpt = Annotated[
    bool, typer.Option("--stage", help="Store now; deploy later with `aero secrets deploy`.")
]
DetachOpt = Annotated[
    bool, typer.Option("--detach", help="Return without waiting for machines to restart.")
]


def _read_stdin() -> str:
    if sys.stdin.isatty():
        err_console.print("reading from stdin (end with Ctrl-D)…")
    return sys.stdin.read()


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """NAME=VALUE arguments; a VALUE of `-` is read from stdin (one at most), so a value never
    has to appear in argv or shell history."""
    values: dict[str, str] = {}
    from_stdin = [p for p in pairs if p.partition("=")[2] == "-"]
    if len(from_stdin) > 1:
        raise InvalidInput(
            "only one secret can read its value from stdin",
            hint="use `aero secrets import` for several",
        )
    for position, pair in enumerate(pairs, start=1):
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise InvalidInput(  # never echoed: it may be a value typed without its name
                f"argument {position} is not NAME=VALUE",
                hint="for example DATABASE_URL=- (the value is then read from stdin)",
            )
        if value == "-":
            value = _read_stdin()
            value = value[:-1] if value.endswith("\n") else value
        values[name] = value
    return values


def _report(data: dict[str, Any], json_mode: bool, app_name: str, detach: bool = True) -> None:
    if json_mode:
        _emit_after_rollout(data, app_name, detach)
        return
    rows = [{**r, "result": "set" if r["changed"] else "unchanged"} for r in data["secrets"]]
    table(
        rows,
        [("name", "NAME"), ("version", "VERSION"), ("digest", "DIGEST"), ("result", "RESULT")],
        json_mode=False,
    )
    _release_line(data, app_name, detach)


def _emit_after_rollout(data: dict[str, Any], app_name: str, detach: bool) -> None:
    """`--json`: a release with code to run restarts the app's machines one at a time with
    the new values; unless `--detach`, wait for that (`rollout`: the release as it ended),
    print, and exit 1 if it failed."""
    release = data.get("release")
    if not detach and release and release.get("status") == "pending":
        data["rollout"] = wait_through(
            client(), app_name, release["number"], timeout=WAIT, show=False, secrets_change=True
        )
    emit_json(data)
    if (data.get("rollout") or {}).get("status") in ("failed", "superseded"):
        raise typer.Exit(1)  # as without --json: the values did not reach the machines


def _release_line(data: dict[str, Any], app_name: str, detach: bool = True) -> None:
    release = data.get("release")
    if release and release.get("status") == "pending" and not detach:
        console.print(
            f"release {release['number']} of {app_name} restarts its machines one at a time",
            highlight=False,
        )
        follow(
            client(), app_name, release["number"], json_mode=False, timeout=WAIT,
            secrets_change=True,
        )  # fmt: skip
    elif release and release.get("status") == "pending":
        console.print(
            f"release {release['number']} of {app_name} restarts its machines one at a time; "
            f"follow it with `aero releases show {release['number']} -a {app_name}`",
            highlight=False,
        )
    elif release:
        console.print(
            f"release {release['number']} of {app_name} carries these secrets; "
            "machines pick them up at their next start",
            highlight=False,
        )
    elif data.get("staged"):
        console.print(
            f"staged: run `aero secrets deploy -a {app_name}` to release", highlight=False
        )


@app.command("set")
def set_(
    pairs: Annotated[list[str], typer.Argument(help="NAME=VALUE pairs; VALUE '-' reads stdin.")],
    app_name: AppOpt,
    stage: StageOpt = False,
    detach: DetachOpt = False,
    expect_version: Annotated[
        int | None,
        typer.Option(help="Only set if the secret is at this version (0: must not exist)."),
    ] = None,
    json_mode: JsonFlag = False,
) -> None:
    """Set secrets. Unchanged values keep their version and restart nothing."""
    body = {"values": parse_assignments(pairs), "stage": stage, "expect_version": expect_version}
    _report(client().post(f"/v1/apps/{app_name}/secrets", json=body), json_mode, app_name, detach)


@app.command("import")
def import_(
    app_name: AppOpt,
    stage: StageOpt = False,
    detach: DetachOpt = False,
    json_mode: JsonFlag = False,
) -> None:
    """Set secrets from NAME=VALUE lines on stdin (dotenv syntax: quotes, multi-line values)."""
    text = _read_stdin()
    parsed = dotenv_values(stream=io.StringIO(text), interpolate=False)
    if any(value is None for value in parsed.values()):
        # Never echo the line: a value typed without its NAME= would reach the terminal.
        raise InvalidInput(
            "a line on stdin has no NAME= before its value", hint="each line must be NAME=VALUE"
        )
    if not parsed:
        raise InvalidInput("no NAME=VALUE lines on stdin")
    body = {"values": {k: v for k, v in parsed.items() if v is not None}, "stage": stage}
    _report(client().post(f"/v1/apps/{app_name}/secrets", json=body), json_mode, app_name, detach)


@app.command()
def unset(
    names: Annotated[list[str], typer.Argument(help="Secret names.")],
    app_name: AppOpt,
    stage: StageOpt = False,
    detach: DetachOpt = False,
    json_mode: JsonFlag = False,
) -> None:
    """Remove secrets (their history stays, for rollback)."""
    data = client().post(
        f"/v1/apps/{app_name}/secrets/unset", json={"names": names, "stage": stage}
    )
    if json_mode:
        _emit_after_rollout(data, app_name, detach)
        return
    console.print(f"unset {', '.join(data['unset'])}", highlight=False)
    _release_line(data, app_name, detach)


@app.command("list")
def list_(app_name: AppOpt, json_mode: JsonFlag = False) -> None:
    """List secrets: names, digests, versions and status. Never values."""
    rows = client().get(f"/v1/apps/{app_name}/secrets")
    table(
        rows,
        [
            ("name", "NAME"),
            ("digest", "DIGEST"),
            ("version", "VERSION"),
            ("set_by", "SET BY"),
            ("updated_at", "UPDATED"),
            ("status", "STATUS"),
        ],
        json_mode=json_mode,
        empty=f"{app_name} has no secrets",
    )


@app.command()
def deploy(app_name: AppOpt, detach: DetachOpt = False, json_mode: JsonFlag = False) -> None:
    """Release the staged secret changes."""
    data = client().post(f"/v1/apps/{app_name}/secrets/deploy")
    if json_mode:
        _emit_after_rollout(data, app_name, detach)
    elif data["release"] is None:
        console.print("nothing staged: the latest release already carries every secret")
    else:
        for name, change in data["changes"].items():
            console.print(
                f"  {name}: v{change['from'] or '-'} → v{change['to'] or '(unset)'}",
                highlight=False,
            )
        _release_line(data, app_name, detach)


@app.command()
def history(
    name: Annotated[str, typer.Argument(help="Secret name.")],
    app_name: AppOpt,
    json_mode: JsonFlag = False,
) -> None:
    """Every version of a secret: who, when, digest."""
    rows = client().get(f"/v1/apps/{app_name}/secrets/{name}/history")
    table(
        rows,
        [
            ("version", "VERSION"),
            ("op", "OP"),
            ("digest", "DIGEST"),
            ("set_by", "SET BY"),
            ("set_at", "WHEN"),
        ],
        json_mode=json_mode,
    )


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Secret name.")],
    app_name: AppOpt,
    to_version: Annotated[
        int, typer.Option("--to-version", help="The version whose value to restore.")
    ],
    stage: StageOpt = False,
    detach: DetachOpt = False,
    json_mode: JsonFlag = False,
) -> None:
    """Make an earlier value current again (as a new version)."""
    data = client().post(
        f"/v1/apps/{app_name}/secrets/{name}/rollback",
        json={"to_version": to_version, "stage": stage},
    )
    if json_mode:
        _emit_after_rollout(data, app_name, detach)
        return
    secret = data["secret"]
    if secret["changed"]:
        console.print(
            f"{name} is now version {secret['version']} (the value of v{to_version})",
            highlight=False,
        )
    else:
        console.print(
            f"{name} unchanged: it already holds the value of v{to_version}", highlight=False
        )
    _release_line(data, app_name, detach)
