"""`aero deploy`: package the app directory, upload it, create a release, and follow it until
it serves (or fails, keeping the previous release)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from aerodrome.cli.common import client
from aerodrome.cli.output import JsonFlag, console, emit_json, err_console
from aerodrome.cli.publish import publish
from aerodrome.cli.rollout import WAIT, DetachOpt, WaitOpt, follow, roll_back
from aerodrome.config import DEFAULT_DATA_DIR
from aerodrome.runtime.config import DEFAULT_FILE, load_config_file


def deploy(
    config: Annotated[Path, typer.Option("--config", "-c", help="Path to aerodrome.toml.")] = Path(
        DEFAULT_FILE
    ),
    app_name: Annotated[
        str | None, typer.Option("--app", "-a", help="App (default: `app` in the file).")
    ] = None,
    rollback: Annotated[
        int | None,
        typer.Option("--rollback", help="Deploy release N's code and config again instead."),
    ] = None,
    detach: DetachOpt = False,
    wait_timeout: WaitOpt = WAIT,
    json_mode: JsonFlag = False,
) -> None:
    """Deploy the directory of aerodrome.toml as a new release, and wait until it serves."""
    api = client()
    if rollback is not None:
        app = app_name or load_config_file(config).app
        roll_back(api, app, rollback, detach=detach, json_mode=json_mode, timeout=wait_timeout)
        return
    parsed = load_config_file(config)  # whole-file validation before anything else happens
    app = app_name or parsed.app
    data_dir = Path(os.environ.get("AERO_DATA_DIR", DEFAULT_DATA_DIR)).resolve()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        console=err_console,
        transient=True,
        disable=json_mode,
    ) as progress:
        task = progress.add_task("packaging", total=None)
        published = publish(
            api,
            app,
            config.resolve().parent,
            config.read_text(),
            exclude_dirs=[data_dir],
            packaging=lambda done, total: progress.update(task, completed=done, total=total),
            uploading=lambda size: progress.update(
                task, description="uploading", completed=0, total=size
            ),
        )
    artifact, release = published.artifact, published.release
    packaged = {"digest": artifact.digest, "size": artifact.size, "files": artifact.files}
    if json_mode and detach:
        emit_json({"app": app, "release": release, "artifact": packaged})
        return
    if not json_mode:
        console.print(
            f"release {release['number']} of {app}: {artifact.files} files, {artifact.size} "
            f"bytes ({artifact.digest[:19]}…), {len(release['secrets'])} secret(s)",
            highlight=False,
        )
    if detach:
        console.print(
            f"the agent rolls it out; follow it with `aero releases show {release['number']} "
            f"-a {app}`",
            style="dim",
        )
        return
    follow(
        api, app, release["number"], json_mode=json_mode, timeout=wait_timeout,
        extra={"artifact": packaged},
    )  # fmt: skip
