"""Verifying the audit log held in a store against its signed checkpoints."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select

from aerodrome.audit.chain import (
    EVENT_FIELDS,
    Checkpoint,
    VerifyReport,
    read_checkpoint_file,
    verify,
)
from aerodrome.errors import AeroError
from aerodrome.store.db import Store
from aerodrome.store.models import AuditCheckpoint, AuditEvent, StoreHead


def audit_public_key(keys_dir: Path) -> Ed25519PublicKey:
    """The checkpoint verification key, from the public file `aero up` writes: verifying
    needs no private key."""
    public_file = keys_dir / "audit-signing.pub"
    if not public_file.exists():
        raise AeroError(
            f"{public_file} not found",
            hint="pass the --data-dir of the platform that wrote this audit log",
            code="missing_key_file",
        )
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_file.read_text().strip()))


def verify_store(store: Store, public_key: Ed25519PublicKey, checkpoint_file: Path) -> VerifyReport:
    """Walk every event in sequence order; checkpoints come from the database and from the
    data directory's file (the file survives a rewrite of the database)."""
    with store.read() as session:
        head = session.execute(select(StoreHead)).scalar_one_or_none()
        checkpoints = [
            Checkpoint(row.seq, row.hash, row.at, row.key_id, row.signature)
            for row in session.execute(select(AuditCheckpoint)).scalars()
        ]
        checkpoints += read_checkpoint_file(checkpoint_file)
        rows = session.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars()
        events = ({name: getattr(row, name) for name in (*EVENT_FIELDS, "hash")} for row in rows)
        return verify(
            events,
            checkpoints,
            public_key,
            head_seq=head.audit_seq if head else None,
            head_hash=head.audit_hash if head else None,
        )
