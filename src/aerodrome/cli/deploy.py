"""`aero deploy`: package the app directory, upload it, and create a release."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from aerodrome.cli.common import client
from aerodrome.cli.output import JsonFlag, console, emit_json, err_console
from aerodrome.config import DEFAULT_DATA_DIR
from aerodrome.errors import AeroError
from aerodrome.runtime.artifact import build_artifact
from aerodrome.runtime.config import DEFAULT_FILE, load_config_file


def deploy(
    config: Annotated[Path, typer.Option("--config", "-c", help="Path to aerodrome.toml.")] = Path(
        DEFAULT_FILE
    ),
    app_name: Annotated[
        str | None, typer.Option("--app", "-a", help="App (default: `app` in the file).")
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Return once the release exists.")
    ] = False,
    json_mode: JsonFlag = False,
) -> None:
    """Deploy the directory of aerodrome.toml as a new release."""
    parsed = load_config_file(config)  # whole-file validation before anything else happens
    app = app_name or parsed.app
    source = config.resolve().parent
    data_dir = Path(os.environ.get("AERO_DATA_DIR", DEFAULT_DATA_DIR)).resolve()
    api = client()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        console=err_console,
        transient=True,
        disable=json_mode,
    ) as progress:
        task = progress.add_task("packaging", total=None)
        artifact = build_artifact(
            source,
            exclude_dirs=[data_dir],
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
        try:
            try:
                api.get(f"/v1/apps/{app}/artifacts/{artifact.digest}")
            except AeroError as missing:
                if missing.code != "not_found":
                    raise
                progress.update(task, description="uploading", completed=0, total=artifact.size)
                api.upload(f"/v1/apps/{app}/artifacts/{artifact.digest}", artifact.path)
            release = api.post(
                f"/v1/apps/{app}/deploys",
                json={"artifact": artifact.digest, "config": config.read_text()},
            )
        finally:
            artifact.discard()
    if json_mode:
        emit_json(
            {
                "app": app,
                "release": release,
                "artifact": {
                    "digest": artifact.digest,
                    "size": artifact.size,
                    "files": artifact.files,
                },
            }
        )
        return
    console.print(
        f"release {release['number']} of {app}: {artifact.files} files, {artifact.size} bytes "
        f"({artifact.digest[:19]}…), {len(release['secrets'])} secret(s)",
        highlight=False,
    )
    if not detach:
        console.print(
            f"the agent rolls it out: its machine takes traffic once its check passes "
            f"(`aero upstreams list -a {app}`)",
            style="dim",
        )
