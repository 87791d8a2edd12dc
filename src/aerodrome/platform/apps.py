"""Apps: globally unique names, owned by one org, labelled production or test."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aerodrome.errors import Conflict, NotFound
from aerodrome.ids import new_id
from aerodrome.platform import tokens as token_records
from aerodrome.platform.names import validate_app_name, validate_environment
from aerodrome.store.db import Tx
from aerodrome.store.models import App, Certificate, Org, SecretVersion, Token

# The machines of each app run as a uid of their own (gid the same), so one app cannot read
# another's files or `/proc/PID/environ` (its secrets), signal its processes or reach its
# local API socket. The uid comes from the app's environment range, indexed by a counter that
# never goes back (`StoreHead.apps_created`): no two apps share one, and a destroyed app's uid
# is never handed on (a straggling process or file of it would fall to the next app). The
# ranges sit where nothing on a Debian host hands out ids: above systemd's container range
# (524288-1879048191), below its foreign range (2147352576-) and the sign bit; no passwd entry
# is needed. Test machines have a range of their own, so one nftables rule (runtime/isolation)
# cuts them off from this host.
MACHINE_UIDS = {
    "production": range(0x7000_0000, 0x7400_0000),
    "test": range(0x7400_0000, 0x7800_0000),
}


def get_app(session: Session, ref: str) -> App:
    column = App.id if ref.startswith("app_") else App.name
    app = session.execute(select(App).where(column == ref)).scalar_one_or_none()
    if app is None:
        raise NotFound(f"app {ref!r} not found", hint="list apps with `aero apps list`")
    return app


def list_apps(session: Session, org_id: str | None = None) -> list[App]:
    query = select(App).order_by(App.name)
    if org_id is not None:
        query = query.where(App.org_id == org_id)
    return list(session.execute(query).scalars())


def create_app(tx: Tx, org: Org, name: str, environment: str, creator_id: str) -> App:
    validate_app_name(name)
    validate_environment(environment)
    if tx.session.execute(select(App.id).where(App.name == name)).first():
        raise Conflict(f"app name {name!r} is taken", hint="app names are global: choose another")
    uids = MACHINE_UIDS[environment]
    if tx.head.apps_created >= len(uids):
        raise Conflict(
            f"every machine uid for {environment} apps has been handed out",
            hint="uids are never reused; this platform has created all the apps it can",
        )
    tx.head.apps_created += 1
    app = App(
        id=new_id("app"),
        name=name,
        org_id=org.id,
        environment=environment,
        machine_uid=uids[tx.head.apps_created - 1],
        created_by=creator_id,
    )
    tx.session.add(app)
    tx.session.flush()
    tx.changed("app", app.id, "create")
    tx.audit(
        "app.create",
        app.id,
        org_id=org.id,
        detail={"name": name, "environment": environment, "machine_uid": app.machine_uid},
    )
    return app


def destroy_app(tx: Tx, app: App) -> list[str]:
    """Delete the app and revoke every token scoped to it. Returns the revoked token ids."""
    tokens = tx.session.execute(
        select(Token).where(Token.app_id == app.id, Token.revoked_at.is_(None))
    ).scalars()
    revoked = [token_records.revoke_record(tx, token).id for token in tokens]
    # Secret versions and releases go with the app (foreign keys cascade): their sealed
    # values and wrapped data keys are gone, not merely hidden.
    shredded = tx.session.execute(
        select(func.count()).select_from(SecretVersion).where(SecretVersion.app_id == app.id)
    ).scalar_one()
    # So do its certificates (and their sealed keys): the edge stops serving them.
    certificates = list(
        tx.session.execute(
            select(Certificate.hostname).where(Certificate.app_id == app.id)
        ).scalars()
    )
    tx.session.delete(app)
    tx.changed("app", app.id, "delete")
    tx.audit(
        "app.destroy",
        app.id,
        org_id=app.org_id,
        detail={
            "name": app.name,
            "revoked_tokens": revoked,
            "secret_versions": shredded,
            "certificates": sorted(certificates),
        },
    )
    return revoked
