"""Machines and release rollout state, as the agent reports them and users steer them.

The agent is the only writer of what a machine *is* (`state`, `health`, `address`, `reason`)
and of a release's rollout `status`; users write what a machine *should be* (`desired`,
`generation` for a restart) through the API, and the agent converges. Every change is audited.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from aerodrome.errors import Conflict, InvalidInput, NotFound
from aerodrome.platform import secrets as release_rules
from aerodrome.store.db import Tx
from aerodrome.store.models import App, Machine, Release, utcnow

STATES = ("created", "starting", "started", "stopping", "stopped", "failed")
HEALTH = ("unknown", "passing", "failing")
RELEASE_STATUSES = ("pending", "running", "complete", "failed", "superseded")
REQUESTS = ("start", "stop", "restart")


def create_machine(tx: Tx, app: App, machine_id: str, release: int, region: str) -> Machine:
    row = Machine(id=machine_id, app_id=app.id, release=release, region=region, state="created")
    tx.session.add(row)
    tx.session.flush()
    tx.changed("machine", row.id, "create")
    tx.audit(
        "machine.create",
        app.id,
        org_id=app.org_id,
        detail={"machine": row.id, "release": release, "region": region},
    )
    return row


def report(
    tx: Tx,
    machine_id: str,
    *,
    state: str | None = None,
    health: str | None = None,
    address: str | None = None,
    reason: str | None = None,
) -> Machine | None:
    """The agent's view of a machine; audited when its state or health moves."""
    row = tx.session.get(Machine, machine_id)
    if row is None:
        return None
    if state is not None and state not in STATES:
        raise ValueError(state)
    if health is not None and health not in HEALTH:
        raise ValueError(health)
    moved = (state is not None and state != row.state) or (
        health is not None and health != row.health
    )
    same_address = address is None or (address or None) == row.address
    if not moved and same_address and (reason is None or reason[:300] == row.reason):
        return row  # nothing to write: no revision for the edge and the agent to wake on
    row.state = state or row.state
    row.health = health or row.health
    if address is not None:
        row.address = address or None
    if reason is not None:
        row.reason = reason[:300]
    row.updated_at = utcnow()
    tx.changed("machine", row.id, "update")
    if moved:
        app = tx.session.get(App, row.app_id)
        tx.audit(
            f"machine.{state or 'health'}",
            row.app_id,
            org_id=app.org_id if app else "",
            detail={"machine": row.id, "state": row.state, "health": row.health,
                    "reason": row.reason},
        )  # fmt: skip
    return row


def destroy_machine(tx: Tx, machine_id: str) -> None:
    row = tx.session.get(Machine, machine_id)
    if row is None:
        return
    app = tx.session.get(App, row.app_id)
    tx.session.delete(row)
    tx.changed("machine", machine_id, "delete")
    tx.audit(
        "machine.destroy",
        row.app_id,
        org_id=app.org_id if app else "",
        detail={"machine": machine_id, "release": row.release},
    )


def list_machines(session: Session, app_id: str) -> list[Machine]:
    return list(
        session.execute(
            select(Machine).where(Machine.app_id == app_id).order_by(Machine.created_at)
        ).scalars()
    )


def get_machine(session: Session, app: App, machine_id: str) -> Machine:
    row = session.get(Machine, machine_id)
    if row is None or row.app_id != app.id:
        raise NotFound(
            f"{app.name} has no machine {machine_id[:40]}", hint="see `aero machines list -a APP`"
        )
    return row


def request(tx: Tx, app: App, machine_id: str, what: str) -> Machine:
    """A user asks for a machine to start, stop or restart; the agent does it."""
    if what not in REQUESTS:
        raise InvalidInput(f"unknown machine action {what!r}", hint="start, stop or restart")
    row = get_machine(tx.session, app, machine_id)
    if what == "restart":
        if row.desired != "started":
            raise Conflict(
                f"machine {row.id} is stopped", hint=f"start it: `aero machines start {row.id}`"
            )
        row.generation += 1
    else:
        if what == "start" and row.state == "failed":
            row.generation += 1  # a failed machine is started afresh
        row.desired = "started" if what == "start" else "stopped"
    row.updated_at = utcnow()
    tx.changed("machine", row.id, "update")
    tx.audit(
        f"machine.request_{what}",
        app.id,
        org_id=app.org_id,
        detail={"machine": row.id, "desired": row.desired, "generation": row.generation},
    )
    return row


# -- releases -----------------------------------------------------------------------------------


def set_release_status(tx: Tx, app: App, number: int, status: str, reason: str = "") -> bool:
    """Record a release's rollout status; False (nothing changed) for a superseded release,
    which never rolls out: whoever waited for it has been told so."""
    if status not in RELEASE_STATUSES:
        raise ValueError(status)
    release = release_rules.get_release(tx.session, app, number)
    if release.status == "superseded":
        return False
    if release.status == status and release.status_reason == reason[:300]:
        return True
    release.status, release.status_reason = status, reason[:300]
    tx.changed("release", release.id, "update")
    tx.audit(
        f"release.{status}",
        app.id,
        org_id=app.org_id,
        detail={"number": number, "reason": release.status_reason},
    )
    return True


def rollback(tx: Tx, app: App, number: int) -> Release:
    """Release N+1 running release `number`'s code and configuration with the app's current
    secrets: rolling code back never brings back a secret that was rotated away."""
    source = release_rules.get_release(tx.session, app, number)
    if not source.artifact or not source.config:
        raise InvalidInput(
            f"release {number} of {app.name} has no code to roll back to",
            hint="pick a release created by `aero deploy` (see `aero releases -a APP`)",
        )
    return release_rules.create_release(
        tx, app, f"rollback to v{number}", artifact=source.artifact, config=source.config
    )
