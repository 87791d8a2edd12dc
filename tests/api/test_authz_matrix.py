"""Every API route against every kind of token, on the caller's own org/app and a foreign one.

The expected outcome of each call is worked out here from the policy in
`aerodrome.tokens.actions` (what each role and token kind may do) and the scope checks a
capability token carries (`aerodrome.tokens.mint`), never from what the server answered. Each
test runs one token against every route and reports all mismatches at once.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select
from starlette.routing import BaseRoute

from aerodrome.api.authz import (
    PUBLIC,
    AppParam,
    AuthorizedRoute,
    Global,
    OrgParam,
    Requires,
    Resource,
    RevocationTarget,
    declared,
)
from aerodrome.api.routes.meta import PUBLIC as PUBLIC_EXTRA
from aerodrome.certs import store as cert_store
from aerodrome.platform import apps as app_rules
from aerodrome.platform import http_service as http_rules
from aerodrome.platform import machines as machine_rules
from aerodrome.platform import orgs as org_rules
from aerodrome.platform import secrets as secret_rules
from aerodrome.platform import tokens as token_records
from aerodrome.runtime.artifact import Artifact, app_artifacts, build_artifact, store_artifact
from aerodrome.runtime.logstore import LogStore
from aerodrome.runtime.machine import LogLine
from aerodrome.secrets.values import SecretValue
from aerodrome.store.models import AuditEvent
from aerodrome.tokens.actions import CAPABILITY_KINDS, GLOBAL_ACTIONS, ROLE_ACTIONS
from aerodrome.tokens.mint import Scope
from aerodrome.tokens.verify import VerifiedToken
from tests.conftest import World

ORGS = ("acme", "globex")
APPS = ("acme-web", "acme-api", "globex-web", "globex-api")
MACHINE = "mch_" + "a" * 24


# -- what each route declares: the table the matrix is driven by ----------------------------


@dataclass(frozen=True)
class Spec:
    """What a route needs: an action (None: any valid token) on a kind of resource."""

    action: str | None
    resource: type[Resource]


ROUTES: dict[tuple[str, str], Spec] = {
    ("GET", "/v1/auth/whoami"): Spec(None, Global),
    ("GET", "/v1/orgs"): Spec(None, Global),
    ("GET", "/v1/apps"): Spec(None, Global),
    ("GET", "/v1/tokens"): Spec(None, Global),
    ("POST", "/v1/orgs"): Spec("orgs.create", Global),
    ("GET", "/v1/orgs/{org}"): Spec("orgs.read", OrgParam),
    ("GET", "/v1/orgs/{org}/members"): Spec("members.read", OrgParam),
    ("POST", "/v1/orgs/{org}/members"): Spec("members.write", OrgParam),
    ("DELETE", "/v1/orgs/{org}/members/{email}"): Spec("members.write", OrgParam),
    ("POST", "/v1/orgs/{org}/apps"): Spec("apps.create", OrgParam),
    ("GET", "/v1/apps/{app}"): Spec("apps.read", AppParam),
    ("DELETE", "/v1/apps/{app}"): Spec("apps.destroy", AppParam),
    ("POST", "/v1/orgs/{org}/tokens"): Spec("tokens.create", OrgParam),
    ("POST", "/v1/apps/{app}/tokens"): Spec("tokens.create", AppParam),
    ("GET", "/v1/orgs/{org}/tokens"): Spec("tokens.read", OrgParam),
    ("GET", "/v1/apps/{app}/tokens"): Spec("tokens.read", AppParam),
    ("POST", "/v1/tokens/{ref}/revoke"): Spec("tokens.revoke", RevocationTarget),
    ("GET", "/v1/audit"): Spec("platform.audit.read", Global),
    ("GET", "/v1/audit/verify"): Spec("platform.audit.read", Global),
    ("GET", "/v1/changes"): Spec("platform.watch", Global),
    ("GET", "/v1/orgs/{org}/audit"): Spec("audit.read", OrgParam),
    ("GET", "/v1/apps/{app}/secrets"): Spec("secrets.read", AppParam),
    ("POST", "/v1/apps/{app}/secrets"): Spec("secrets.write", AppParam),
    ("POST", "/v1/apps/{app}/secrets/unset"): Spec("secrets.write", AppParam),
    ("POST", "/v1/apps/{app}/secrets/deploy"): Spec("secrets.write", AppParam),
    ("GET", "/v1/apps/{app}/secrets/{name}/history"): Spec("secrets.read", AppParam),
    ("POST", "/v1/apps/{app}/secrets/{name}/rollback"): Spec("secrets.write", AppParam),
    ("GET", "/v1/apps/{app}/releases"): Spec("apps.read", AppParam),
    ("GET", "/v1/keys"): Spec("platform.keys", Global),
    ("POST", "/v1/keys/rotate"): Spec("platform.keys", Global),
    ("POST", "/v1/keys/retire"): Spec("platform.keys", Global),
    ("GET", "/v1/apps/{app}/http-service"): Spec("apps.read", AppParam),
    ("PUT", "/v1/apps/{app}/http-service"): Spec("apps.deploy", AppParam),
    ("GET", "/v1/apps/{app}/upstreams"): Spec("machines.read", AppParam),
    ("POST", "/v1/apps/{app}/upstreams"): Spec("machines.write", AppParam),
    ("DELETE", "/v1/apps/{app}/upstreams/{upstream_id}"): Spec("machines.write", AppParam),
    ("GET", "/v1/apps/{app}/certs"): Spec("certs.read", AppParam),
    ("POST", "/v1/apps/{app}/certs"): Spec("certs.write", AppParam),
    ("GET", "/v1/apps/{app}/certs/{hostname}"): Spec("certs.read", AppParam),
    ("DELETE", "/v1/apps/{app}/certs/{hostname}"): Spec("certs.write", AppParam),
    ("GET", "/v1/apps/{app}/artifacts/{digest}"): Spec("apps.read", AppParam),
    ("PUT", "/v1/apps/{app}/artifacts/{digest}"): Spec("apps.deploy", AppParam),
    ("POST", "/v1/apps/{app}/deploys"): Spec("apps.deploy", AppParam),
    ("GET", "/v1/apps/{app}/logs"): Spec("logs.read", AppParam),
    ("GET", "/v1/apps/{app}/machines"): Spec("machines.read", AppParam),
    ("POST", "/v1/apps/{app}/machines/{machine}/stop"): Spec("machines.write", AppParam),
    ("POST", "/v1/apps/{app}/machines/{machine}/start"): Spec("machines.write", AppParam),
    ("POST", "/v1/apps/{app}/machines/{machine}/restart"): Spec("machines.write", AppParam),
    ("GET", "/v1/apps/{app}/releases/{number}"): Spec("apps.read", AppParam),
    ("POST", "/v1/apps/{app}/releases/{number}/rollback"): Spec("apps.deploy", AppParam),
    ("GET", "/v1/apps/{app}/config"): Spec("apps.read", AppParam),
}
PUBLIC_ROUTES = {("GET", "/v1/health"), ("GET", "/v1/tokens/public-key")}
# FastAPI's own schema and docs pages: plain Starlette routes, not APIRoutes.
DOCS_PATHS = {"/v1/openapi.json", "/v1/docs", "/v1/redoc", "/v1/docs/oauth2-redirect"}


def victim_secret(n: int) -> str:
    """The secret `prepare` sets up for attempt `n` (two versions, neither deployed)."""
    return f"VICTIM_{n}"


# A valid body for each POST and PUT route (None: it takes none); `n` makes names unique.
# Routes that need something to exist first get it from `prepare`.
BODIES: dict[tuple[str, str], Callable[[int], dict[str, Any] | None]] = {
    ("POST", "/v1/orgs"): lambda n: {"slug": f"matrix-org-{n}"},
    ("POST", "/v1/orgs/{org}/members"): lambda n: {"email": f"new-{n}@matrix.test"},
    ("POST", "/v1/orgs/{org}/apps"): lambda n: {"name": f"matrix-app-{n}"},
    ("POST", "/v1/orgs/{org}/tokens"): lambda n: {"type": "readonly"},
    ("POST", "/v1/apps/{app}/tokens"): lambda n: {"type": "deploy"},
    ("POST", "/v1/tokens/{ref}/revoke"): lambda n: {},
    # Staged, so that whatever order they run in, deploy still has changes to release.
    ("POST", "/v1/apps/{app}/secrets"): lambda n: {
        "values": {f"MATRIX_{n}": f"matrix-value-{n}"},
        "stage": True,
    },
    ("POST", "/v1/apps/{app}/secrets/unset"): lambda n: {
        "names": [victim_secret(n)],
        "stage": True,
    },
    ("POST", "/v1/apps/{app}/secrets/deploy"): lambda n: None,
    ("POST", "/v1/apps/{app}/secrets/{name}/rollback"): lambda n: {"to_version": 1, "stage": True},
    ("POST", "/v1/keys/rotate"): lambda n: None,
    ("POST", "/v1/keys/retire"): lambda n: {"below": 2},
    ("PUT", "/v1/apps/{app}/http-service"): lambda n: {"force_https": n % 2 == 0},
    ("POST", "/v1/apps/{app}/upstreams"): lambda n: {"address": f"10.0.0.1:{1000 + n}"},
    ("POST", "/v1/apps/{app}/certs"): lambda n: {"hostname": f"matrix-{n}.example.com"},
    # built per attempt in attempts_for (raw bytes; a config naming the app)
    ("PUT", "/v1/apps/{app}/artifacts/{digest}"): lambda n: None,
    ("POST", "/v1/apps/{app}/deploys"): lambda n: None,
    ("POST", "/v1/apps/{app}/machines/{machine}/stop"): lambda n: None,
    ("POST", "/v1/apps/{app}/machines/{machine}/start"): lambda n: None,
    ("POST", "/v1/apps/{app}/machines/{machine}/restart"): lambda n: None,
    ("POST", "/v1/apps/{app}/releases/{number}/rollback"): lambda n: None,
}
SENDS_BODY = ("POST", "PUT")
# Routes whose valid request needs the app to hold `victim_secret(n)` with staged changes.
NEEDS_VICTIM_SECRET = {
    ("POST", "/v1/apps/{app}/secrets/unset"),
    ("POST", "/v1/apps/{app}/secrets/deploy"),
    ("GET", "/v1/apps/{app}/secrets/{name}/history"),
    ("POST", "/v1/apps/{app}/secrets/{name}/rollback"),
}


# -- who holds each token, and what the policy says they may do ------------------------------


@dataclass(frozen=True)
class Holder:
    kind: str  # "session" or a capability kind
    org: str | None  # the org the token (or its user) belongs to
    role: str | None = None  # session: the user's role in `org`
    app: str | None = None  # app-scoped capability tokens
    machine: bool = False
    platform_admin: bool = False


HOLDERS: dict[str, Holder] = {"platform.admin": Holder("session", None, platform_admin=True)}
for _org in ORGS:
    HOLDERS[f"{_org}.admin"] = Holder("session", _org, role="admin")
    HOLDERS[f"{_org}.member"] = Holder("session", _org, role="member")
    HOLDERS[f"{_org}.org"] = Holder("org", _org)
    HOLDERS[f"{_org}.readonly"] = Holder("readonly", _org)
    HOLDERS[f"{_org}.deploy"] = Holder("deploy", _org, app=f"{_org}-web")
    HOLDERS[f"{_org}.machine"] = Holder("machine", _org, app=f"{_org}-web", machine=True)


def expected_denial(
    holder: Holder, action: str | None, org: str | None, app: str | None
) -> str | None:
    """None if the policy allows `action` on (org, app) for this holder, else the reason."""
    if action is None:
        return None  # any valid token
    if holder.kind != "session":
        if action == "tokens.create":
            return "action_not_allowed"  # only an unattenuated session token mints
        # The authority block's checks; when several fail, the most specific is reported.
        failed = []
        if holder.app is not None and app != holder.app:
            failed.append("wrong_app")
        if holder.machine:
            failed.append("wrong_machine")  # no route names a machine
        if org != holder.org:
            failed.append("wrong_org")
        if action not in CAPABILITY_KINDS[holder.kind]:
            failed.append("action_not_allowed")
        return failed[0] if failed else None
    if action in GLOBAL_ACTIONS:
        granted = not action.startswith("platform.") or holder.platform_admin
        return None if granted else "action_not_allowed"
    role = holder.role if org is not None and org == holder.org else None
    if role is not None and action in ROLE_ACTIONS[role]:
        return None
    return "wrong_org" if role is None else "action_not_allowed"


# -- enumerating the app's routes -------------------------------------------------------------


def served_routes(app: FastAPI) -> list[tuple[str, str, BaseRoute]]:
    """(method, full path, route) for everything the app serves, however FastAPI nests it."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if contexts is None:  # FastAPI before 0.137 copied included routes into app.routes
        found = [(getattr(r, "path", ""), getattr(r, "methods", None), r) for r in app.routes]
    else:  # later versions leave one lazy `_IncludedRouter` per include_router call
        found = [(c.path, c.methods, c.original_route) for c in contexts(app.routes)]
    return [
        (method, path, route) for path, methods, route in found for method in sorted(methods or ())
    ]


