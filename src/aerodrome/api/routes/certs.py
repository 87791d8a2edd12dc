"""TLS certificates of an app: its own name's and the custom names it adds. Status only:
no route returns a private key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from aerodrome.api.authz import AppParam, AuthorizedRoute, Caller, requires
from aerodrome.api.views import iso
from aerodrome.certs import store as cert_store
from aerodrome.certs.config import configured_issuer
from aerodrome.certs.issued import fingerprint, utcnow
from aerodrome.store.models import App, Certificate

router = APIRouter(prefix="/v1", route_class=AuthorizedRoute, tags=["certs"])


class CertCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hostname: str = Field(max_length=300, description="A DNS name, e.g. www.example.com")


def cert_view(row: Certificate, app: App) -> dict[str, Any]:
    serving = bool(row.chain_pem and row.not_after and row.not_after > utcnow())
    return {
        "id": row.id,
        "hostname": row.hostname,
        "app": app.name,
        "kind": row.kind,
        "issuer": row.issuer,
        "status": row.status,
        "reason": row.reason,
        "serving": serving,
        "not_before": iso(row.not_before),
        "not_after": iso(row.not_after),
        "renew_after": iso(row.renew_after),
        "serial": row.serial,
        "fingerprint_sha256": fingerprint(row.chain_pem.encode()) if row.chain_pem else None,
        "attempts": row.attempts,
        "next_attempt_at": iso(row.next_attempt_at),
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


@router.post("/apps/{app}/certs", status_code=201)
def add_cert(
    app: str, body: CertCreate, caller: Caller = Depends(requires("certs.write", AppParam()))
) -> dict[str, Any]:
    """Add a custom hostname; the certificate manager obtains its certificate."""
    target = caller.target.app
    assert target is not None
    with caller.services.store.write(caller.audit_context()) as tx:
        row = cert_store.add_custom(
            tx, target, body.hostname, caller.services.settings.domain, configured_issuer()
        )
        return cert_view(row, target)


@router.get("/apps/{app}/certs")
def list_certs(
    app: str, caller: Caller = Depends(requires("certs.read", AppParam()))
) -> list[dict[str, Any]]:
    target = caller.target.app
    assert target is not None
    with caller.services.store.read() as session:
        return [cert_view(row, target) for row in cert_store.list_for_app(session, target)]


@router.get("/apps/{app}/certs/{hostname}")
def show_cert(
    app: str, hostname: str, caller: Caller = Depends(requires("certs.read", AppParam()))
) -> dict[str, Any]:
    target = caller.target.app
    assert target is not None
    with caller.services.store.read() as session:
        return cert_view(cert_store.get_for_app(session, target, hostname), target)


@router.delete("/apps/{app}/certs/{hostname}")
def remove_cert(
    app: str, hostname: str, caller: Caller = Depends(requires("certs.write", AppParam()))
) -> dict[str, Any]:
    """Remove a custom hostname and its certificate; the edge stops serving it."""
    target = caller.target.app
    assert target is not None
    with caller.services.store.write(caller.audit_context()) as tx:
        row = cert_store.remove_custom(tx, target, hostname)
        return {"removed": row.hostname, "app": target.name}
