"""Minting, listing and revoking tokens. Attenuation and inspection need no server."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel, ConfigDict, Field

from aerodrome.api.authz import (
    AppParam,
    AuthorizedRoute,
    Caller,
    OrgParam,
    RevocationTarget,
    authenticated,
    requires,
)
from aerodrome.api.views import iso, token_view
from aerodrome.durations import parse_duration
from aerodrome.errors import InvalidInput
from aerodrome.ids import new_id
from aerodrome.platform import tokens as token_records
from aerodrome.tokens.mint import Scope

router = APIRouter(prefix="/v1", route_class=AuthorizedRoute, tags=["tokens"])


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=200)
    expiry: str | None = Field(default=None, max_length=32, description="e.g. 48h, 30d")


class OrgTokenCreate(TokenCreate):
    type: Literal["org", "readonly"]


class AppTokenCreate(TokenCreate):
    type: Literal["deploy", "machine"]
    machine: str | None = Field(default=None, max_length=32)


class RevokeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str | None = Field(default=None, max_length=16384)


def _created(caller: Caller, scope: Scope, body: TokenCreate) -> dict[str, Any]:
    expiry = parse_duration(body.expiry) if body.expiry else None
    with caller.services.store.write(caller.audit_context()) as tx:
        minted, row = token_records.create_token(
            tx, caller.services.root, scope, created_by=caller.actor, name=body.name, expiry=expiry
        )
        view = token_view(tx.session, row)
    return {**view, "token": minted.token, "expires_at": iso(minted.expires_at)}


@router.post("/orgs/{org}/tokens", status_code=201)
def create_org_token(
    org: str, body: OrgTokenCreate, caller: Caller = Depends(requires("tokens.create", OrgParam()))
) -> dict[str, Any]:
    assert caller.target.org is not None
    return _created(caller, Scope(body.type, org_id=caller.target.org.id), body)


@router.post("/apps/{app}/tokens", status_code=201)
def create_app_token(
    app: str, body: AppTokenCreate, caller: Caller = Depends(requires("tokens.create", AppParam()))
) -> dict[str, Any]:
    target = caller.target.app
    assert target is not None
    machine = None
    if body.type == "machine":
        machine = body.machine or new_id("mch")
        if not machine.startswith("mch_"):
            raise InvalidInput(
                f"invalid machine id {machine!r}", hint="machine ids start with mch_"
            )
    elif body.machine:
        raise InvalidInput("--machine applies to machine tokens only")
    scope = Scope(body.type, org_id=target.org_id, app_id=target.id, machine_id=machine)
    return _created(caller, scope, body)


@router.get("/orgs/{org}/tokens")
def list_org_tokens(
    org: str, caller: Caller = Depends(requires("tokens.read", OrgParam()))
) -> list[dict[str, Any]]:
    assert caller.target.org is not None
    with caller.services.store.read() as session:
        rows = token_records.list_tokens(session, org_id=caller.target.org.id)
        return [token_view(session, row) for row in rows]


@router.get("/apps/{app}/tokens")
def list_app_tokens(
    app: str, caller: Caller = Depends(requires("tokens.read", AppParam()))
) -> list[dict[str, Any]]:
    assert caller.target.app is not None
    with caller.services.store.read() as session:
        rows = token_records.list_tokens(session, app_id=caller.target.app.id)
        return [token_view(session, row) for row in rows]


@router.get("/tokens")
def list_my_tokens(caller: Caller = Depends(authenticated())) -> list[dict[str, Any]]:
    """Tokens the caller created (for a user: across all orgs)."""
    with caller.services.store.read() as session:
        rows = token_records.list_tokens(session, created_by=caller.actor)
        return [token_view(session, row) for row in rows]


@router.post("/tokens/{ref}/revoke")
def revoke(
    ref: str,
    body: RevokeBody | None = Body(default=None),
    caller: Caller = Depends(requires("tokens.revoke", RevocationTarget())),
) -> dict[str, Any]:
    """Revoke a token (by id or its first block's revocation id) or one attenuated block."""
    target = caller.target
    assert target.token is not None and target.revocation_id is not None
    with caller.services.store.write(caller.audit_context()) as tx:
        root = tx.session.merge(target.token)
        if target.revocation_id == root.revocation_id:
            token_records.revoke_record(tx, root)
            revoked = {"token_id": root.id, "revocation_id": root.revocation_id, "scope": "token"}
        else:
            token_records.revoke_block(tx, target.revocation_id, root)
            revoked = {
                "token_id": root.id,
                "revocation_id": target.revocation_id,
                "scope": "attenuated block",
            }
    caller.services.refresh_revocations()
    return {"revoked": revoked}
