"""Apps."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from aerodrome.api.authz import AppParam, AuthorizedRoute, Caller, OrgParam, authenticated, requires
from aerodrome.api.routes.orgs import candidate_orgs
from aerodrome.api.views import app_view
from aerodrome.errors import NotFound
from aerodrome.platform import apps as app_rules
from aerodrome.platform import orgs as org_rules

router = APIRouter(prefix="/v1", route_class=AuthorizedRoute, tags=["apps"])


class AppCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=63)
    environment: str = "production"


@router.post("/orgs/{org}/apps", status_code=201)
def create_app(
    org: str, body: AppCreate, caller: Caller = Depends(requires("apps.create", OrgParam()))
) -> dict[str, Any]:
    assert caller.target.org is not None
    with caller.services.store.write(caller.audit_context()) as tx:
        app = app_rules.create_app(tx, caller.target.org, body.name, body.environment, caller.actor)
        return app_view(app, caller.target.org)


@router.get("/apps")
def list_apps(
    org: str | None = None, caller: Caller = Depends(authenticated())
) -> list[dict[str, Any]]:
    """The apps the caller may read, optionally in one org."""
    with caller.services.store.read() as session:
        orgs = candidate_orgs(session, caller)
        if org is not None:
            wanted = org_rules.get_org(session, org)
            orgs = [o for o in orgs if o.id == wanted.id]
            if not orgs:
                raise NotFound(f"org {org!r} not found", hint="list yours with `aero orgs list`")
        out = []
        for each in orgs:
            for app in app_rules.list_apps(session, each.id):
                if caller.can(session, "apps.read", each, app):
                    out.append(app_view(app, each))
        return out


@router.get("/apps/{app}")
def show_app(
    app: str, caller: Caller = Depends(requires("apps.read", AppParam()))
) -> dict[str, Any]:
    assert caller.target.app is not None
    return app_view(caller.target.app, caller.target.org)


@router.delete("/apps/{app}")
def destroy_app(
    app: str, caller: Caller = Depends(requires("apps.destroy", AppParam()))
) -> dict[str, Any]:
    target = caller.target.app
    assert target is not None
    with caller.services.store.write(caller.audit_context()) as tx:
        revoked = app_rules.destroy_app(tx, tx.session.merge(target))
    return {"destroyed": target.name, "revoked_tokens": revoked}
