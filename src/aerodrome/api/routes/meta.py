"""Routes that need no token: health and the token verification key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from aerodrome.api.authz import AuthorizedRoute

router = APIRouter(prefix="/v1", route_class=AuthorizedRoute, tags=["meta"])
PUBLIC = {"x-aero-public": True}


@router.get("/health", openapi_extra=PUBLIC)
def health(request: Request) -> dict[str, Any]:
    request.app.state.services.store.revision()  # the database answers
    return {"status": "ok"}


@router.get("/tokens/public-key", openapi_extra=PUBLIC)
def public_key(request: Request) -> dict[str, Any]:
    """The key that verifies every token this platform mints; safe to publish."""
    root = request.app.state.services.root
    return {"key_id": root.key_id, "public_key": str(root.public)}