def app_of(world: World) -> FastAPI:
    app = world.client.app  # the FastAPI app built by aerodrome.api.app.create_app
    assert isinstance(app, FastAPI)
    return app


def api_routes(app: FastAPI) -> list[tuple[str, str, APIRoute]]:
    return [(m, p, r) for m, p, r in served_routes(app) if isinstance(r, APIRoute)]


def test_every_route_declares_a_permission_and_the_table_covers_them_all(world: World) -> None:
    routes = api_routes(app_of(world))
    assert len(routes) >= len(ROUTES) + len(PUBLIC_ROUTES), "route enumeration went quiet"
    undeclared = [f"{m} {p}" for m, p, r in routes if declared(r) is None]
    assert undeclared == []
    protected = {(m, p): declared(r) for m, p, r in routes if declared(r) != PUBLIC}
    assert set(protected) == set(ROUTES), "a route was added or removed: update ROUTES"
    for key, requirement in protected.items():
        assert isinstance(requirement, Requires)
        assert requirement.action == ROUTES[key].action, key
        assert type(requirement.resource) is ROUTES[key].resource, key


def test_public_routes_are_exactly_health_public_key_and_docs(world: World) -> None:
    served = served_routes(app_of(world))
    public = {(m, p) for m, p, r in served if isinstance(r, APIRoute) and declared(r) == PUBLIC}
    assert public == PUBLIC_ROUTES
    others = {p for _, p, r in served if not isinstance(r, APIRoute)}
    assert others <= DOCS_PATHS and "/v1/openapi.json" in others
    for path in sorted({p for _, p in PUBLIC_ROUTES} | others):
        response = world.call("GET", path)  # no token at all
        assert response.status_code == 200, (path, response.text)
    key = world.call("GET", "/v1/tokens/public-key").json()
    assert key["public_key"] == str(world.services.root.public)


