"""`aero`: the entry point. Every failure ends as one line (or a JSON error) and exit 1."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from aerodrome import __version__
from aerodrome.cli import (
    apps,
    audit,
    auth,
    certs,
    config,
    deploy,
    keys,
    logs,
    machines,
    orgs,
    releases,
    secrets,
    tokens,
    up,
    upstreams,
)
from aerodrome.cli.common import state
from aerodrome.cli.output import fail
from aerodrome.errors import AeroError

app = typer.Typer(
    name="aero",
    help="aerodrome: a self-hosted application platform, secure by default.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(auth.app, name="auth")
app.add_typer(orgs.app, name="orgs")
app.add_typer(apps.app, name="apps")
app.add_typer(tokens.app, name="tokens")
app.add_typer(secrets.app, name="secrets")
app.add_typer(releases.app, name="releases")
app.add_typer(certs.app, name="certs")
app.add_typer(keys.app, name="keys")
app.add_typer(config.app, name="config")
app.add_typer(machines.app, name="machines")
app.add_typer(upstreams.app, name="upstreams")
app.add_typer(upstreams.http_app, name="http-service")
app.add_typer(audit.app, name="audit")
app.command("up")(up.up)
app.command("deploy")(deploy.deploy)
app.command("logs")(logs.logs)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"aero {__version__}\n")
        raise typer.Exit()


@app.callback()
def root(
    access_token: Annotated[
        str | None,
        typer.Option(
            "--access-token",
            "-t",
            envvar="AERO_API_TOKEN",
            show_envvar=True,
            help="API token (default: AERO_API_TOKEN).",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    state.access_token = access_token


def main() -> None:
    json_mode = "--json" in sys.argv or "-j" in sys.argv
    try:
        status = app(standalone_mode=False)
        if isinstance(status, int) and status:
            sys.exit(status)
    except AeroError as error:
        try:
            fail(error, json_mode=json_mode)
        except typer.Exit as exit_:
            sys.exit(exit_.exit_code)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click's usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
