"""What `aero deploy` does once `aerodrome.toml` is validated: package the app directory,
upload the artifact unless the server already has it, and create a release from it.

Shared by `aero deploy` and `aero up` (which deploys the example app on a first start), so
both make releases the same way, through the same API calls."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aerodrome.cli.client import Client
from aerodrome.errors import AeroError
from aerodrome.runtime.artifact import Artifact, ProgressCallback, build_artifact


@dataclass(frozen=True)
class Published:
    artifact: Artifact  # its temporary file is gone; digest, size and counts remain
    release: dict[str, Any]
    uploaded: bool  # False: the server had this artifact already


def publish(
    api: Client,
    app: str,
    source: Path,
    config_text: str,
    *,
    exclude_dirs: Iterable[Path] = (),
    packaging: ProgressCallback | None = None,
    uploading: Callable[[int], None] | None = None,
) -> Published:
    """Package `source`, `PUT /v1/apps/APP/artifacts/DIGEST` unless it exists, then
    `POST /v1/apps/APP/deploys` with the digest and `config_text` (validated again there).

    `packaging(done, total)` reports bytes packed; `uploading(size)` is called before an
    upload starts."""
    artifact = build_artifact(source, exclude_dirs=exclude_dirs, progress=packaging)
    path = f"/v1/apps/{app}/artifacts/{artifact.digest}"
    uploaded = False
    try:
        try:
            api.get(path)
        except AeroError as missing:
            if missing.code != "not_found":
                raise
            if uploading is not None:
                uploading(artifact.size)
            api.upload(path, artifact.path)
            uploaded = True
        release = api.post(
            f"/v1/apps/{app}/deploys", json={"artifact": artifact.digest, "config": config_text}
        )
    finally:
        artifact.discard()
    return Published(artifact, release, uploaded)
