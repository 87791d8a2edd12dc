"""Releases: what a release without new code is built on."""

from __future__ import annotations

from aerodrome.errors import NotFound
from aerodrome.platform import apps as app_rules
from aerodrome.platform import machines as machine_rules
from aerodrome.platform import orgs as org_rules
from aerodrome.platform import secrets as release_rules
from aerodrome.services import Services
from aerodrome.store.db import Tx
from aerodrome.store.models import App, AuditEvent

GOOD, BROKEN = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def new_app(tx: Tx, name: str = "web") -> App:
    admin = org_rules.get_or_create_user(tx, "a@example.com")
    try:
        org = org_rules.get_org(tx.session, "acme")
    except NotFound:
        org = org_rules.create_org(tx, "acme", None, admin)
    return app_rules.create_app(tx, org, name, "production", admin.id)


def test_a_secrets_change_after_a_failed_deploy_keeps_the_serving_code(
    services: Services,
) -> None:
    with services.store.write() as tx:
        app = new_app(tx)
        good = release_rules.create_release(tx, app, "deploy", artifact=GOOD, config="good")
        machine_rules.set_release_status(tx, app, good.number, "complete")
        broken = release_rules.create_release(tx, app, "deploy", artifact=BROKEN, config="bad")
        machine_rules.set_release_status(tx, app, broken.number, "failed", "check failed")

        after = release_rules.create_release(tx, app, "secrets set")

        assert after.number == broken.number + 1
        assert (after.artifact, after.config) == (GOOD, "good")  # not the failed release's
        assert after.status == "pending"  # rolled out, with the code that serves
        assert release_rules.serving_release(tx.session, app.id) is after


def test_a_release_still_pending_when_a_newer_one_comes_is_superseded(
    services: Services,
) -> None:
    with services.store.write() as tx:
        app = new_app(tx)
        serving = release_rules.create_release(tx, app, "deploy", artifact=GOOD, config="one")
        machine_rules.set_release_status(tx, app, serving.number, "complete")
        skipped = release_rules.create_release(tx, app, "deploy", artifact=GOOD, config="two")
        newest = release_rules.create_release(tx, app, "deploy", artifact=BROKEN, config="three")

        assert (skipped.status, serving.status, newest.status) == (
            "superseded",
            "complete",
            "pending",
        )
        assert f"release {newest.number} came before it rolled out" in skipped.status_reason
        # An agent that read it before it was superseded cannot start it any more.
        assert not machine_rules.set_release_status(tx, app, skipped.number, "running")
        assert skipped.status == "superseded"
        # Should the newest fail, the app goes back to what served, not to one never tried.
        machine_rules.set_release_status(tx, app, newest.number, "failed", "check failed")
        assert release_rules.serving_release(tx.session, app.id) is serving
        other = new_app(tx, "other")
        release_rules.create_release(tx, other, "secrets set")  # no code: serves nothing
        theirs = release_rules.create_release(tx, other, "deploy", artifact=GOOD, config="x")
        everyone = release_rules.serving_releases(tx.session)  # all apps' in one query
        assert everyone == {app.id: serving, other.id: theirs}
    with services.store.read() as session:
        actions = [e.action for e in session.query(AuditEvent).order_by(AuditEvent.seq)]
    assert "release.superseded" in actions
