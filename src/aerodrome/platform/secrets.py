"""Secrets of an app: set, unset, list, deploy, history, rollback, and the keyring's rotation.

Values arrive here, are sealed, and never leave again except through `unseal_for_machine`.
Every change writes an audit event with names and digests only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, select, tuple_
from sqlalchemy.orm import Session

from aerodrome.certs import store as cert_store
from aerodrome.errors import AeroError, Conflict, InvalidInput, NotFound
from aerodrome.ids import new_id
from aerodrome.keyfiles import RootSecret
from aerodrome.secrets.digest import Digester
from aerodrome.secrets.keyring import Keyring, WrappedKek, wrap_new_kek
from aerodrome.secrets.seal import Context, Sealed, rewrap, seal, unseal
from aerodrome.secrets.values import SecretValue
from aerodrome.store.db import Tx
from aerodrome.store.models import App, KeyVersion, Release, Secret, SecretVersion, utcnow

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_NAME = 256
MAX_VALUE = 64 * 1024
MAX_TOTAL = 1024 * 1024


class SecretTooLarge(AeroError):
    status = 413
    code = "secret_too_large"


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name) or len(name) > MAX_NAME:
        # Not echoed: a value typed where a name goes must not reach an error or a CI log.
        raise InvalidInput(
            f"invalid secret name ({len(str(name))} characters)",
            hint=f"names match [A-Za-z_][A-Za-z0-9_]* and are at most {MAX_NAME} characters",
        )
    return name


# -- the keyring --------------------------------------------------------------------------------


def ensure_keyring(tx: Tx, root: RootSecret) -> None:
    """Create key version 1 on first start (idempotent)."""
    if tx.session.execute(select(func.count()).select_from(KeyVersion)).scalar_one():
        return
    tx.session.add(KeyVersion(version=1, wrapped=wrap_new_kek(root, 1).hex()))
    tx.changed("keyring", "v1", "create")
    tx.audit("keys.create", "keyring", detail={"version": 1})


def load_keyring(session: Session, root: RootSecret) -> Keyring:
    rows = session.execute(select(KeyVersion).order_by(KeyVersion.version)).scalars()
    return Keyring(root, [WrappedKek(r.version, bytes.fromhex(r.wrapped), r.retired) for r in rows])


@dataclass(frozen=True)
class KeyVersionInfo:
    version: int
    state: str
    data_keys: int
    created_at: datetime


def list_key_versions(session: Session) -> list[KeyVersionInfo]:
    """Each key version, and how many data keys it wraps: secret values, certificate keys,
    ACME account and challenge keys."""
    counts: dict[int, int] = {}
    wrapped = [
        w
        for (w,) in session.execute(
            select(SecretVersion.wrapped_key).where(SecretVersion.wrapped_key.is_not(None))
        )
    ]
    for wrapped_key in [*wrapped, *cert_store.wrapped_keys(session)]:
        version = Sealed("", wrapped_key).key_version
        counts[version] = counts.get(version, 0) + 1
    rows = list(session.execute(select(KeyVersion).order_by(KeyVersion.version)).scalars())
    active = max((r.version for r in rows if not r.retired), default=0)
    return [
        KeyVersionInfo(
            r.version,
            "retired" if r.retired else "active" if r.version == active else "decrypt-only",
            counts.get(r.version, 0),
            r.created_at,
        )
        for r in rows
    ]


def rotate_keys(tx: Tx, root: RootSecret) -> tuple[int, int]:
    """Add a key version and re-wrap every data key under it (secret values, certificate
    keys, ACME account and challenge keys). Nothing is decrypted but the data keys.

    Returns (new version, data keys re-wrapped)."""
    newest = tx.session.execute(select(func.max(KeyVersion.version))).scalar_one() or 0
    version = newest + 1
    tx.session.add(KeyVersion(version=version, wrapped=wrap_new_kek(root, version).hex()))
    tx.session.flush()
    keyring = load_keyring(tx.session, root)
    rows = tx.session.execute(
        select(SecretVersion, App.org_id)
        .join(App, App.id == SecretVersion.app_id)
        .where(SecretVersion.wrapped_key.is_not(None))
    )
    count = 0
    for row, org_id in rows:
        context = Context(org_id, row.app_id, row.name, row.version)
        row.wrapped_key = rewrap(keyring, context, row.wrapped_key or "")
        count += 1
    count += cert_store.rewrap_keys(tx.session, keyring)
    tx.changed("keyring", f"v{version}", "rotate")
    tx.audit("keys.rotate", "keyring", detail={"version": version, "rewrapped": count})
    return version, count


def retire_keys(tx: Tx, below: int) -> list[int]:
    """Retire every key version below `below` (the new minimum decryption version). Refused
    while any data key is still wrapped under one of them."""
    infos = list_key_versions(tx.session)
    active = max((i.version for i in infos if i.state == "active"), default=0)
    if below > active:
        raise InvalidInput(
            f"cannot retire the active key version v{active}",
            hint=f"retire below v{active} at most; rotate first to make a newer version active",
        )
    targets = [i for i in infos if i.version < below and i.state != "retired"]
    busy = [i for i in targets if i.data_keys]
    if busy:
        raise Conflict(
            f"key version v{busy[0].version} still wraps {busy[0].data_keys} data key(s)",
            hint="run `aero keys rotate` first: it re-wraps every data key under the new version",
        )
    for info in targets:
        row = tx.session.get(KeyVersion, info.version)
        assert row is not None
        row.retired = True
    if targets:
        tx.changed("keyring", f"below-v{below}", "retire")
        tx.audit("keys.retire", "keyring", detail={"versions": [i.version for i in targets]})
    return [i.version for i in targets]


# -- secrets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetResult:
    name: str
    version: int
    digest: str
    changed: bool


def _current(
    session: Session, app_id: str, name: str
) -> tuple[Secret | None, SecretVersion | None]:
    """A secret's row and the version it is at (None for one never set, or unset to 0)."""
    return _current_of(session, app_id, [name]).get(name, (None, None))


