"""JSON shapes of the API's resources: stable keys, ISO 8601 times, never a secret."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from aerodrome.store.models import App, AuditEvent, Membership, Org, Token, User


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def org_view(org: Org) -> dict[str, Any]:
    return {"id": org.id, "slug": org.slug, "name": org.name, "created_at": iso(org.created_at)}


def app_view(app: App, org: Org | None = None) -> dict[str, Any]:
    return {
        "id": app.id,
        "name": app.name,
        "org_id": app.org_id,
        "org": org.slug if org else None,
        "environment": app.environment,
        "machine_uid": app.machine_uid,
        "created_at": iso(app.created_at),
    }


def member_view(user: User, membership: Membership) -> dict[str, Any]:
    return {
        "user_id": user.id,
        "email": user.email,
        "role": membership.role,
        "added_at": iso(membership.created_at),
    }


def token_view(session: Session, token: Token) -> dict[str, Any]:
    org = session.get(Org, token.org_id) if token.org_id else None
    app = session.get(App, token.app_id) if token.app_id else None
    creator = session.get(User, token.created_by)
    if app is not None:
        scope = f"app {app.name}"
    elif token.app_id:
        scope = f"app {token.app_id} (destroyed)"
    elif org is not None:
        scope = f"org {org.slug}"
    else:
        scope = "user"
    if token.machine_id:
        scope += f" machine {token.machine_id}"
    return {
        "id": token.id,
        "name": token.name,
        "type": token.kind,
        "scope": scope,
        "org": org.slug if org else None,
        "app": app.name if app else None,
        "created_by": creator.email if creator else token.created_by,
        "created_at": iso(token.created_at),
        "expires_at": iso(token.expires_at),
        "revoked_at": iso(token.revoked_at),
        "revocation_id": token.revocation_id,
    }


def event_view(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at": event.at,
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "outcome": event.outcome,
        "reason": event.reason,
        "org_id": event.org_id,
        "request_id": event.request_id,
        "client_ip": event.client_ip,
        "detail": json.loads(event.detail),
    }