def test_a_route_that_declares_nothing_is_refused() -> None:
    ran: list[str] = []
    router = APIRouter(route_class=AuthorizedRoute)

    @router.get("/undeclared")
    def undeclared() -> dict[str, str]:
        ran.append("undeclared")
        return {"ran": "yes"}

    @router.post("/undeclared")
    def undeclared_post() -> dict[str, str]:
        ran.append("undeclared_post")
        return {"ran": "yes"}

    @router.get("/open", openapi_extra=PUBLIC_EXTRA)
    def open_route() -> dict[str, str]:
        ran.append("open")
        return {"ran": "yes"}

    app = FastAPI()
    app.include_router(router, prefix="/v1")
    routes = {(m, p): r for m, p, r in api_routes(app)}
    assert declared(routes[("GET", "/v1/undeclared")]) is None
    client = TestClient(app)
    for method in ("GET", "POST"):
        response = client.request(
            method, "/v1/undeclared", headers={"authorization": "Bearer anything"}
        )
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "action_not_allowed"
        assert "declares no permission" in response.json()["error"]["message"]
    assert ran == []
    assert client.get("/v1/open").json() == {"ran": "yes"}  # the router itself works
    assert ran == ["open"]


# -- the matrix -------------------------------------------------------------------------------


@dataclass
class Attempt:
    method: str
    template: str
    url: str
    org: str | None  # the org the request names ("acme"/"globex")
    app: str | None
    body: dict[str, Any] | bytes | None = None
    check: Callable[[httpx.Response], list[str]] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{self.method} {self.url}"


