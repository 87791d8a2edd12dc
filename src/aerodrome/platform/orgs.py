"""Users, organizations and memberships."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aerodrome.errors import Conflict, InvalidInput, NotFound
from aerodrome.ids import new_id
from aerodrome.platform.names import validate_email, validate_label, validate_slug
from aerodrome.store.db import Tx
from aerodrome.store.models import Membership, Org, User
from aerodrome.tokens.actions import ROLES


def get_or_create_user(tx: Tx, email: str, *, name: str = "", platform_admin: bool = False) -> User:
    email = validate_email(email)
    user = tx.session.execute(select(User).where(User.email == email)).scalar_one_or_none()
    if user is not None:
        return user
    user = User(id=new_id("usr"), email=email, name=name, is_platform_admin=platform_admin)
    tx.session.add(user)
    tx.changed("user", user.id, "create")
    tx.audit("user.create", user.id, detail={"email": email, "platform_admin": platform_admin})
    return user


def get_user(session: Session, user_id: str) -> User | None:
    return session.get(User, user_id)


def get_org(session: Session, ref: str) -> Org:
    """An org by slug or id."""
    column = Org.id if ref.startswith("org_") else Org.slug
    org = session.execute(select(Org).where(column == ref)).scalar_one_or_none()
    if org is None:
        raise NotFound(f"org {ref!r} not found", hint="list yours with `aero orgs list`")
    return org


def create_org(tx: Tx, slug: str, name: str | None, creator: User) -> Org:
    validate_slug("org slug", slug)
    name = validate_label("org name", name or slug)
    if tx.session.execute(select(Org.id).where(Org.slug == slug)).first():
        raise Conflict(f"org {slug!r} already exists", hint="choose another slug")
    org = Org(id=new_id("org"), slug=slug, name=name, created_by=creator.id)
    tx.session.add(org)
    tx.session.flush()
    tx.session.add(Membership(id=new_id("mem"), org_id=org.id, user_id=creator.id, role="admin"))
    tx.changed("org", org.id, "create")
    tx.audit("org.create", org.id, org_id=org.id, detail={"slug": slug})
    return org


def role_of(session: Session, user_id: str, org_id: str) -> str | None:
    return session.execute(
        select(Membership.role).where(Membership.user_id == user_id, Membership.org_id == org_id)
    ).scalar_one_or_none()


def orgs_of_user(session: Session, user_id: str) -> list[Org]:
    return list(
        session.execute(
            select(Org)
            .join(Membership, Membership.org_id == Org.id)
            .where(Membership.user_id == user_id)
            .order_by(Org.slug)
        ).scalars()
    )


def list_members(session: Session, org: Org) -> list[tuple[User, Membership]]:
    rows = session.execute(
        select(User, Membership)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.org_id == org.id)
        .order_by(User.email)
    )
    return [(user, membership) for user, membership in rows]


def _validate_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"invalid role {role!r}", hint=f"one of: {', '.join(ROLES)}")
    return role


def add_member(tx: Tx, org: Org, email: str, role: str) -> tuple[User, Membership]:
    _validate_role(role)
    user = get_or_create_user(tx, email)
    if role_of(tx.session, user.id, org.id) is not None:
        raise Conflict(f"{user.email} is already a member of {org.slug}")
    membership = Membership(id=new_id("mem"), org_id=org.id, user_id=user.id, role=role)
    tx.session.add(membership)
    tx.session.flush()
    tx.changed("membership", membership.id, "create")
    tx.audit("member.add", user.id, org_id=org.id, detail={"email": user.email, "role": role})
    return user, membership


def remove_member(tx: Tx, org: Org, email: str) -> User:
    email = validate_email(email)
    row = tx.session.execute(
        select(User, Membership)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.org_id == org.id, User.email == email)
    ).first()
    if row is None:
        raise NotFound(f"{email} is not a member of {org.slug}")
    user, membership = row
    if membership.role == "admin":
        admins = tx.session.execute(
            select(func.count())
            .select_from(Membership)
            .where(Membership.org_id == org.id, Membership.role == "admin")
        ).scalar_one()
        if admins <= 1:
            raise Conflict(
                f"{email} is the last admin of {org.slug}",
                hint="add another admin first",
            )
    tx.session.delete(membership)
    tx.changed("membership", membership.id, "delete")
    tx.audit("member.remove", user.id, org_id=org.id, detail={"email": email})
    return user