def _total_size(session: Session, app_id: str, excluding: set[str]) -> int:
    total = 0
    rows = session.execute(
        select(SecretVersion.name, SecretVersion.size)
        .join(
            Secret,
            (Secret.app_id == SecretVersion.app_id)
            & (Secret.name == SecretVersion.name)
            & (Secret.current_version == SecretVersion.version),
        )
        .where(Secret.app_id == app_id, Secret.deleted.is_(False))
    )
    for name, size in rows:
        if name not in excluding:
            total += size
    return total


def _is_current_version() -> ColumnElement[bool]:
    """Joins a secret to the version it is at."""
    return (
        (SecretVersion.app_id == Secret.app_id)
        & (SecretVersion.name == Secret.name)
        & (SecretVersion.version == Secret.current_version)
    )


def _current_of(
    session: Session, app_id: str, names: Iterable[str]
) -> dict[str, tuple[Secret, SecretVersion | None]]:
    """`_current` of several names in one query (names never set are left out)."""
    rows = session.execute(
        select(Secret, SecretVersion)
        .outerjoin(SecretVersion, _is_current_version())
        .where(Secret.app_id == app_id, Secret.name.in_(list(names)))
    )
    return {secret.name: (secret, version) for secret, version in rows}


def _new_version(
    tx: Tx, app: App, name: str, op: str, sealed_value: tuple[Sealed, str, int] | None
) -> SecretVersion:
    secret, _ = _current(tx.session, app.id, name)
    return _add_version(tx, app, secret, name, op, sealed_value)


def _add_version(
    tx: Tx,
    app: App,
    secret: Secret | None,
    name: str,
    op: str,
    sealed_value: tuple[Sealed, str, int] | None,
) -> SecretVersion:
    """Version N+1 of `name`, whose row (None if never set) the caller has already read."""
    if secret is None:
        secret = Secret(id=new_id("sec"), app_id=app.id, name=name, current_version=0)
        tx.session.add(secret)
    number = secret.current_version + 1
    sealed, digest, size = sealed_value if sealed_value else (None, None, 0)
    row = SecretVersion(
        id=new_id("sev"),
        app_id=app.id,
        name=name,
        version=number,
        op=op,
        ciphertext=sealed.ciphertext if sealed else None,
        wrapped_key=sealed.wrapped_key if sealed else None,
        digest=digest,
        size=size,
        set_by=tx.audit_ctx.actor,
    )
    tx.session.add(row)
    secret.current_version = number
    secret.deleted = sealed_value is None
    secret.updated_at = utcnow()
    tx.session.flush()
    return row


