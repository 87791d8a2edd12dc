"""Organizations and their members."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from aerodrome.api.authz import AuthorizedRoute, Caller, OrgParam, authenticated, requires
from aerodrome.api.views import member_view, org_view
from aerodrome.platform import orgs as org_rules
from aerodrome.store.models import Org, Token

router = APIRouter(prefix="/v1", route_class=AuthorizedRoute, tags=["orgs"])


class OrgCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slug: str = Field(max_length=63)
    name: str | None = Field(default=None, max_length=200)


class MemberAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=320)
    role: str = "member"


@router.post("/orgs", status_code=201)
def create_org(
    body: OrgCreate, caller: Caller = Depends(requires("orgs.create"))
) -> dict[str, Any]:
    assert caller.user is not None  # only session tokens are granted orgs.create
    with caller.services.store.write(caller.audit_context()) as tx:
        org = org_rules.create_org(tx, body.slug, body.name, caller.user)
        return org_view(org)


@router.get("/orgs")
def list_orgs(caller: Caller = Depends(authenticated())) -> list[dict[str, Any]]:
    with caller.services.store.read() as session:
        return [
            org_view(org)
            for org in candidate_orgs(session, caller)
            if caller.can(session, "orgs.read", org)
        ]


def candidate_orgs(session: Any, caller: Caller) -> list[Org]:
    """The orgs a caller could possibly reach, before the decision filters them."""
    if caller.user is not None:
        return org_rules.orgs_of_user(session, caller.user.id)
    record = session.get(Token, caller.token.token_id)
    if record is None or record.org_id is None:
        return []
    org = session.get(Org, record.org_id)
    return [org] if org else []


@router.get("/orgs/{org}")
def show_org(
    org: str, caller: Caller = Depends(requires("orgs.read", OrgParam()))
) -> dict[str, Any]:
    assert caller.target.org is not None
    return org_view(caller.target.org)


@router.get("/orgs/{org}/members")
def list_members(
    org: str, caller: Caller = Depends(requires("members.read", OrgParam()))
) -> list[dict[str, Any]]:
    assert caller.target.org is not None
    with caller.services.store.read() as session:
        return [member_view(u, m) for u, m in org_rules.list_members(session, caller.target.org)]


@router.post("/orgs/{org}/members", status_code=201)
def add_member(
    org: str, body: MemberAdd, caller: Caller = Depends(requires("members.write", OrgParam()))
) -> dict[str, Any]:
    assert caller.target.org is not None
    with caller.services.store.write(caller.audit_context()) as tx:
        user, membership = org_rules.add_member(tx, caller.target.org, body.email, body.role)
        return member_view(user, membership)


@router.delete("/orgs/{org}/members/{email}")
def remove_member(
    org: str, email: str, caller: Caller = Depends(requires("members.write", OrgParam()))
) -> dict[str, Any]:
    assert caller.target.org is not None
    with caller.services.store.write(caller.audit_context()) as tx:
        user = org_rules.remove_member(tx, caller.target.org, email)
        return {"removed": user.email, "org": caller.target.org.slug}
