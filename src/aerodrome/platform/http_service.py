"""An app's HTTP service settings (what the edge applies) and its upstream addresses, in the
store. The policy itself (parsing, validation) is `platform/http_policy.py`."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from aerodrome.errors import Conflict, NotFound
from aerodrome.ids import new_id
from aerodrome.platform.http_policy import (
    CORS_METHODS,
    ONE_YEAR,
    Cors,
    HttpService,
    parse_address,
    parse_http_service,
)
from aerodrome.store.db import Tx
from aerodrome.store.models import App, AppHttpConfig, Upstream, utcnow

__all__ = [
    "CORS_METHODS",
    "ONE_YEAR",
    "Cors",
    "HttpService",
    "add_upstream",
    "get_http_service",
    "list_upstreams",
    "parse_address",
    "parse_http_service",
    "remove_upstream",
    "set_http_service",
]


def get_http_service(session: Session, app_id: str) -> HttpService:
    row = session.get(AppHttpConfig, app_id)
    return parse_http_service(json.loads(row.config)) if row else HttpService()


def set_http_service(tx: Tx, app: App, data: dict[str, Any]) -> HttpService:
    service = parse_http_service(data)
    row = tx.session.get(AppHttpConfig, app.id)
    body = json.dumps(service.to_dict(), sort_keys=True)
    if row is None:
        tx.session.add(AppHttpConfig(app_id=app.id, config=body))
    else:
        row.config, row.updated_at = body, utcnow()
    tx.changed("http_service", app.id, "update")
    tx.audit("app.http_service", app.id, org_id=app.org_id, detail=service.to_dict())
    return service


def add_upstream(tx: Tx, app: App, address: str) -> Upstream:
    host, port = parse_address(address)
    normal = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    exists = tx.session.execute(
        select(Upstream).where(Upstream.app_id == app.id, Upstream.address == normal)
    ).scalar_one_or_none()
    if exists:
        raise Conflict(f"{normal} is already an upstream of {app.name}")
    row = Upstream(id=new_id("ups"), app_id=app.id, address=normal, created_by=tx.audit_ctx.actor)
    tx.session.add(row)
    tx.session.flush()
    tx.changed("upstream", row.id, "create")
    tx.audit("app.upstream_add", app.id, org_id=app.org_id, detail={"address": normal})
    return row


def remove_upstream(tx: Tx, app: App, upstream_id: str) -> None:
    row = tx.session.get(Upstream, upstream_id)
    if row is None or row.app_id != app.id:
        raise NotFound(f"{app.name} has no upstream {upstream_id}")
    tx.session.delete(row)
    tx.changed("upstream", row.id, "delete")
    tx.audit("app.upstream_remove", app.id, org_id=app.org_id, detail={"address": row.address})


def list_upstreams(session: Session, app_id: str | None = None) -> list[Upstream]:
    query = select(Upstream).order_by(Upstream.created_at)
    if app_id is not None:
        query = query.where(Upstream.app_id == app_id)
    return list(session.execute(query).scalars())
