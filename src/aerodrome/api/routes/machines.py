"""Machines (what the agent runs), a release's rollout, rollbacks, and the deployed config."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from aerodrome.api.authz import AppParam, AuthorizedRoute, Caller, requires
from aerodrome.api.routes.secrets import release_view
from aerodrome.api.views import iso
from aerodrome.errors import InvalidInput, NotFound
from aerodrome.ids import MACHINE_ID
from aerodrome.platform import machines as machine_rules
from aerodrome.platform import secrets as release_rules
from aerodrome.runtime.config import load_config
from aerodrome.store.models import Machine

router = APIRouter(prefix="/v1", route_class=AuthorizedRoute, tags=["machines"])


def machine_view(row: Machine) -> dict[str, Any]:
    return {
        "id": row.id,
        "release": row.release,
        "region": row.region,
        "state": row.state,
        "desired": row.desired,
        "health": row.health,
        "address": row.address,
        "reason": row.reason,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


def _machine_id(value: str) -> str:
    if not MACHINE_ID.fullmatch(value):
        raise InvalidInput(
            f"invalid machine id {value[:40]!r}", hint="see `aero machines list -a APP`"
        )
    return value


@router.get("/apps/{app}/machines")
def list_machines(
    app: str, caller: Caller = Depends(requires("machines.read", AppParam()))
) -> list[dict[str, Any]]:
    assert caller.target.app is not None
    with caller.services.store.read() as session:
        return [machine_view(m) for m in machine_rules.list_machines(session, caller.target.app.id)]


def _request(caller: Caller, machine: str, what: str) -> dict[str, Any]:
    assert caller.target.app is not None
    with caller.services.store.write(caller.audit_context()) as tx:
        row = machine_rules.request(
            tx, tx.session.merge(caller.target.app), _machine_id(machine), what
        )
        return machine_view(row)


@router.post("/apps/{app}/machines/{machine}/stop")
def stop_machine(
    app: str, machine: str, caller: Caller = Depends(requires("machines.write", AppParam()))
) -> dict[str, Any]:
    """Drain the machine (the edge stops routing to it), then stop it. It stays stopped until
    started; a new release replaces it."""
    return _request(caller, machine, "stop")


@router.post("/apps/{app}/machines/{machine}/start")
def start_machine(
    app: str, machine: str, caller: Caller = Depends(requires("machines.write", AppParam()))
) -> dict[str, Any]:
    """Start a stopped (or failed) machine; traffic returns once its check passes."""
    return _request(caller, machine, "start")


@router.post("/apps/{app}/machines/{machine}/restart")
def restart_machine(
    app: str, machine: str, caller: Caller = Depends(requires("machines.write", AppParam()))
) -> dict[str, Any]:
    """Drain, stop and start again with a fresh credential and the release's secrets."""
    return _request(caller, machine, "restart")


@router.get("/apps/{app}/releases/{number}")
def show_release(
    app: str, number: int, caller: Caller = Depends(requires("apps.read", AppParam()))
) -> dict[str, Any]:
    """One release, with its rollout status (pending, running, complete, failed, superseded;
    with a reason) and the machines that run it (listed only for a caller that may also read
    machines; else `machines` is null). A failed release's reason may name the machine that
    failed. A superseded one names the release that came next (`superseded_by`), and whether
    that one carries its code and configuration (a secrets change does; a newer deploy does
    not), so a client waiting for it knows whether to follow that one instead."""
    assert caller.target.app is not None
    target = caller.target.app
    with caller.services.store.read() as session:
        release = release_rules.get_release(session, target, number)
        machines = None
        if caller.can(session, "machines.read", caller.target.org, target):
            machines = [
                machine_view(m)
                for m in machine_rules.list_machines(session, target.id)
                if m.release == number
            ]
        view = {**(release_view(release) or {}), "machines": machines}
        if release.status == "superseded":
            successor = release_rules.get_release(session, target, number + 1)
            view["superseded_by"] = {
                "number": successor.number,
                "carries_code": (successor.artifact, successor.config)
                == (release.artifact, release.config),
            }
        return view


@router.post("/apps/{app}/releases/{number}/rollback", status_code=201)
def rollback_release(
    app: str, number: int, caller: Caller = Depends(requires("apps.deploy", AppParam()))
) -> dict[str, Any]:
    """A new release running release `number`'s code and configuration, with the app's current
    secrets (a rollback never brings back a rotated secret)."""
    assert caller.target.app is not None
    with caller.services.store.write(caller.audit_context()) as tx:
        release = machine_rules.rollback(tx, tx.session.merge(caller.target.app), number)
        return release_view(release) or {}


@router.get("/apps/{app}/config")
def show_config(
    app: str, caller: Caller = Depends(requires("apps.read", AppParam()))
) -> dict[str, Any]:
    """The `aerodrome.toml` the app's machines run (its serving release), and what it means."""
    assert caller.target.app is not None
    with caller.services.store.read() as session:
        release = release_rules.serving_release(session, caller.target.app.id)
    if release is None:
        raise NotFound(
            f"{caller.target.app.name} has no deployed configuration",
            hint="deploy it with `aero deploy`",
        )
    config = load_config(release.config or "")
    return {
        "release": release.number,
        "text": release.config,
        "app": config.app,
        "primary_region": config.primary_region,
        "processes": config.processes,
        "env": config.env,
        "strategy": config.strategy,
        "machines": config.machines,
        "kill_signal": config.kill_signal,
        "kill_timeout": config.kill_timeout,
        "http_service": (
            {
                "internal_port": config.http_service.internal_port,
                **config.http_service.service.to_dict(),
                "checks": [c.__dict__ for c in config.http_service.checks],
            }
            if config.http_service
            else None
        ),
    }