def _victim_member(world: World, org: str, n: int) -> str:
    email = f"victim-{n}@{org}.test"
    with world.services.store.write() as tx:
        org_rules.add_member(tx, org_rules.get_org(tx.session, org), email, "member")
    return email


def _victim_secret(world: World, app_name: str, n: int) -> str:
    """`victim_secret(n)` in `app_name`: versions 1 and 2 with different values, not deployed,
    so unset, history, rollback (to 1) and deploy each have real work to do."""
    name = victim_secret(n)
    with world.services.store.write() as tx:
        app = app_rules.get_app(tx.session, app_name)
        keyring = world.services.keyring(tx.session)
        for value in (f"victim-{n}-one", f"victim-{n}-two"):
            secret_rules.set_secrets(
                tx, keyring, world.services.digester, app, {name: SecretValue(value.encode())}
            )
    return name


def _victim_upstream(world: World, app_name: str, n: int) -> str:
    with world.services.store.write() as tx:
        app = app_rules.get_app(tx.session, app_name)
        return http_rules.add_upstream(tx, app, f"10.9.9.9:{1000 + n}").id


def _victim_machine(world: World, app_name: str, n: int) -> str:
    machine_id = f"mch_{n:024d}".translate(str.maketrans("0123456789", "abcdefghij"))
    with world.services.store.write() as tx:
        app = app_rules.get_app(tx.session, app_name)
        machine_rules.create_machine(tx, app, machine_id, 1, "local")
    return machine_id