def set_secrets(
    tx: Tx,
    keyring: Keyring,
    digester: Digester,
    app: App,
    values: Mapping[str, SecretValue],
    *,
    expect_version: int | None = None,
) -> list[SetResult]:
    """Seal a new version of each changed value. Everything is validated before anything is
    written; an unchanged value keeps its version."""
    if not values:
        raise InvalidInput("no secrets given", hint="pass NAME=VALUE (use NAME=- to read stdin)")
    for name, value in values.items():
        validate_name(name)
        if len(value) > MAX_VALUE:
            raise SecretTooLarge(
                f"secret {name} is {len(value)} bytes; the limit is {MAX_VALUE} bytes (64 KiB)",
                hint="store large material elsewhere and keep a key or URL to it here",
            )
    if expect_version is not None and len(values) != 1:
        raise InvalidInput("--expect-version applies to exactly one secret")
    plans: list[tuple[str, SecretValue, str, Secret | None]] = []
    results: list[SetResult] = []
    found = _current_of(tx.session, app.id, values)
    for name, value in values.items():
        digest = digester.digest(app.id, value.reveal())
        secret, current = found.get(name, (None, None))
        current_number = current.version if current is not None and current.digest else 0
        if expect_version is not None and current_number != expect_version:
            raise Conflict(
                f"{name} is at version {current_number}, not {expect_version}",
                hint="someone else changed it: check `aero secrets history`",
            )
        if current is not None and current.digest == digest:
            results.append(SetResult(name, current.version, digest, changed=False))
            # Audited too: "unchanged" confirms a guessed value, so each guess leaves a trace.
            tx.audit(
                "secrets.set",
                app.id,
                org_id=app.org_id,
                detail={"name": name, "version": current.version, "unchanged": True},
            )
        else:
            plans.append((name, value, digest, secret))
    new_total = _total_size(tx.session, app.id, {plan[0] for plan in plans})
    new_total += sum(len(plan[1]) for plan in plans)
    if new_total > MAX_TOTAL:
        raise SecretTooLarge(
            f"the secrets of {app.name} would total {new_total} bytes; the limit is "
            f"{MAX_TOTAL} bytes (1 MiB)",
            hint="unset secrets the app no longer needs",
        )
    for name, value, digest, secret in plans:
        number = (secret.current_version if secret else 0) + 1
        sealed = seal(keyring, Context(app.org_id, app.id, name, number), value.reveal())
        row = _add_version(tx, app, secret, name, "set", (sealed, digest, len(value)))
        results.append(SetResult(name, row.version, digest, changed=True))
        tx.audit(
            "secrets.set",
            app.id,
            org_id=app.org_id,
            detail={"name": name, "version": row.version, "digest": digest},
        )
    if plans:
        tx.changed("secrets", app.id, "set")
    return sorted(results, key=lambda r: r.name)


def unset_secrets(tx: Tx, app: App, names: list[str]) -> list[str]:
    if not names:
        raise InvalidInput("no secret names given")
    for name in names:
        validate_name(name)
        secret, current = _current(tx.session, app.id, name)
        if secret is None or secret.deleted or current is None:
            raise NotFound(f"{app.name} has no secret {name}", hint="see `aero secrets list`")
    for name in dict.fromkeys(names):
        row = _new_version(tx, app, name, "unset", None)
        tx.audit(
            "secrets.unset",
            app.id,
            org_id=app.org_id,
            detail={"name": name, "version": row.version},
        )
    tx.changed("secrets", app.id, "unset")
    return list(dict.fromkeys(names))


