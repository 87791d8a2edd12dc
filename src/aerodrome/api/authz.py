"""Authorization in one place.

Every route under `/v1` declares what it needs with `requires(action, resource)` (or
`authenticated()` for "any valid token"). The dependency authenticates the caller, loads
the resource, and asks `decide`, the only function that grants anything. A route that
declares nothing is refused by `AuthorizedRoute` before its handler runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from fastapi import Request
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from aerodrome.access import Denied, decide, record_denial
from aerodrome.errors import AeroError, InvalidInput
from aerodrome.platform import apps as app_rules
from aerodrome.platform import orgs as org_rules
from aerodrome.platform import tokens as token_records
from aerodrome.services import Services
from aerodrome.store.db import Audit
from aerodrome.store.models import App, Org, Token, User
from aerodrome.tokens.verify import Decision, VerifiedToken

PUBLIC = "public"  # marker for routes that need no token (health, public key, OpenAPI)


@dataclass
class Target:
    org: Org | None = None
    app: App | None = None
    token: Token | None = None
    revocation_id: str | None = None


@dataclass
class Caller:
    """Who is calling, what they asked for, and the resource it names (already loaded)."""

    services: Services
    token: VerifiedToken
    user: User | None
    request_id: str
    client_ip: str
    target: Target = field(default_factory=Target)

    @property
    def actor(self) -> str:
        return self.user.id if self.user is not None else self.token.token_id

    def audit_context(self) -> Audit:
        return Audit(actor=self.actor, request_id=self.request_id, client_ip=self.client_ip)

    def can(
        self, session: Session, action: str, org: Org | None = None, app: App | None = None
    ) -> bool:
        """For listings: keep only what the caller may see. Same decision, no audit event."""
        return decide(self.services, session, self.token, self.user, action, org, app).allowed


# -- resources a route can name ---------------------------------------------------------------


class Resource:
    needs_body = False

    def load(self, session: Session, request: Request, body: Any, caller: Caller) -> Target:
        raise NotImplementedError


class Global(Resource):
    def load(self, session: Session, request: Request, body: Any, caller: Caller) -> Target:
        return Target()


class OrgParam(Resource):
    """The org named by a path or query parameter (slug or id)."""

    def __init__(self, name: str = "org", *, query: bool = False) -> None:
        self.name, self.query = name, query

    def load(self, session: Session, request: Request, body: Any, caller: Caller) -> Target:
        params = request.query_params if self.query else request.path_params
        ref = params.get(self.name)
        if not ref:
            raise InvalidInput(f"missing {self.name}", hint=f"pass --{self.name}")
        return Target(org=org_rules.get_org(session, ref))


class AppParam(Resource):
    def __init__(self, name: str = "app", *, query: bool = False) -> None:
        self.name, self.query = name, query

    def load(self, session: Session, request: Request, body: Any, caller: Caller) -> Target:
        params = request.query_params if self.query else request.path_params
        ref = params.get(self.name)
        if not ref:
            raise InvalidInput(f"missing {self.name}", hint="pass -a APP")
        app = app_rules.get_app(session, ref)
        return Target(org=session.get(Org, app.org_id), app=app)


class RevocationTarget(Resource):
    """`POST /v1/tokens/{ref}/revoke`: a token id, a known token's revocation id, the
    caller's own last block, or a block of a token passed in the body as `token`."""

    needs_body = True

    def load(self, session: Session, request: Request, body: Any, caller: Caller) -> Target:
        ref = request.path_params["ref"]
        record = token_records.find_token(session, ref)
        if record is not None:
            return _token_target(session, record, record.revocation_id)
        if ref == caller.token.revocation_ids[-1] and caller.token.attenuated:
            root = token_records.get_token(session, caller.token.revocation_ids[0])
            return Target(token=root, revocation_id=ref)
        carrier = body.get("token") if isinstance(body, dict) else None
        if not carrier:
            raise AeroError(
                f"unknown token or block {ref[:16]}…",
                hint="to revoke an attenuated token's block, pass that token too "
                "(`aero tokens revoke ID --from-token TOKEN`)",
                code="not_found",
                status=404,
            )
        parsed = caller.services.verifier.parse(str(carrier))
        if isinstance(parsed, Decision):
            raise Denied(parsed)
        chain = parsed.revocation_ids
        if ref not in chain:
            raise InvalidInput("that block is not part of the token given", code="not_found")
        root = token_records.get_token(session, chain[0])
        return _token_target(session, root, ref)