def _victim_release(world: World, app_name: str, n: int) -> int:
    """A release with code, to show, roll back to, or read the configuration of."""
    digest, data = _artifact(n)
    _store(world, app_name, data)
    with world.services.store.write() as tx:
        app = app_rules.get_app(tx.session, app_name)
        config = DEPLOY_CONFIG.format(app=app_name)
        return secret_rules.create_release(tx, app, "matrix", artifact=digest, config=config).number


def _victim_hostname(world: World, app_name: str, n: int) -> str:
    """A custom hostname of `app_name`, for the routes that show or remove one."""
    hostname = f"victim-{n}.example.com"
    with world.services.store.write() as tx:
        app = app_rules.get_app(tx.session, app_name)
        cert_store.add_custom(tx, app, hostname, world.services.settings.domain, "local")
    return hostname


def _rotated_keyring(world: World) -> None:
    """A second key version, so that retiring below v2 is a valid request."""
    with world.services.store.write() as tx:
        secret_rules.rotate_keys(tx, world.services.root_secret)


def prepare(
    world: World, method: str, template: str, org: str | None, app: str | None, n: int
) -> str:
    """What must exist for attempt `n` to be a valid request; returns its URL."""
    url = template
    if "{org}" in url:
        url = url.replace("{org}", str(org))
    if "{app}" in url:
        url = url.replace("{app}", str(app))
    if "{email}" in url:
        url = url.replace("{email}", _victim_member(world, str(org), n))
    if "{ref}" in url:
        url = url.replace("{ref}", _victim_token(world, str(org), app))
    if "{upstream_id}" in url:
        url = url.replace("{upstream_id}", _victim_upstream(world, str(app), n))
    if (method, template) in NEEDS_VICTIM_SECRET:
        url = url.replace("{name}", _victim_secret(world, str(app), n))
    if "{hostname}" in url:
        url = url.replace("{hostname}", _victim_hostname(world, str(app), n))
    if "{digest}" in url:
        digest, data = _artifact(n)
        if method == "GET":  # it must exist to be read
            _store(world, str(app), data)
        url = url.replace("{digest}", digest)
    if (method, template) == ("POST", "/v1/keys/retire"):
        _rotated_keyring(world)
    if template == LOGS:
        _log_line(world, str(app))
    if "{machine}" in url:
        url = url.replace("{machine}", _victim_machine(world, str(app), n))
    if "{number}" in url or template == "/v1/apps/{app}/config":
        url = url.replace("{number}", str(_victim_release(world, str(app), n)))
    assert "{" not in url, f"prepare() does not fill every parameter of {template}"
    return url