def rollback_secret(tx: Tx, keyring: Keyring, app: App, name: str, to_version: int) -> SetResult:
    """A new version whose value is that of `to_version`, re-sealed under its new context."""
    validate_name(name)
    old = tx.session.execute(
        select(SecretVersion).where(
            SecretVersion.app_id == app.id,
            SecretVersion.name == name,
            SecretVersion.version == to_version,
        )
    ).scalar_one_or_none()
    if old is None:
        raise NotFound(
            f"{app.name} has no version {to_version} of {name}",
            hint=f"see `aero secrets history -a {app.name} {name}`",
        )
    if old.ciphertext is None or old.wrapped_key is None or old.digest is None:
        raise InvalidInput(
            f"version {to_version} of {name} is an unset", hint="roll back to a version that set it"
        )
    secret, current = _current(tx.session, app.id, name)
    assert secret is not None  # a version of it exists
    if current is not None and current.digest == old.digest:
        return SetResult(name, current.version, old.digest, changed=False)
    value = unseal(
        keyring,
        Context(app.org_id, app.id, name, to_version),
        Sealed(old.ciphertext, old.wrapped_key),
    )
    number = secret.current_version + 1
    sealed = seal(keyring, Context(app.org_id, app.id, name, number), value.reveal())
    row = _new_version(tx, app, name, "rollback", (sealed, old.digest, old.size))
    tx.changed("secrets", app.id, "rollback")
    tx.audit(
        "secrets.rollback",
        app.id,
        org_id=app.org_id,
        detail={
            "name": name,
            "version": row.version,
            "from_version": to_version,
            "digest": old.digest,
        },
    )
    return SetResult(name, row.version, old.digest, changed=True)


@dataclass(frozen=True)
class SecretInfo:
    name: str
    digest: str
    version: int
    set_by: str
    updated_at: datetime
    status: str


def _deployed_map(session: Session, app_id: str) -> dict[str, int]:
    release = latest_release(session, app_id)
    return json.loads(release.secret_versions) if release else {}


def current_versions(session: Session, app_id: str) -> dict[str, int]:
    """name → version of every secret that is set now, staged changes included."""
    rows = session.execute(
        select(Secret.name, Secret.current_version).where(
            Secret.app_id == app_id, Secret.deleted.is_(False), Secret.current_version > 0
        )
    )
    return {name: version for name, version in rows}


def list_secrets(session: Session, app: App) -> list[SecretInfo]:
    """Metadata of every secret (never a value), with whether the latest release carries it.
    A secret unset but still in the latest release is listed as `unset (staged)`."""
    deployed = _deployed_map(session, app.id)
    out: list[SecretInfo] = []
    rows = session.execute(
        select(Secret, SecretVersion)
        .join(SecretVersion, _is_current_version())
        .where(Secret.app_id == app.id)
        .order_by(Secret.name)
    )
    for secret, version in rows:
        if secret.deleted:
            if secret.name in deployed:
                last = _last_set_version(session, app.id, secret.name, deployed[secret.name])
                out.append(
                    SecretInfo(
                        secret.name,
                        last.digest or "",
                        deployed[secret.name],
                        version.set_by,
                        version.set_at,
                        "unset (staged)",
                    )
                )
            continue
        status = "deployed" if deployed.get(secret.name) == version.version else "staged"
        out.append(
            SecretInfo(
                secret.name,
                version.digest or "",
                version.version,
                version.set_by,
                version.set_at,
                status,
            )
        )
    return out


def _last_set_version(session: Session, app_id: str, name: str, number: int) -> SecretVersion:
    return session.execute(
        select(SecretVersion).where(
            SecretVersion.app_id == app_id,
            SecretVersion.name == name,
            SecretVersion.version == number,
        )
    ).scalar_one()


def history(session: Session, app: App, name: str) -> list[SecretVersion]:
    validate_name(name)
    rows = list(
        session.execute(
            select(SecretVersion)
            .where(SecretVersion.app_id == app.id, SecretVersion.name == name)
            .order_by(SecretVersion.version)
        ).scalars()
    )
    if not rows:
        raise NotFound(f"{app.name} has no secret {name}", hint="see `aero secrets list`")
    return rows


# -- releases -----------------------------------------------------------------------------------


def latest_release(session: Session, app_id: str) -> Release | None:
    return session.execute(
        select(Release).where(Release.app_id == app_id).order_by(Release.number.desc()).limit(1)
    ).scalar_one_or_none()


def _can_serve() -> tuple[ColumnElement[bool], ...]:
    return (
        Release.artifact.is_not(None),
        Release.config.is_not(None),
        Release.status.not_in(("failed", "superseded")),
    )


def serving_release(session: Session, app_id: str) -> Release | None:
    """The newest release with code that did not fail and was not superseded before it rolled
    out: what the app's machines run (or are being moved to). Neither kind is ever the base of
    another release."""
    return session.execute(
        select(Release)
        .where(Release.app_id == app_id, *_can_serve())
        .order_by(Release.number.desc())
        .limit(1)
    ).scalar_one_or_none()


