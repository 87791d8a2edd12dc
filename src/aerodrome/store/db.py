"""Engine, migrations and the one transaction helper.

Every write goes through `Store.write()`: it locks the single `store_head` row, so writers
are serialised, and each mutation in it bumps the change-feed revision and appends its
audit event before the same commit. Nothing is half-written: an exception rolls it all back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from aerodrome.audit.chain import (
    CHECKPOINT_EVERY,
    AuditSigner,
    Checkpoint,
    append_checkpoint_file,
    next_hash,
)
from aerodrome.store.models import AuditCheckpoint, AuditEvent, Change, StoreHead

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's BEGIN below be the only transaction control (pysqlite's own
            # implicit BEGIN is deferred, which lets two writers deadlock on upgrade).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass
class Audit:
    """Who is acting and from where; stamped on every event of a request."""

    actor: str = "system"
    request_id: str = ""
    client_ip: str = ""


@dataclass
class Tx:
    """A write transaction: the session, plus the two things every mutation must do."""

    session: Session
    head: StoreHead
    audit_ctx: Audit
    signer: AuditSigner | None
    checkpoints: list[Checkpoint] = field(default_factory=list)

    def changed(self, entity: str, entity_id: str, op: str) -> int:
        self.head.revision += 1
        self.session.add(
            Change(revision=self.head.revision, entity=entity, entity_id=entity_id, op=op)
        )
        return self.head.revision

    def audit(
        self,
        action: str,
        target: str,
        *,
        outcome: str = "ok",
        reason: str = "",
        org_id: str = "",
        detail: dict[str, Any] | None = None,
    ) -> AuditEvent:
        """Append one event to the chain. `detail` holds names and ids, never a value."""
        self.head.audit_seq += 1
        row = {
            "seq": self.head.audit_seq,
            "at": now_iso(),
            "actor": self.audit_ctx.actor,
            "action": action,
            "target": target,
            "outcome": outcome,
            "reason": reason,
            "org_id": org_id or "",
            "request_id": self.audit_ctx.request_id,
            "client_ip": self.audit_ctx.client_ip,
            "detail": json.dumps(detail or {}, sort_keys=True, separators=(",", ":")),
        }
        row["hash"] = next_hash(self.head.audit_hash, row)
        self.head.audit_hash = row["hash"]
        event_row = AuditEvent(**row)
        self.session.add(event_row)
        if self.signer is not None and self.head.audit_seq % CHECKPOINT_EVERY == 0:
            cp = self.signer.checkpoint(self.head.audit_seq, row["hash"], row["at"])
            self.session.add(AuditCheckpoint(**cp.__dict__))
            self.checkpoints.append(cp)
        return event_row


class Store:
    def __init__(
        self,
        url: str,
        *,
        signer: AuditSigner | None = None,
        checkpoint_file: Path | None = None,
    ) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.signer = signer
        self.checkpoint_file = checkpoint_file

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"

    def migrate(self) -> None:
        """Bring the schema to the latest revision (idempotent)."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def write(self, audit: Audit | None = None) -> Iterator[Tx]:
        with self.sessions() as session:
            with session.begin():
                head = session.execute(
                    select(StoreHead).where(StoreHead.id == 1).with_for_update()
                ).scalar_one()
                tx = Tx(session, head, audit or Audit(), self.signer)
                yield tx
            # Committed: the file copy of the checkpoints is written only for real events.
            if self.checkpoint_file is not None:
                for cp in tx.checkpoints:
                    append_checkpoint_file(self.checkpoint_file, cp)

    def revision(self) -> int:
        with self.read() as session:
            return session.execute(select(StoreHead.revision)).scalar_one()

    def dispose(self) -> None:
        self.engine.dispose()