LOGS = "/v1/apps/{app}/logs"


def _log_line(world: World, app_name: str) -> None:
    """A line in the app's log (as the agent writes it), which a read must return."""
    store = LogStore(world.services.settings.data_dir / "logs" / "apps")
    line = LogLine(time.time(), MACHINE, "stdout", f"log of {app_name}")
    store.append(world.ids[app_name], line, "local")


def _logs_check(app_name: str) -> Callable[[httpx.Response], list[str]]:
    def check(response: httpx.Response) -> list[str]:
        messages = {line["message"] for line in response.json()["lines"]}
        return [] if messages == {f"log of {app_name}"} else [f"logs of {app_name}: {messages}"]

    return check


DEPLOY_CONFIG = """app = "{app}"
[processes]
app = "python3 -m http.server $PORT"
"""


@functools.cache
def _artifact(n: int) -> tuple[str, bytes]:
    """A small artifact of its own for attempt `n`: (digest, bytes)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "main.py").write_text(f"print({n})\n")
        artifact = build_artifact(Path(tmp))
        data = artifact.path.read_bytes()
        artifact.discard()
    return artifact.digest, data


def _store(world: World, app_name: str, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(suffix=".tar.gz", delete=False) as fh:
        fh.write(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store_artifact(
        Artifact(digest, len(data), 0, 0, Path(fh.name)),
        app_artifacts(world.services.settings.data_dir, world.ids[app_name]),
    )
    Path(fh.name).unlink()


def body_for(
    world: World, method: str, template: str, app: str | None, n: int
) -> dict[str, Any] | bytes | None:
    """A valid body for attempt `n` of a route (None: it takes none)."""
    if method not in SENDS_BODY:
        return None
    if (method, template) == ("PUT", "/v1/apps/{app}/artifacts/{digest}"):
        return _artifact(n)[1]  # the raw artifact, matching the digest prepare() put in the URL
    if template == "/v1/apps/{app}/deploys":
        digest, data = _artifact(n)
        _store(world, str(app), data)
        return {"artifact": digest, "config": DEPLOY_CONFIG.format(app=app)}
    return BODIES[(method, template)](n)


def as_payload(body: dict[str, Any] | bytes | None) -> dict[str, Any]:
    return {"content": body} if isinstance(body, bytes) else {"json": body}


def _did_work(template: str) -> Callable[[httpx.Response], list[str]] | None:
    """Deploy and rollback can succeed doing nothing; the matrix's requests must do something."""
    if template == "/v1/apps/{app}/secrets/deploy":
        return lambda r: [] if r.json()["release"] else [f"deploy made no release: {r.text}"]
    if template == "/v1/apps/{app}/secrets/{name}/rollback":
        return lambda r: [] if r.json()["secret"]["changed"] else [f"no rollback: {r.text}"]
    return None


def _victim_token(world: World, org: str, app: str | None) -> str:
    scope = Scope("readonly", org_id=world.ids[f"{org}.org"])
    if app is not None:
        scope = Scope("deploy", org_id=world.ids[f"{org}.org"], app_id=world.ids[app])
    with world.services.store.write() as tx:
        _, row = token_records.create_token(tx, world.services.root, scope, created_by="system")
    return row.id


