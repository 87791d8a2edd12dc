"""`aero up`: run a single-node platform in the foreground."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from aerodrome.cli.output import JsonFlag, console, emit_json
from aerodrome.config import DEFAULT_DATA_DIR, Settings
from aerodrome.errors import AeroError
from aerodrome.services import Services
from aerodrome.up import (
    ENV_FILE,
    Supervisor,
    api_component,
    bootstrap,
    certs_component,
    port_free,
    write_env_file,
)


def up(
    data_dir: Annotated[
        Path, typer.Option(help="Where state, keys and logs live.", envvar="AERO_DATA_DIR")
    ] = Path(DEFAULT_DATA_DIR),
    api_port: Annotated[int, typer.Option(help="Port of the control-plane API.")] = 4280,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    admin_email: Annotated[
        str, typer.Option(help="Email of the first admin user.")
    ] = "admin@localhost",
    json_mode: JsonFlag = False,
) -> None:
    """Start the platform (API and certificate manager; edge and agent join later)."""
    os.umask(0o077)  # everything the platform writes under the data directory is private
    settings = Settings.from_env(data_dir)
    if not port_free(host, api_port):
        raise AeroError(
            f"port {api_port} on {host} is in use",
            hint="stop what uses it or pass --api-port",
            code="port_in_use",
        )
    with console.status("preparing state, keys and database…"):
        services = Services.open(settings)
        api_url = f"http://{host}:{api_port}"
        boot = bootstrap(services, admin_email)
        public_key = str(services.root.public)
        services.close()
    env_file = settings.data_dir / ENV_FILE
    env_file.unlink(missing_ok=True)  # re-written once the platform answers
    log_dir = settings.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(
        [api_component(settings, host, api_port), certs_component(settings)],
        log_dir,
        say=lambda line: console.print(line, highlight=False),
    )
    supervisor.handle_signals()
    try:
        with console.status("starting the API…"):
            supervisor.start_all()
    except BaseException:
        supervisor.stop_all()
        raise
    if supervisor.stopping:
        supervisor.stop_all()
        return
    info = {
        "api_url": api_url,
        "data_dir": str(settings.data_dir),
        "database": "sqlite" if settings.database_url.startswith("sqlite") else "postgresql",
        "env_file": str(env_file),
        "admin": boot.admin_email,
        "new_token": boot.new_token,
        "logs": str(log_dir),
        "ca_root": str(settings.ca_dir / "root.pem"),
    }
    if json_mode:
        emit_json(info)
    else:
        console.print(f"[bold green]aerodrome is up[/bold green]  API {api_url}", highlight=False)
        console.print(f"  data      {settings.data_dir} ({info['database']})", highlight=False)
        console.print(f"  admin     {boot.admin_email}", highlight=False)
        console.print(f"  logs      {log_dir}", highlight=False)
        console.print(f"  local CA  {info['ca_root']}", highlight=False)
        console.print(f"  configure a shell:  set -a; . {env_file}; set +a", highlight=False)
        console.print("  stop with Ctrl-C", style="dim")
    write_env_file(env_file, api_url, boot.token, public_key)
    supervisor.run()
    if not json_mode:
        console.print("stopped")
