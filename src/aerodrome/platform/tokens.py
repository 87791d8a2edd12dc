"""Token records: minting with a record, listing, revocation by token or by block."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from aerodrome.errors import Conflict, NotFound
from aerodrome.ids import new_id
from aerodrome.platform.names import validate_label
from aerodrome.store.db import Tx
from aerodrome.store.models import Revocation, Token, utcnow
from aerodrome.tokens.mint import Minted, RootKey, Scope, mint

DEFAULT_NAMES = {
    "session": "session token",
    "deploy": "deploy token",
    "org": "org token",
    "readonly": "read-only org token",
    "machine": "machine token",
}


def create_token(
    tx: Tx,
    root: RootKey,
    scope: Scope,
    *,
    created_by: str,
    name: str | None = None,
    expiry: timedelta | None = None,
) -> tuple[Minted, Token]:
    name = validate_label("token name", name or DEFAULT_NAMES[scope.kind])
    token_id = new_id("tok")
    minted = mint(root, scope, token_id, expiry)
    row = Token(
        id=token_id,
        name=name,
        kind=scope.kind,
        org_id=scope.org_id,
        app_id=scope.app_id,
        machine_id=scope.machine_id,
        user_id=scope.user_id,
        created_by=created_by,
        expires_at=minted.expires_at,
        revocation_id=minted.revocation_id,
    )
    tx.session.add(row)
    tx.changed("token", token_id, "create")
    tx.audit(
        "token.create",
        token_id,
        org_id=scope.org_id or "",
        detail={
            "kind": scope.kind,
            "name": name,
            "app_id": scope.app_id,
            "expires_at": minted.expires_at.isoformat(),
        },
    )
    return minted, row


def list_tokens(
    session: Session,
    *,
    org_id: str | None = None,
    app_id: str | None = None,
    created_by: str | None = None,
) -> list[Token]:
    query = select(Token).order_by(Token.created_at)
    if org_id is not None:
        query = query.where(Token.org_id == org_id)
    if app_id is not None:
        query = query.where(Token.app_id == app_id)
    if created_by is not None:
        query = query.where(Token.created_by == created_by)
    return list(session.execute(query).scalars())


def find_token(session: Session, ref: str) -> Token | None:
    """A token record by its id or by its authority block's revocation id."""
    column = Token.id if ref.startswith("tok_") else Token.revocation_id
    return session.execute(select(Token).where(column == ref)).scalar_one_or_none()


def get_token(session: Session, ref: str) -> Token:
    token = find_token(session, ref)
    if token is None:
        raise NotFound(f"token {ref!r} not found", hint="list tokens with `aero tokens list`")
    return token


def revoke_record(tx: Tx, token: Token) -> Token:
    if token.revoked_at is not None:
        raise Conflict(f"token {token.id} is already revoked")
    token.revoked_at = utcnow()
    token.revoked_by = tx.audit_ctx.actor
    _add_revocation(tx, token.revocation_id, token.id)
    tx.audit("token.revoke", token.id, org_id=token.org_id or "", detail={"kind": token.kind})
    return token


def revoke_block(tx: Tx, revocation_id: str, root: Token) -> None:
    """Revoke one attenuated block of `root`'s family: that child and its descendants."""
    if tx.session.get(Revocation, revocation_id) is not None:
        raise Conflict("that block is already revoked")
    _add_revocation(tx, revocation_id, None)
    tx.audit(
        "token.revoke_block",
        root.id,
        org_id=root.org_id or "",
        detail={"revocation_id": revocation_id},
    )


def _add_revocation(tx: Tx, revocation_id: str, token_id: str | None) -> None:
    revision = tx.changed("revocation", revocation_id, "create")
    tx.session.add(
        Revocation(
            revocation_id=revocation_id,
            token_id=token_id,
            revoked_by=tx.audit_ctx.actor,
            revision=revision,
        )
    )


def revocations_since(session: Session, revision: int) -> list[tuple[str, int]]:
    rows = session.execute(
        select(Revocation.revocation_id, Revocation.revision).where(Revocation.revision > revision)
    )
    return [(rid, rev) for rid, rev in rows]