def _listing_check(holder: Holder, path: str) -> Callable[[httpx.Response], list[str]]:
    """What GET /v1/orgs and /v1/apps must list: exactly what the policy lets the caller read."""

    def check(response: httpx.Response) -> list[str]:
        if path == "/v1/orgs":
            got = {item["slug"] for item in response.json()}
            want = {o for o in ORGS if expected_denial(holder, "orgs.read", o, None) is None}
        else:
            got = {item["name"] for item in response.json()}
            want = {
                a for a in APPS if expected_denial(holder, "apps.read", a.split("-")[0], a) is None
            }
        return [] if got == want else [f"GET {path} listed {sorted(got)}, expected {sorted(want)}"]

    return check


def attempts_for(world: World, holder: Holder) -> list[Attempt]:
    counter = itertools.count(1)
    out: list[Attempt] = []
    for method, template, route in api_routes(app_of(world)):
        if declared(route) == PUBLIC:
            continue
        spec = ROUTES[(method, template)]
        targets: list[tuple[str | None, str | None]] = [(None, None)]
        if spec.resource is OrgParam:
            targets = [(org, None) for org in ORGS]
        elif spec.resource is AppParam:
            targets = [(app.split("-")[0], app) for app in APPS]
        elif spec.resource is RevocationTarget:
            targets = [(org, app) for org in ORGS for app in (None, f"{org}-web")]
        for org, app in targets:
            n = next(counter)
            url = prepare(world, method, template, org, app, n)
            attempt = Attempt(
                method, template, url, org, app, body_for(world, method, template, app, n)
            )
            if url in ("/v1/orgs", "/v1/apps") and method == "GET":
                attempt.check = _listing_check(holder, url)
            elif template == LOGS:
                attempt.check = _logs_check(str(app))
            else:
                attempt.check = _did_work(template)
            out.append(attempt)
    # Reads first (listings see the world as built), then writes; destroying apps comes last.
    rank = {"GET": 0, "POST": 1, "PUT": 1, "DELETE": 2}
    out.sort(key=lambda a: (rank[a.method], a.template == "/v1/apps/{app}"))
    return out


def _actor(world: World, name: str, holder: Holder) -> str:
    if holder.kind == "session":
        return world.ids[name]
    parsed = world.services.verifier.parse(world.tokens[name])
    assert isinstance(parsed, VerifiedToken)
    return parsed.token_id


def test_the_table_of_holders_matches_the_world(world: World) -> None:
    assert set(HOLDERS) == set(world.tokens)
    for name, holder in HOLDERS.items():
        parsed = world.services.verifier.parse(world.tokens[name])
        assert isinstance(parsed, VerifiedToken)
        assert parsed.kind == holder.kind, name


