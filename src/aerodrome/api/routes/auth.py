"""Who the caller is."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from aerodrome.api.authz import AuthorizedRoute, Caller, authenticated
from aerodrome.api.views import iso

router = APIRouter(prefix="/v1", route_class=AuthorizedRoute, tags=["auth"])


@router.get("/auth/whoami")
def whoami(caller: Caller = Depends(authenticated())) -> dict[str, Any]:
    token = caller.token
    return {
        "token_id": token.token_id,
        "type": token.kind,
        "attenuated": token.attenuated,
        "blocks": token.blocks,
        "expires_at": iso(token.expires_at),
        "user": None
        if caller.user is None
        else {
            "id": caller.user.id,
            "email": caller.user.email,
            "platform_admin": caller.user.is_platform_admin,
        },
    }
