"""The store: migrations, the change feed and the transaction helper, on both databases."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from aerodrome.audit.store import audit_public_key, verify_store
from aerodrome.errors import Conflict
from aerodrome.ids import has_prefix, new_id
from aerodrome.platform import orgs as org_rules
from aerodrome.services import Services
from aerodrome.store.models import AuditEvent, Change, Org, StoreHead


def _counts(services: Services) -> tuple[int, int, int]:
    with services.store.read() as session:
        head = session.execute(select(StoreHead)).scalar_one()
        changes = session.execute(select(func.count()).select_from(Change)).scalar_one()
        return head.revision, head.audit_seq, changes


def test_migrations_are_idempotent(services: Services) -> None:
    before = _counts(services)
    services.store.migrate()
    assert _counts(services) == before


def test_each_mutation_bumps_the_revision_once_in_its_transaction(services: Services) -> None:
    revision, seq, changes = _counts(services)
    with services.store.write() as tx:
        admin = org_rules.get_or_create_user(tx, "a@example.com")
        org_rules.create_org(tx, "feed", None, admin)
    after = _counts(services)
    assert after == (revision + 2, seq + 2, changes + 2)
    with services.store.read() as session:
        feed = session.execute(select(Change).order_by(Change.revision)).scalars().all()
    assert [c.revision for c in feed] == list(range(1, after[0] + 1))
    assert [(c.entity, c.op) for c in feed[-2:]] == [("user", "create"), ("org", "create")]


def test_a_failed_transaction_leaves_nothing(services: Services) -> None:
    with services.store.write() as tx:
        admin = org_rules.get_or_create_user(tx, "a@example.com")
        org_rules.create_org(tx, "taken", None, admin)
    before = _counts(services)
    with pytest.raises(Conflict), services.store.write() as tx:
        org_rules.create_org(tx, "other", None, admin)  # succeeds inside the transaction…
        org_rules.create_org(tx, "taken", None, admin)  # …then this fails: all rolled back
    assert _counts(services) == before
    with services.store.read() as session:
        assert session.execute(select(Org).where(Org.slug == "other")).first() is None


def test_concurrent_writers_keep_revisions_and_chain_gap_free(services: Services) -> None:
    errors: list[BaseException] = []
    revision0, seq0, changes0 = _counts(services)

    def writer(n: int) -> None:
        try:
            for i in range(5):
                with services.store.write() as tx:
                    org_rules.get_or_create_user(tx, f"w{n}-{i}@example.com")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    revision, seq, changes = _counts(services)
    assert (revision - revision0, changes - changes0, seq - seq0) == (20, 20, 20)
    with services.store.read() as session:
        seqs = session.execute(select(AuditEvent.seq).order_by(AuditEvent.seq)).scalars().all()
    assert seqs == list(range(1, seq + 1))
    settings = services.settings
    report = verify_store(
        services.store, audit_public_key(settings.keys_dir), settings.checkpoint_file
    )
    assert report.ok and report.checkpoints == 1  # one signed checkpoint at event 16


def test_ids_are_prefixed_and_unguessable() -> None:
    ids = {new_id("app") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(has_prefix(i, "app") for i in ids)
    with pytest.raises(ValueError):
        new_id("nope")
