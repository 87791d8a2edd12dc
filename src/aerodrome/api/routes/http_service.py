"""An app's HTTP service settings and upstream addresses (what the edge routes to)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel, ConfigDict, Field

from aerodrome.api.authz import AppParam, AuthorizedRoute, Caller, requires
from aerodrome.api.views import iso
from aerodrome.platform import http_service as rules
from aerodrome.store.models import Upstream

router = APIRouter(prefix="/v1", route_class=AuthorizedRoute, tags=["http"])


class UpstreamAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str = Field(max_length=255, description="IP:PORT")


def upstream_view(row: Upstream) -> dict[str, Any]:
    return {
        "id": row.id,
        "address": row.address,
        "created_by": row.created_by,
        "created_at": iso(row.created_at),
    }


@router.get("/apps/{app}/http-service")
def show_http_service(
    app: str, caller: Caller = Depends(requires("apps.read", AppParam()))
) -> dict[str, Any]:
    assert caller.target.app is not None
    with caller.services.store.read() as session:
        return rules.get_http_service(session, caller.target.app.id).to_dict()


@router.put("/apps/{app}/http-service")
def set_http_service(
    app: str,
    body: dict[str, Any] = Body(..., description="force_https, hsts, concurrency, cors"),
    caller: Caller = Depends(requires("apps.deploy", AppParam())),
) -> dict[str, Any]:
    assert caller.target.app is not None
    with caller.services.store.write(caller.audit_context()) as tx:
        return rules.set_http_service(tx, caller.target.app, body).to_dict()


@router.get("/apps/{app}/upstreams")
def list_upstreams(
    app: str, caller: Caller = Depends(requires("machines.read", AppParam()))
) -> list[dict[str, Any]]:
    assert caller.target.app is not None
    with caller.services.store.read() as session:
        return [upstream_view(u) for u in rules.list_upstreams(session, caller.target.app.id)]


@router.post("/apps/{app}/upstreams", status_code=201)
def add_upstream(
    app: str, body: UpstreamAdd, caller: Caller = Depends(requires("machines.write", AppParam()))
) -> dict[str, Any]:
    assert caller.target.app is not None
    with caller.services.store.write(caller.audit_context()) as tx:
        return upstream_view(rules.add_upstream(tx, caller.target.app, body.address))


@router.delete("/apps/{app}/upstreams/{upstream_id}")
def remove_upstream(
    app: str, upstream_id: str, caller: Caller = Depends(requires("machines.write", AppParam()))
) -> dict[str, Any]:
    assert caller.target.app is not None
    with caller.services.store.write(caller.audit_context()) as tx:
        rules.remove_upstream(tx, caller.target.app, upstream_id)
    return {"removed": upstream_id}
