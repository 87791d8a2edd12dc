"""The one decision: may this verified token do this action on this resource?

Both the HTTP API (`api/authz.py`) and in-process callers such as `unseal_for_machine` ask
`decide`; nothing else grants anything. Refusals are recorded with `record_denial`.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from aerodrome.errors import AeroError
from aerodrome.platform import orgs as org_rules
from aerodrome.services import Services
from aerodrome.store.db import Audit
from aerodrome.store.models import App, Org, User
from aerodrome.tokens.verify import ALLOW, Decision, UserContext, VerifiedToken
from aerodrome.tokens.verify import Request as AuthzRequest


class Denied(AeroError):
    def __init__(self, decision: Decision) -> None:
        super().__init__(
            decision.message, hint=decision.hint, code=decision.reason, status=decision.status
        )


def decide(
    services: Services,
    session: Session,
    token: VerifiedToken,
    user: User | None,
    action: str,
    org: Org | None,
    app: App | None,
    *,
    revocation_id: str | None = None,
    machine_id: str | None = None,
) -> Decision:
    """The one function that grants or refuses an action on a resource."""
    if action == "tokens.revoke" and revocation_id == token.revocation_ids[-1]:
        return ALLOW  # whoever holds a token may always revoke it (its own last block)
    request = AuthzRequest(
        action=action,
        org_id=org.id if org else None,
        org_slug=org.slug if org else None,
        app_id=app.id if app else None,
        app_name=app.name if app else None,
        machine_id=machine_id,
    )
    context = UserContext()
    if user is not None:
        context = UserContext(
            role=org_rules.role_of(session, user.id, org.id) if org else None,
            platform_admin=user.is_platform_admin,
        )
    return services.verifier.authorize(token, request, context)


def record_denial(
    services: Services,
    audit: Audit,
    decision: Decision,
    action: str | None,
    org: Org | None = None,
    app: App | None = None,
) -> Denied:
    """Write the refusal to the audit log (its own transaction) and return the error to raise."""
    target = app.id if app else org.id if org else "-"
    with services.store.write(audit) as tx:
        tx.audit(
            action or "authenticate",
            target,
            outcome="denied",
            reason=decision.reason,
            org_id=org.id if org else "",
        )
    return Denied(decision)
