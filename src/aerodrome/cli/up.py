"""`aero up`: run a single-node platform in the foreground."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from aerodrome import example
from aerodrome.cli.client import Client
from aerodrome.cli.output import JsonFlag, console, emit_json
from aerodrome.config import DEFAULT_DATA_DIR, Settings
from aerodrome.errors import AeroError


def _check_ports(host: str, ports: dict[str, int]) -> None:
    from aerodrome.up import port_free

    for flag, port in ports.items():
        if port and not port_free(host, port):
            raise AeroError(
                f"port {port} on {host} is in use",
                hint=f"stop what uses it or pass {flag}",
                code="port_in_use",
            )


def client_trust(settings: Settings) -> Path | None:
    """What clients must trust to reach the API: an operator's AERO_CA_BUNDLE, else the
    local CA when it issues, else (ACME) the system's roots."""
    if os.environ.get("AERO_CA_BUNDLE"):
        return Path(os.environ["AERO_CA_BUNDLE"]).resolve()
    if os.environ.get("AERO_ACME_DIRECTORY", "").strip():
        return None
    return settings.ca_dir / "root.pem"


def loopback(host: str) -> str:
    """An address to reach a server listening on `host` from this machine."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104


def deploy_example(
    settings: Settings, api_url: str, token: str, https_port: int, edge_host: str, ca: Path | None
) -> dict[str, Any]:
    """The example app on a first start (see `aerodrome.example`); a failure is reported,
    not raised: the platform itself is up."""
    address = loopback(edge_host)
    try:
        deployed = example.deploy_example(
            Client(token=token, url=api_url),
            domain=settings.domain,
            https_port=https_port,
            edge_address=f"[{address}]" if ":" in address else address,
            ca_bundle=ca,
            exclude_dirs=[settings.data_dir],
        )
    except AeroError as error:
        if error.code == "example_missing":
            example.clear_pending(settings.data_dir)  # nothing to retry at the next start
        return {"error": error.message, "hint": error.hint, "code": error.code}
    except OSError as error:  # reading examples/ failed: say so, try again at the next start
        return {"error": f"cannot read the example: {error}", "hint": "", "code": "io_error"}
    example.clear_pending(settings.data_dir)
    return deployed.view()


def up(
    data_dir: Annotated[
        Path, typer.Option(help="Where state, keys and logs live.", envvar="AERO_DATA_DIR")
    ] = Path(DEFAULT_DATA_DIR),
    domain: Annotated[
        str,
        typer.Option(
            help="Apps are served at APP.DOMAIN, the API at api.DOMAIN.", envvar="AERO_DOMAIN"
        ),
    ] = "localhost",
    https_port: Annotated[int, typer.Option(help="HTTPS port of the edge.")] = 8443,
    http_port: Annotated[int, typer.Option(help="HTTP port of the edge (redirects).")] = 8080,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics (loopback).")] = 9464,
    edge_host: Annotated[
        str, typer.Option(help="Address the edge listens on (0.0.0.0 to serve the network).")
    ] = "127.0.0.1",
    edge_workers: Annotated[int, typer.Option(help="Edge processes (0: one per core).")] = 0,
    api_port: Annotated[int, typer.Option(help="Loopback port of the control-plane API.")] = 4280,
    host: Annotated[str, typer.Option(help="Address the API listens on.")] = "127.0.0.1",
    admin_email: Annotated[
        str, typer.Option(help="Email of the first admin user.")
    ] = "admin@localhost",
    no_example: Annotated[
        bool,
        typer.Option(
            "--no-example",
            help="On a fresh data directory, do not deploy the example app (examples/hello).",
        ),
    ] = False,
    json_mode: JsonFlag = False,
) -> None:
    """Start the platform: API, certificate manager, edge (HTTPS for every app) and agent.

    The first start of a data directory also deploys the example app in examples/hello of the
    repository checkout and prints its URL (--no-example skips it)."""
    # The platform's own modules (store, migrations, supervisor) load only for this command:
    # every other `aero` command starts without them.
    from aerodrome.services import Services
    from aerodrome.up import (
        ENV_FILE,
        EdgePorts,
        Supervisor,
        agent_component,
        api_component,
        bootstrap,
        certs_component,
        edge_component,
        wait_for_https,
        write_env_file,
    )

    os.umask(0o077)  # everything the platform writes under the data directory is private
    settings = dataclasses.replace(Settings.from_env(data_dir), domain=domain.lower())
    _check_ports(host, {"--api-port": api_port})
    _check_ports(edge_host, {"--https-port": https_port, "--http-port": http_port})
    _check_ports("127.0.0.1", {"--metrics-port": metrics_port})
    with console.status("preparing state, keys and database…"):
        services = Services.open(settings)
        boot = bootstrap(services, admin_email)
        public_key = str(services.root.public)
        services.close()
    if boot.first_run:
        example.mark_pending(settings.data_dir)
    env_file = settings.data_dir / ENV_FILE
    env_file.unlink(missing_ok=True)  # re-written once the platform answers
    log_dir = settings.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    ports = EdgePorts(edge_host, https_port, http_port, metrics_port, edge_workers)
    supervisor = Supervisor(
        [
            api_component(settings, host, api_port),
            certs_component(settings),
            edge_component(settings, ports, (host, api_port)),
            agent_component(settings),
        ],
        log_dir,
        say=lambda line: console.print(line, highlight=False),
    )
    supervisor.handle_signals()
    ca_root = client_trust(settings)
    api_host = f"api.{settings.domain}"
    try:
        with console.status("starting the API, the certificate manager and the edge…"):
            supervisor.start_all()
        with console.status(f"waiting for the certificate of {api_host}…"):
            if not supervisor.stopping and not wait_for_https(
                api_host, https_port, ca_root, address=loopback(edge_host)
            ):
                raise AeroError(
                    f"the API did not answer at https://{api_host}:{https_port} in time",
                    hint=f"see {log_dir / 'certs.log'} and {log_dir / 'edge.log'}",
                    code="start_failed",
                )
        deployed: dict[str, Any] | None = None
        if no_example:
            example.clear_pending(settings.data_dir)
        elif example.is_pending(settings.data_dir) and not supervisor.stopping:
            with console.status("deploying the example app (examples/hello)…"):
                deployed = deploy_example(
                    settings, f"http://{loopback(host)}:{api_port}", boot.token,
                    https_port, edge_host, ca_root,
                )  # fmt: skip
    except BaseException:
        supervisor.stop_all()
        raise
    if supervisor.stopping:
        supervisor.stop_all()
        return
    port_suffix = "" if https_port == 443 else f":{https_port}"
    api_url = f"https://{api_host}{port_suffix}"
    info = {
        "api_url": api_url,
        "apps_url": f"https://APP.{settings.domain}{port_suffix}",
        "data_dir": str(settings.data_dir),
        "database": "sqlite" if settings.database_url.startswith("sqlite") else "postgresql",
        "env_file": str(env_file),
        "admin": boot.admin_email,
        "new_token": boot.new_token,
        "logs": str(log_dir),
        "ca_bundle": str(ca_root) if ca_root else None,
        "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
        "example": deployed,  # null unless this start deployed (or failed to deploy) it
    }
    if json_mode:
        emit_json(info)
    else:
        console.print(f"[bold green]aerodrome is up[/bold green]  API {api_url}", highlight=False)
        console.print(f"  apps      {info['apps_url']}", highlight=False)
        if deployed is not None:
            _print_example(deployed)
        console.print(f"  data      {settings.data_dir} ({info['database']})", highlight=False)
        console.print(f"  admin     {boot.admin_email}", highlight=False)
        if ca_root is not None:
            console.print(f"  trust     {ca_root}  (AERO_CA_BUNDLE)", highlight=False)
        console.print(f"  logs      {log_dir}", highlight=False)
        console.print(f"  metrics   {info['metrics']}", highlight=False)
        console.print(f"  configure a shell:  set -a; . {env_file}; set +a", highlight=False)
        console.print("  stop with Ctrl-C", style="dim")
    write_env_file(env_file, api_url, boot.token, public_key, ca_root)
    supervisor.run()
    if not json_mode:
        console.print("stopped")


def _print_example(deployed: dict[str, Any]) -> None:
    if "error" in deployed:
        console.print(
            f"  example   [yellow]not deployed:[/yellow] {escape(deployed['error'])}"
            + (f" ({escape(deployed['hint'])})" if deployed["hint"] else ""),
            highlight=False,
        )
        return
    console.print(
        f"  example   [bold]{deployed['url']}[/bold]  (app {deployed['app']}, org "
        f"{deployed['org']}, release {deployed['release']}: serving in a few seconds)",
        highlight=False,
    )
    console.print(f"            {escape(deployed['curl'])}", highlight=False, soft_wrap=True)