@pytest.mark.parametrize("name", sorted(HOLDERS))
def test_matrix(world: World, name: str) -> None:
    holder = HOLDERS[name]
    token = world.tokens[name]
    actor = _actor(world, name, holder)
    problems: list[str] = []
    denials: dict[str, tuple[str, Attempt, str]] = {}  # request id -> (reason, attempt, spec)
    for attempt in attempts_for(world, holder):
        spec = ROUTES[(attempt.method, attempt.template)]
        want = expected_denial(holder, spec.action, attempt.org, attempt.app)
        before = world.services.store.revision()
        response = world.call(attempt.method, attempt.url, token, **as_payload(attempt.body))
        got = response.status_code
        code = response.json().get("error", {}).get("code") if got >= 400 else None
        mutating = attempt.method != "GET"
        # Invariants that hold whatever the policy table says.
        # Across orgs: always 403, saying the scope is wrong, unless this token may not do
        # the action anywhere (a capability token never mints), which it may say instead.
        foreign = attempt.org is not None and attempt.org != holder.org
        scope_reasons = {"wrong_org", "wrong_app"}
        if expected_denial(holder, spec.action, holder.org, holder.app) == "action_not_allowed":
            scope_reasons.add("action_not_allowed")
        if foreign and holder.org is not None and (got != 403 or code not in scope_reasons):
            problems.append(f"{attempt.label}: crossed orgs? {got} {code}")
        if (
            holder.app is not None
            and 200 <= got < 300
            and spec.action is not None
            and attempt.app != holder.app
        ):
            problems.append(f"{attempt.label}: app-scoped token reached beyond {holder.app}")
        if holder.kind == "readonly" and mutating and got < 400:
            problems.append(f"{attempt.label}: read-only token succeeded on a mutation")
        # The outcome the policy predicts.
        if want is None:
            if not 200 <= got < 300:
                problems.append(f"{attempt.label}: expected success, got {got} {code}")
            elif attempt.check is not None:
                problems.extend(attempt.check(response))
            continue
        if got != 403 or code != want:
            problems.append(f"{attempt.label}: expected 403 {want}, got {got} {code}")
            continue
        if world.services.store.revision() != before:
            problems.append(f"{attempt.label}: denied, yet the store changed")
        denials[response.headers["aero-request-id"]] = (want, attempt, str(spec.action))
    with world.services.store.read() as session:
        events = {
            e.request_id: e
            for e in session.execute(
                select(AuditEvent).where(AuditEvent.request_id.in_(list(denials)))
            ).scalars()
        }
    for request_id, (reason, attempt, action) in denials.items():
        event = events.get(request_id)
        org_id = world.ids[f"{attempt.org}.org"] if attempt.org else ""
        seen = (
            (event.outcome, event.reason, event.action, event.actor, event.org_id)
            if event
            else None
        )
        if seen != ("denied", reason, action, actor, org_id):
            problems.append(
                f"{attempt.label}: audit event {seen}, expected "
                f"{('denied', reason, action, actor, org_id)}"
            )
    assert problems == [], "\n".join(problems)


def test_foreign_org_listing_filter_is_not_found(world: World) -> None:
    """`GET /v1/apps?org=X` for another org is 404, the same answer as for an org that does
    not exist; for the caller's own org it lists exactly the apps they may read."""
    for name, holder in HOLDERS.items():
        for org in ORGS:
            response = world.call("GET", "/v1/apps", world.tokens[name], params={"org": org})
            if org != holder.org:
                assert response.status_code == 404, (name, org, response.text)
                assert response.json()["error"]["code"] == "not_found"
                continue
            assert response.status_code == 200, (name, org, response.text)
            want = {
                a
                for a in APPS
                if a.startswith(org + "-") and expected_denial(holder, "apps.read", org, a) is None
            }
            assert {a["name"] for a in response.json()} == want, (name, org)


def test_every_route_refuses_a_request_without_a_token(world: World) -> None:
    seen: list[str] = []
    for method, template, route in api_routes(app_of(world)):
        if declared(route) == PUBLIC:
            continue
        url = (
            template.replace("{org}", "acme")
            .replace("{app}", "acme-web")
            .replace("{email}", "member@acme.test")
            .replace("{ref}", "tok_unknown")
            .replace("{name}", victim_secret(0))
            .replace("{upstream_id}", "ups_unknown")
            .replace("{hostname}", "victim.example.com")
        )
        body = BODIES[(method, template)](0) if method in SENDS_BODY else None
        before = world.services.store.revision()
        response = world.call(method, url, json=body)
        assert response.status_code == 401, (method, url, response.text)
        assert response.json()["error"]["code"] == "unauthenticated"
        assert world.services.store.revision() == before
        seen.append(response.headers["aero-request-id"])
    with world.services.store.read() as session:
        events = list(
            session.execute(select(AuditEvent).where(AuditEvent.request_id.in_(seen))).scalars()
        )
    assert len(events) == len(seen) == len(ROUTES)
    assert {(e.outcome, e.reason, e.actor) for e in events} == {
        ("denied", "unauthenticated", "anonymous")
    }
