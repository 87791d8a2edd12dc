"""Secrets (write-only: no route returns a value), releases, and the keyring."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from aerodrome.api.authz import AppParam, AuthorizedRoute, Caller, requires
from aerodrome.api.views import iso
from aerodrome.errors import AeroError, InvalidInput
from aerodrome.platform import secrets as secret_rules
from aerodrome.secrets.redact import Redactor
from aerodrome.secrets.values import SecretValue
from aerodrome.store.models import App, Release

router = APIRouter(prefix="/v1", route_class=AuthorizedRoute, tags=["secrets"])


class SecretsSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    values: dict[str, str] = Field(description="NAME → VALUE; values are never returned")
    stage: bool = False
    expect_version: int | None = Field(default=None, ge=0)

    def __repr_args__(self) -> Any:  # the values stay out of repr() and str() alike
        yield "names", sorted(self.values)
        yield "stage", self.stage
        yield "expect_version", self.expect_version


class SecretsUnset(BaseModel):
    model_config = ConfigDict(extra="forbid")
    names: list[str] = Field(max_length=1000)
    stage: bool = False


class Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to_version: int = Field(ge=1)
    stage: bool = False


class Retire(BaseModel):
    model_config = ConfigDict(extra="forbid")
    below: int = Field(ge=2)


@contextmanager
def _values_never_in_errors(values: dict[str, str]) -> Iterator[None]:
    """Whatever goes wrong, an error message leaves without the values it was about."""
    try:
        yield
    except AeroError as error:
        redactor = Redactor(values.values())
        error.message = redactor.redact_text(error.message)
        error.hint = redactor.redact_text(error.hint)
        raise


def release_view(release: Release | None) -> dict[str, Any] | None:
    if release is None:
        return None
    return {
        "number": release.number,
        "id": release.id,
        "secrets": json.loads(release.secret_versions),
        "artifact": release.artifact,
        "description": release.description,
        "created_by": release.created_by,
        "created_at": iso(release.created_at),
        "status": release.status,
        "status_reason": release.status_reason,
    }


def _release_unless_staged(tx: Any, app: App, stage: bool, why: str) -> Release | None:
    return None if stage else secret_rules.create_release(tx, app, why)


@router.get("/apps/{app}/secrets")
def list_secrets(
    app: str, caller: Caller = Depends(requires("secrets.read", AppParam()))
) -> list[dict[str, Any]]:
    assert caller.target.app is not None
    with caller.services.store.read() as session:
        rows = secret_rules.list_secrets(session, caller.target.app)
    return [
        {
            "name": r.name,
            "digest": r.digest,
            "version": r.version,
            "set_by": r.set_by,
            "updated_at": iso(r.updated_at),
            "status": r.status,
        }
        for r in rows
    ]


@router.post("/apps/{app}/secrets")
def set_secrets(
    app: str, body: SecretsSet, caller: Caller = Depends(requires("secrets.write", AppParam()))
) -> dict[str, Any]:
    target = caller.target.app
    assert target is not None
    for name, value in body.values.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"the value of {name[:64]} is not valid UTF-8 text") from None
    with _values_never_in_errors(body.values):
        for name, value in body.values.items():
            if "\x00" in value:
                raise InvalidInput(
                    f"the value of {name} holds a NUL byte, which no environment can carry"
                )
        values = {name: SecretValue(value.encode()) for name, value in body.values.items()}
        with caller.services.store.write(caller.audit_context()) as tx:
            keyring = caller.services.keyring(tx.session)
            results = secret_rules.set_secrets(
                tx,
                keyring,
                caller.services.digester,
                target,
                values,
                expect_version=body.expect_version,
            )
            changed = any(r.changed for r in results)
            release = (
                _release_unless_staged(tx, target, body.stage, "secrets set") if changed else None
            )
            view = release_view(release)
    return {
        "secrets": [r.__dict__ for r in results],
        "staged": body.stage and changed,
        "release": view,
    }


@router.post("/apps/{app}/secrets/unset")
def unset_secrets(
    app: str, body: SecretsUnset, caller: Caller = Depends(requires("secrets.write", AppParam()))
) -> dict[str, Any]:
    target = caller.target.app
    assert target is not None
    with caller.services.store.write(caller.audit_context()) as tx:
        names = secret_rules.unset_secrets(tx, target, body.names)
        view = release_view(_release_unless_staged(tx, target, body.stage, "secrets unset"))
    return {"unset": names, "staged": body.stage, "release": view}


@router.post("/apps/{app}/secrets/deploy")
def deploy_secrets(
    app: str, caller: Caller = Depends(requires("secrets.write", AppParam()))
) -> dict[str, Any]:
    target = caller.target.app
    assert target is not None
    with caller.services.store.write(caller.audit_context()) as tx:
        changes = secret_rules.staged_changes(tx.session, target)
        if not changes:
            return {"release": None, "changes": {}}
        view = release_view(secret_rules.create_release(tx, target, "secrets deploy"))
    return {
        "release": view,
        "changes": {name: {"from": old, "to": new} for name, (old, new) in changes.items()},
    }


@router.get("/apps/{app}/secrets/{name}/history")
def secret_history(
    app: str, name: str, caller: Caller = Depends(requires("secrets.read", AppParam()))
) -> list[dict[str, Any]]:
    assert caller.target.app is not None
    with caller.services.store.read() as session:
        rows = secret_rules.history(session, caller.target.app, name)
    return [
        {
            "version": r.version,
            "op": r.op,
            "digest": r.digest,
            "set_by": r.set_by,
            "set_at": iso(r.set_at),
            "size": r.size,
        }
        for r in rows
    ]


@router.post("/apps/{app}/secrets/{name}/rollback")
def rollback_secret(
    app: str,
    name: str,
    body: Rollback,
    caller: Caller = Depends(requires("secrets.write", AppParam())),
) -> dict[str, Any]:
    target = caller.target.app
    assert target is not None
    with caller.services.store.write(caller.audit_context()) as tx:
        keyring = caller.services.keyring(tx.session)
        result = secret_rules.rollback_secret(tx, keyring, target, name, body.to_version)
        release = (
            _release_unless_staged(tx, target, body.stage, f"secrets rollback {name}")
            if result.changed
            else None
        )
        view = release_view(release)
    return {"secret": result.__dict__, "staged": body.stage and result.changed, "release": view}


@router.get("/apps/{app}/releases")
def list_releases(
    app: str, caller: Caller = Depends(requires("apps.read", AppParam()))
) -> list[dict[str, Any]]:
    assert caller.target.app is not None
    with caller.services.store.read() as session:
        return [release_view(r) for r in secret_rules.list_releases(session, caller.target.app)]


@router.get("/keys")
def list_keys(caller: Caller = Depends(requires("platform.keys"))) -> list[dict[str, Any]]:
    with caller.services.store.read() as session:
        infos = secret_rules.list_key_versions(session)
    return [
        {
            "version": i.version,
            "state": i.state,
            "data_keys": i.data_keys,
            "created_at": iso(i.created_at),
        }
        for i in infos
    ]


@router.post("/keys/rotate")
def rotate_keys(caller: Caller = Depends(requires("platform.keys"))) -> dict[str, Any]:
    with caller.services.store.write(caller.audit_context()) as tx:
        version, count = secret_rules.rotate_keys(tx, caller.services.root_secret)
    return {"active_version": version, "rewrapped": count}


@router.post("/keys/retire")
def retire_keys(
    body: Retire, caller: Caller = Depends(requires("platform.keys"))
) -> dict[str, Any]:
    with caller.services.store.write(caller.audit_context()) as tx:
        retired = secret_rules.retire_keys(tx, body.below)
    return {"retired": retired, "min_decryption_version": body.below}