def _token_target(session: Session, record: Token, revocation_id: str) -> Target:
    org = session.get(Org, record.org_id) if record.org_id else None
    app = session.get(App, record.app_id) if record.app_id else None
    return Target(org=org, app=app, token=record, revocation_id=revocation_id)


# -- the dependency ---------------------------------------------------------------------------


class Requires:
    """`Depends(requires(action, resource))`: authenticate, load, decide, audit denials."""

    def __init__(self, action: str | None, resource: Resource) -> None:
        self.action = action
        self.resource = resource

    async def __call__(self, request: Request) -> Caller:
        # The body is read here (it can only be awaited) but parsed after authentication,
        # so an anonymous caller learns nothing from how its body is judged.
        raw = await request.body() if self.resource.needs_body else b""
        return await run_in_threadpool(self._authorize, request, raw)

    def _authorize(self, request: Request, raw_body: bytes) -> Caller:
        services: Services = request.app.state.services
        request_id: str = request.state.request_id
        client_ip = request.client.host if request.client else ""
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if not header or scheme.lower() != "bearer" or not credential.strip():
            self._deny(
                services,
                request_id,
                client_ip,
                "anonymous",
                Decision(
                    False,
                    "unauthenticated",
                    "no API token given",
                    "set AERO_API_TOKEN (see `aero up` output) or pass --token",
                ),
            )
        services.refresh_revocations()
        verified = services.verifier.verify(credential.strip())
        if isinstance(verified, Decision):
            self._deny(services, request_id, client_ip, "anonymous", verified)
        assert isinstance(verified, VerifiedToken)
        with services.store.read() as session:
            user = None
            if verified.kind == "session":
                user = org_rules.get_user(session, verified.user_id or "")
                if user is None:
                    self._deny(
                        services,
                        request_id,
                        client_ip,
                        verified.token_id,
                        Decision(False, "revoked", "the user of this token no longer exists"),
                    )
            caller = Caller(services, verified, user, request_id, client_ip)
            body: Any = None
            if self.resource.needs_body:
                try:
                    body = json.loads(raw_body) if raw_body else {}
                except ValueError as exc:
                    raise InvalidInput("request body is not valid JSON") from exc
            caller.target = self.resource.load(session, request, body, caller)
            if self.action is None:
                return caller
            decision = decide(
                services,
                session,
                verified,
                user,
                self.action,
                caller.target.org,
                caller.target.app,
                revocation_id=caller.target.revocation_id,
            )
        if not decision.allowed:
            self._deny(
                services, request_id, client_ip, caller.actor, decision, caller.target, self.action
            )
        return caller

    @staticmethod
    def _deny(
        services: Services,
        request_id: str,
        client_ip: str,
        actor: str,
        decision: Decision,
        target: Target | None = None,
        action: str | None = None,
    ) -> NoReturn:
        target = target or Target()
        audit = Audit(actor, request_id, client_ip)
        raise record_denial(services, audit, decision, action, target.org, target.app)


def requires(action: str, resource: Resource | None = None) -> Requires:
    return Requires(action, resource or Global())


def authenticated() -> Requires:
    """Any valid, unexpired, unrevoked token; no action is granted by this alone."""
    return Requires(None, Global())


def declared(route: APIRoute) -> Requires | str | None:
    """What a route declares: its `Requires`, `PUBLIC`, or None."""
    if route.openapi_extra and route.openapi_extra.get("x-aero-public"):
        return PUBLIC
    for dependency in route.dependant.dependencies:
        if isinstance(dependency.call, Requires):
            return dependency.call
    return None


class AuthorizedRoute(APIRoute):
    """Deny by default: a route that declares neither a permission nor `public` never runs."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()
        if declared(self) is not None:
            return handler

        async def refuse(request: Request) -> Response:
            error = AeroError(
                "this route declares no permission, so it is refused",
                code="action_not_allowed",
                status=403,
            )
            return JSONResponse(error.to_dict(), status_code=403)

        return refuse
