"""Deploys: upload an artifact (content-addressed), then create a release from it and a
validated `aerodrome.toml`. The runtime agent rolls releases out."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from aerodrome.api.authz import AppParam, AuthorizedRoute, Caller, requires
from aerodrome.api.routes.secrets import release_view
from aerodrome.errors import AeroError, InvalidInput, NotFound
from aerodrome.platform import secrets as release_rules
from aerodrome.runtime.artifact import Artifact, app_artifacts, store_artifact, stored_artifact
from aerodrome.runtime.config import load_config

router = APIRouter(prefix="/v1", route_class=AuthorizedRoute, tags=["deploys"])

DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
MAX_ARTIFACT = 256 * 1024 * 1024  # compressed; the packer limits the unpacked size too
ARTIFACT_PATH = re.compile(r"^/v1/apps/[^/]+/artifacts/sha256:[0-9a-f]{64}$")


class DeployBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    artifact: str = Field(max_length=80, description="sha256:<hex> of an uploaded artifact")
    config: str = Field(max_length=256 * 1024, description="the aerodrome.toml text")


def artifacts_dir(caller: Caller) -> Path:
    assert caller.target.app is not None
    return app_artifacts(caller.services.settings.data_dir, caller.target.app.id)


def artifact_file(caller: Caller, digest: str) -> Path:
    if DIGEST.fullmatch(digest) is None:
        raise InvalidInput(f"invalid artifact digest {digest[:80]!r}", hint="sha256:<64 hex>")
    return stored_artifact(artifacts_dir(caller), digest)


@router.get("/apps/{app}/artifacts/{digest}")
def show_artifact(
    app: str, digest: str, caller: Caller = Depends(requires("apps.read", AppParam()))
) -> dict[str, Any]:
    path = artifact_file(caller, digest)
    if not path.exists():
        raise NotFound(f"no artifact {digest}", hint="upload it with `aero deploy`")
    return {"digest": digest, "size": path.stat().st_size}


@router.put("/apps/{app}/artifacts/{digest}", status_code=201)
async def upload_artifact(
    app: str,
    digest: str,
    request: Request,
    caller: Caller = Depends(requires("apps.deploy", AppParam())),
) -> dict[str, Any]:
    """The body is the artifact; it is kept only if its SHA-256 is `digest`."""
    target = artifact_file(caller, digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_ARTIFACT:
                    raise AeroError(
                        f"artifact is larger than {MAX_ARTIFACT} bytes",
                        code="artifact_too_large",
                        status=413,
                    )
                out.write(chunk)
        candidate = Artifact(digest=digest, size=size, files=0, unpacked_bytes=0, path=Path(tmp))
        # hashing and fsync of up to 256 MiB: off the event loop
        stored = await run_in_threadpool(store_artifact, candidate, artifacts_dir(caller))
    finally:
        Path(tmp).unlink(missing_ok=True)
    with caller.services.store.write(caller.audit_context()) as tx:
        assert caller.target.app is not None
        tx.audit(
            "artifact.upload",
            caller.target.app.id,
            org_id=caller.target.app.org_id,
            detail={"digest": digest, "size": size},
        )
    return {"digest": digest, "size": stored.stat().st_size}


@router.post("/apps/{app}/deploys", status_code=201)
def deploy(
    app: str, body: DeployBody, caller: Caller = Depends(requires("apps.deploy", AppParam()))
) -> dict[str, Any]:
    """A new release: this artifact, this configuration, the app's current secrets."""
    target = caller.target.app
    assert target is not None
    config = load_config(body.config)
    if config.app != target.name:
        raise InvalidInput(
            f"aerodrome.toml is for app {config.app!r}, not {target.name!r}",
            hint="deploy with -a matching the file's `app`, or fix the file",
        )
    if not artifact_file(caller, body.artifact).exists():
        raise InvalidInput(
            f"artifact {body.artifact} was not uploaded", hint="`aero deploy` uploads it first"
        )
    with caller.services.store.write(caller.audit_context()) as tx:
        release = release_rules.create_release(
            tx, target, "deploy", artifact=body.artifact, config=body.config
        )
        return release_view(release) or {}
