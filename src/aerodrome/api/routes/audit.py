"""The audit log: listing and verification."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from aerodrome.api.authz import AuthorizedRoute, Caller, OrgParam, requires
from aerodrome.api.views import event_view
from aerodrome.audit.store import audit_public_key, verify_store
from aerodrome.store.models import AuditEvent, Change

router = APIRouter(prefix="/v1", route_class=AuthorizedRoute, tags=["audit"])


def _events(caller: Caller, org_id: str | None, after: int, limit: int) -> dict[str, Any]:
    with caller.services.store.read() as session:
        query = select(AuditEvent).where(AuditEvent.seq > after).order_by(AuditEvent.seq)
        if org_id is not None:
            query = query.where(AuditEvent.org_id == org_id)
        rows = list(session.execute(query.limit(limit)).scalars())
    events = [event_view(row) for row in rows]
    return {"events": events, "next_after": events[-1]["seq"] if events else after}


@router.get("/audit")
def list_all(
    after: int = Query(0, ge=0),
    limit: int = Query(100, ge=1, le=1000),
    caller: Caller = Depends(requires("platform.audit.read")),
) -> dict[str, Any]:
    return _events(caller, None, after, limit)


@router.get("/orgs/{org}/audit")
def list_org(
    org: str,
    after: int = Query(0, ge=0),
    limit: int = Query(100, ge=1, le=1000),
    caller: Caller = Depends(requires("audit.read", OrgParam())),
) -> dict[str, Any]:
    assert caller.target.org is not None
    return _events(caller, caller.target.org.id, after, limit)


@router.get("/audit/verify")
def verify(caller: Caller = Depends(requires("platform.audit.read"))) -> dict[str, Any]:
    settings = caller.services.settings
    report = verify_store(
        caller.services.store, audit_public_key(settings.keys_dir), settings.checkpoint_file
    )
    return report.__dict__


@router.get("/changes")
def changes(
    after: int = Query(0, ge=0),
    limit: int = Query(500, ge=1, le=5000),
    caller: Caller = Depends(requires("platform.watch")),
) -> dict[str, Any]:
    """The change feed: every committed mutation after revision `after`, in order."""
    with caller.services.store.read() as session:
        rows = session.execute(
            select(Change).where(Change.revision > after).order_by(Change.revision).limit(limit)
        ).scalars()
        items = [
            {
                "revision": c.revision,
                "entity": c.entity,
                "id": c.entity_id,
                "op": c.op,
                "at": c.at.isoformat(),
            }
            for c in rows
        ]
    return {"changes": items, "next_after": items[-1]["revision"] if items else after}