def serving_releases(session: Session) -> dict[str, Release]:
    """`serving_release` of every app that has one, in one query: app id → release."""
    newest = (
        select(Release.app_id, func.max(Release.number).label("number"))
        .where(*_can_serve())
        .group_by(Release.app_id)
        .subquery()
    )
    rows = session.execute(
        select(Release).join(
            newest, (Release.app_id == newest.c.app_id) & (Release.number == newest.c.number)
        )
    ).scalars()
    return {release.app_id: release for release in rows}


def staged_changes(session: Session, app: App) -> dict[str, tuple[int | None, int | None]]:
    """name → (deployed version, current version) for every difference."""
    deployed = _deployed_map(session, app.id)
    current = current_versions(session, app.id)
    return {
        name: (deployed.get(name), current.get(name))
        for name in sorted(set(deployed) | set(current))
        if deployed.get(name) != current.get(name)
    }


def create_release(
    tx: Tx,
    app: App,
    description: str,
    *,
    artifact: str | None = None,
    config: str | None = None,
) -> Release:
    """Release N+1 carrying the app's current secret versions (staged ones included). Without
    a new artifact and config (a secrets change), it keeps those of the serving release, never
    a failed one's."""
    previous = latest_release(tx.session, app.id)
    base = serving_release(tx.session, app.id) if artifact is None or config is None else None
    if base is not None:
        artifact = artifact if artifact is not None else base.artifact
        config = config if config is not None else base.config
    versions = current_versions(tx.session, app.id)
    release = Release(
        id=new_id("rel"),
        app_id=app.id,
        number=(previous.number if previous else 0) + 1,
        secret_versions=json.dumps(versions, sort_keys=True),
        artifact=artifact,
        config=config,
        description=description,
        created_by=tx.audit_ctx.actor,
    )
    # Something to roll out makes it pending until the agent has it serving; a release of an
    # app with no code yet (upstreams registered by hand) has nothing to wait for.
    release.status = "pending" if release.artifact and release.config else "complete"
    if release.status == "pending":
        # A release still waiting for the agent never will: it rolls out the newest one only.
        # Say so, so nobody waits for it (`aero deploy` of it returns).
        waiting = tx.session.execute(
            select(Release).where(Release.app_id == app.id, Release.status == "pending")
        ).scalars()
        for older in waiting:
            older.status = "superseded"
            older.status_reason = f"release {release.number} came before it rolled out"
            tx.changed("release", older.id, "update")
            tx.audit(
                "release.superseded",
                app.id,
                org_id=app.org_id,
                detail={"number": older.number, "reason": older.status_reason},
            )
    tx.session.add(release)
    tx.session.flush()
    tx.changed("release", release.id, "create")
    tx.audit(
        "release.create",
        app.id,
        org_id=app.org_id,
        detail={
            "number": release.number,
            "secrets": versions,
            "description": description,
            "artifact": release.artifact,
        },
    )
    return release


def list_releases(session: Session, app: App) -> list[Release]:
    return list(
        session.execute(
            select(Release).where(Release.app_id == app.id).order_by(Release.number.desc())
        ).scalars()
    )


def get_release(session: Session, app: App, number: int) -> Release:
    release = session.execute(
        select(Release).where(Release.app_id == app.id, Release.number == number)
    ).scalar_one_or_none()
    if release is None:
        raise NotFound(f"{app.name} has no release {number}", hint="see `aero releases -a APP`")
    return release


def unseal_release(
    session: Session, keyring: Keyring, app: App, release: Release
) -> dict[str, SecretValue]:
    """The values of exactly the secret versions `release` carries."""
    wanted: dict[str, int] = json.loads(release.secret_versions)
    if not wanted:
        return {}
    rows = session.execute(
        select(SecretVersion).where(
            SecretVersion.app_id == app.id,
            tuple_(SecretVersion.name, SecretVersion.version).in_(list(wanted.items())),
        )
    ).scalars()
    values: dict[str, SecretValue] = {}
    for row in rows:
        if row.ciphertext is None or row.wrapped_key is None:
            continue
        context = Context(app.org_id, app.id, row.name, row.version)
        values[row.name] = unseal(keyring, context, Sealed(row.ciphertext, row.wrapped_key))
    return values
