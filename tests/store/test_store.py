"""The store: migrations, the change feed and the transaction helper, on both databases."""

from __future__ import annotations

import threading

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import func, select, text

from aerodrome.audit.store import audit_public_key, verify_store
from aerodrome.errors import Conflict
from aerodrome.ids import has_prefix, new_id
from aerodrome.platform import apps as app_rules
from aerodrome.platform import orgs as org_rules
from aerodrome.platform.apps import MACHINE_UIDS
from aerodrome.services import Services
from aerodrome.store.db import MIGRATIONS, Store
from aerodrome.store.models import App, AuditEvent, Change, Org, StoreHead, Upstream


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


def test_each_app_gets_a_machine_uid_of_its_own_never_handed_on(services: Services) -> None:
    with services.store.write() as tx:
        admin = org_rules.get_or_create_user(tx, "a@example.com")
        org = org_rules.create_org(tx, "uids", None, admin)
        made = [
            app_rules.create_app(tx, org, f"app-{n}", env, admin.id)
            for n, env in enumerate(["production", "production", "test"])
        ]
    uids = [app.machine_uid for app in made]
    assert len(set(uids)) == 3
    assert all(app.machine_uid in MACHINE_UIDS[app.environment] for app in made)
    with services.store.write() as tx:
        app_rules.destroy_app(tx, app_rules.get_app(tx.session, "app-1"))
        again = app_rules.create_app(tx, org, "app-1", "production", admin.id)
    assert again.machine_uid not in uids  # a destroyed app's uid goes to nobody


def test_the_uid_migration_numbers_existing_apps_in_creation_order(database_url: str) -> None:
    store = Store(database_url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0006")
            conn.execute(
                text("INSERT INTO orgs (id, slug, name, created_at) VALUES ('o', 'o', 'o', :t)"),
                {"t": "2026-01-01 00:00:00"},
            )
            for name, environment, day in [("b", "test", 2), ("a", "production", 1)]:
                conn.execute(
                    text(
                        "INSERT INTO apps (id, name, org_id, environment, created_at) "
                        "VALUES (:n, :n, 'o', :e, :t)"
                    ),
                    {"n": name, "e": environment, "t": f"2026-01-0{day} 00:00:00"},
                )
                conn.execute(  # what hangs off an app (its routes) must survive the migration
                    text(
                        "INSERT INTO upstreams (id, app_id, address, created_by, created_at) "
                        "VALUES (:id, :n, '127.0.0.1:9', 'x', :t)"
                    ),
                    {"id": f"up_{name}", "n": name, "t": "2026-01-03 00:00:00"},
                )
        store.migrate()
        with store.read() as session:
            uids = {name: uid for name, uid in session.execute(select(App.name, App.machine_uid))}
            created = session.execute(select(StoreHead.apps_created)).scalar_one()
            routes = session.execute(select(func.count()).select_from(Upstream)).scalar_one()
        assert uids == {"a": MACHINE_UIDS["production"][0], "b": MACHINE_UIDS["test"][1]}
        assert created == 2 and routes == 2
        with store.write() as tx:
            org = tx.session.get(Org, "o")
            assert org is not None
            user = org_rules.get_or_create_user(tx, "c@example.com")
            later = app_rules.create_app(tx, org, "cc", "test", user.id)
        assert later.machine_uid == MACHINE_UIDS["test"][2]
    finally:
        store.engine.dispose()
