"""Bad input gets a clear 4xx in one error shape, changes nothing, and every denial is audited.

Each attempt below checks the store revision before and after (nothing committed) and looks up
the audit events written under the response's request id: a 401/403 must leave exactly one
event with outcome "denied" and the reason the client was given; any other refusal must not
leave an event saying the thing was done.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from aerodrome.api.app import MAX_BODY
from aerodrome.ids import new_id
from aerodrome.keyfiles import RootSecret
from aerodrome.store.models import App, AuditEvent
from aerodrome.tokens import format as wire
from aerodrome.tokens.attenuate import attenuate, inspect
from aerodrome.tokens.mint import RootKey, Scope, mint
from aerodrome.tokens.verify import UNAUTHENTICATED
from tests.conftest import World

NEW_APP = "/v1/orgs/acme/apps"  # a mutation every acme admin may make: the usual probe
NEW_APP_BODY = {"name": "probe-app"}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    """The one error shape: {"error": {"code", "message", "hint"}}, all text, no traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, str] = body["error"]
    assert set(error) == {"code", "message", "hint"}, error
    assert all(isinstance(value, str) for value in error.values()), error
    assert error["code"] == code, error
    assert error["message"], error
    for leak in ("Traceback", 'File "', "sqlalchemy", "biscuit_auth", "pydantic_core"):
        assert leak not in response.text, response.text
    return error


def events_of(world: World, response: httpx.Response) -> list[AuditEvent]:
    request_id = response.headers["aero-request-id"]
    with world.services.store.read() as session:
        return list(
            session.execute(select(AuditEvent).where(AuditEvent.request_id == request_id)).scalars()
        )


def refused(
    world: World,
    method: str,
    path: str,
    token: str | None,
    status: int,
    code: str,
    **kw: Any,
) -> dict[str, str]:
    """Make a request that must fail: the error, nothing changed, denials audited."""
    before = world.services.store.revision()
    response = world.call(method, path, token, **kw)
    error = assert_error(response, status, code)
    assert world.services.store.revision() == before, f"{method} {path} changed the store"
    events = [(e.outcome, e.reason) for e in events_of(world, response)]
    if status in (401, 403):
        assert events == [("denied", code)], (method, path, events)
    else:
        assert ("ok", "") not in events, (method, path, events)
    return error


# -- names ------------------------------------------------------------------------------------


def test_invalid_org_slugs(world: World) -> None:
    for slug in (
        "A",
        "Acme2",
        "-acme",
        "acme-",
        "ac me",
        "acme_corp",
        "a",
        "",
        "x" * 64,
        "ünïcode",
        "acme.corp",
    ):
        error = refused(
            world,
            "POST",
            "/v1/orgs",
            world.tokens["acme.admin"],
            400,
            "invalid_request",
            json={"slug": slug},
        )
        assert "slug" in error["message"], (slug, error)


def test_org_body_problems_and_duplicates(world: World) -> None:
    token = world.tokens["acme.admin"]
    for body in (
        {},
        {"slug": 42},
        {"slug": "fine-org", "name": "x" * 201},
        {"slug": "fine-org", "name": "bell\x07"},
    ):
        refused(world, "POST", "/v1/orgs", token, 400, "invalid_request", json=body)
    for slug in ("acme", "globex"):  # taken, by the caller's org or by another
        error = refused(world, "POST", "/v1/orgs", token, 409, "conflict", json={"slug": slug})
        assert "already exists" in error["message"] and error["hint"]


def test_invalid_app_names(world: World) -> None:
    cases = [
        ("api", "reserved"),
        ("www", "reserved"),
        ("Web", "invalid"),
        ("-web", "invalid"),
        ("web-", "invalid"),
        ("we b", "invalid"),
        ("w", "invalid"),
        ("", "invalid"),
        ("web.app", "invalid"),
        ("x" * 64, "63"),
    ]
    for name, says in cases:
        error = refused(
            world,
            "POST",
            NEW_APP,
            world.tokens["acme.admin"],
            400,
            "invalid_request",
            json={"name": name},
        )
        assert says in error["message"], (name, error)


def test_duplicate_app_names_and_bad_environments(world: World) -> None:
    token = world.tokens["acme.admin"]
    for name in ("acme-web", "globex-web"):  # app names are global
        error = refused(world, "POST", NEW_APP, token, 409, "conflict", json={"name": name})
        assert "taken" in error["message"]
    with world.services.store.read() as session:
        owner = session.execute(select(App.org_id).where(App.name == "globex-web")).scalar_one()
    assert owner == world.ids["globex.org"]
    for environment in ("staging", "", "Production", "prod"):
        error = refused(
            world,
            "POST",
            NEW_APP,
            token,
            400,
            "invalid_request",
            json={"name": "fresh-app", "environment": environment},
        )
        assert "environment" in error["message"] and "production" in error["hint"]


def test_bad_roles_and_emails_when_adding_a_member(world: World) -> None:
    token = world.tokens["acme.admin"]
    path = "/v1/orgs/acme/members"
    for role in ("owner", "Admin", "", "platform_admin"):
        error = refused(
            world,
            "POST",
            path,
            token,
            400,
            "invalid_request",
            json={"email": "new@acme.test", "role": role},
        )
        assert "role" in error["message"] and "admin, member" in error["hint"]
    for email in ("not-an-email", "a b@acme.test", "@acme.test", "new@", "x" * 321 + "@a.test"):
        error = refused(world, "POST", path, token, 400, "invalid_request", json={"email": email})
        assert "email" in error["message"]
    for email in ("member@acme.test", "MEMBER@acme.test", "admin@acme.test"):
        error = refused(world, "POST", path, token, 409, "conflict", json={"email": email})
        assert "already a member" in error["message"]


def test_bad_member_removals(world: World) -> None:
    token = world.tokens["acme.admin"]
    refused(world, "DELETE", "/v1/orgs/acme/members/not-an-email", token, 400, "invalid_request")
    for email in ("nobody@acme.test", "member@globex.test"):
        refused(world, "DELETE", f"/v1/orgs/acme/members/{email}", token, 404, "not_found")
    error = refused(
        world, "DELETE", "/v1/orgs/acme/members/admin@acme.test", token, 409, "conflict"
    )
    assert "last admin" in error["message"] and error["hint"]


def test_bad_token_requests(world: World) -> None:
    token = world.tokens["acme.admin"]
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/orgs/acme/tokens", {"type": "admin"}, "type"),
        ("/v1/orgs/acme/tokens", {"type": "session"}, "type"),
        ("/v1/orgs/acme/tokens", {"type": "deploy"}, "type"),  # deploy tokens name an app
        ("/v1/orgs/acme/tokens", {}, "type"),
        ("/v1/orgs/acme/tokens", {"type": "org", "expiry": "forever"}, "duration"),
        ("/v1/orgs/acme/tokens", {"type": "org", "expiry": "0s"}, "positive"),
        ("/v1/orgs/acme/tokens", {"type": "org", "expiry": "400d"}, "maximum"),
        ("/v1/orgs/acme/tokens", {"type": "org", "name": "nul\x00"}, "token name"),
        ("/v1/apps/acme-web/tokens", {"type": "org"}, "type"),
        ("/v1/apps/acme-web/tokens", {"type": "deploy", "machine": "mch_x"}, "machine"),
        ("/v1/apps/acme-web/tokens", {"type": "machine", "machine": "abc"}, "machine"),
    ]
    for path, body, says in cases:
        error = refused(world, "POST", path, token, 400, "invalid_request", json=body)
        assert says in error["message"], (body, error)


# -- unknown ids ------------------------------------------------------------------------------


def test_unknown_ids_are_not_found(world: World) -> None:
    token = world.tokens["acme.admin"]
    nobody_org, nobody_app = "org_" + "a" * 24, "app_" + "a" * 24
    cases: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/v1/orgs/nope", None),
        ("GET", f"/v1/orgs/{nobody_org}", None),
        ("GET", "/v1/orgs/nope/members", None),
        ("POST", "/v1/orgs/nope/members", {"email": "x@nope.test"}),
        ("POST", "/v1/orgs/nope/apps", {"name": "nope-app"}),
        ("POST", "/v1/orgs/nope/tokens", {"type": "org"}),
        ("GET", "/v1/orgs/nope/audit", None),
        ("GET", "/v1/apps/nope", None),
        ("GET", f"/v1/apps/{nobody_app}", None),
        ("DELETE", "/v1/apps/nope", None),
        ("POST", "/v1/apps/nope/tokens", {"type": "deploy"}),
        ("GET", "/v1/apps/nope/tokens", None),
        ("GET", "/v1/apps?org=nope", None),
        ("POST", "/v1/tokens/tok_" + "a" * 24 + "/revoke", None),
        ("POST", "/v1/tokens/no-such-block/revoke", None),
        ("GET", "/v1/no-such-route", None),
        ("DELETE", "/v1/no-such-route", None),
    ]
    for method, path, body in cases:
        error = refused(world, method, path, token, 404, "not_found", json=body)
        assert error["hint"], (path, error)


# -- tokens that are not usable ---------------------------------------------------------------


def test_requests_without_a_usable_token_are_401_and_audited(world: World) -> None:
    real = world.tokens["acme.admin"]
    middle = len(real) // 2
    flipped = real[:middle] + ("A" if real[middle] != "A" else "B") + real[middle + 1 :]
    cases: list[tuple[dict[str, str], str, str]] = [
        ({}, "unauthenticated", "no API token"),
        ({"authorization": "Basic dXNlcjpwYXNz"}, "unauthenticated", "no API token"),
        ({"authorization": "Bearer"}, "unauthenticated", "no API token"),
        ({"authorization": "Bearer garbage"}, "malformed", "not an aerodrome token"),
        ({"authorization": "Bearer ghp_abcdef0123456789"}, "malformed", "aero1_"),
        ({"authorization": "Bearer aero2_" + real[6:]}, "malformed", "aero1_"),
        ({"authorization": f"Bearer {flipped}"}, "malformed", "altered"),
        ({"authorization": f"Bearer {wire.encode(b'not a biscuit')}"}, "malformed", "biscuit"),
        ({"authorization": "Bearer aero1_" + "A" * 20000}, "malformed", "longer than"),
    ]
    for headers, code, says in cases:
        error = refused(
            world, "POST", NEW_APP, None, 401, code, json=NEW_APP_BODY, headers=dict(headers)
        )
        assert says in error["message"], (headers, error)
    with world.services.store.read() as session:
        actors = set(
            session.execute(
                select(AuditEvent.actor).where(AuditEvent.outcome == "denied")
            ).scalars()
        )
    assert actors == {"anonymous"}


def test_truncated_tokens_say_they_were_cut_short(world: World) -> None:
    real = world.tokens["acme.admin"]
    cuts = {
        real[:-1],
        real[:-6],
        real[:-7],
        real[: len(real) // 2],
        real[:12],
        "aero1_",
        "aero1",
        "aer",
    }
    for cut in sorted(cuts):
        error = refused(world, "POST", NEW_APP, cut, 401, "malformed", json=NEW_APP_BODY)
        assert "cut short" in error["message"], (cut, error)
        assert "copy the whole token" in error["hint"]


def _forged(tmp_path: Path, user_id: str) -> str:
    """A session token in the right format with a valid checksum, signed by a stranger."""
    stranger = RootKey.from_root(RootSecret.load(tmp_path / "stranger-root.key"))
    token = mint(stranger, Scope("session", user_id=user_id), new_id("tok")).token
    wire.decode(token)  # well-formed: only the signature can give it away
    return token


def test_forged_token_is_refused_and_changes_nothing(world: World, tmp_path: Path) -> None:
    forged = _forged(tmp_path, world.ids["acme.admin"])
    probe = world.call("GET", "/v1/auth/whoami", forged)
    assert probe.status_code == 401, probe.text
    code = probe.json()["error"]["code"]  # which reason is the next test's business
    assert code in UNAUTHENTICATED
    refused(world, "POST", NEW_APP, forged, 401, code, json=NEW_APP_BODY)
    admin = _forged(tmp_path, world.ids["platform.admin"])
    refused(world, "GET", "/v1/audit", admin, 401, code)


def test_forged_token_is_reported_as_invalid_signature(world: World, tmp_path: Path) -> None:
    forged = _forged(tmp_path, world.ids["acme.admin"])
    error = refused(world, "POST", NEW_APP, forged, 401, "invalid_signature", json=NEW_APP_BODY)
    assert "signature" in error["message"]


def test_expired_tokens(world: World) -> None:
    root = world.services.root
    long_ago = datetime.now(UTC) - timedelta(days=60)
    session_token = mint(
        root, Scope("session", user_id=world.ids["acme.admin"]), new_id("tok"), now=long_ago
    ).token
    org_token = mint(
        root, Scope("org", org_id=world.ids["acme.org"]), new_id("tok"), now=long_ago
    ).token
    narrowed = attenuate(
        world.tokens["acme.admin"],
        root.public,
        expiry=timedelta(minutes=5),
        now=datetime.now(UTC) - timedelta(hours=1),
    )
    for token in (session_token, org_token, narrowed):
        error = refused(world, "POST", NEW_APP, token, 401, "expired", json=NEW_APP_BODY)
        assert "expired at" in error["message"] and "new token" in error["hint"]
    assert world.call("GET", "/v1/orgs/acme", world.tokens["acme.admin"]).status_code == 200


def test_revoked_tokens(world: World) -> None:
    admin = world.tokens["acme.admin"]
    created = world.call("POST", "/v1/orgs/acme/tokens", admin, json={"type": "org"})
    assert created.status_code == 201, created.text
    org_token, token_id = created.json()["token"], created.json()["id"]
    assert world.call("GET", "/v1/orgs/acme", org_token).status_code == 200
    assert world.call("POST", f"/v1/tokens/{token_id}/revoke", admin).status_code == 200
    error = refused(world, "POST", NEW_APP, org_token, 401, "revoked", json=NEW_APP_BODY)
    assert token_id in error["message"] and "revoked" in error["message"]
    refused(world, "GET", "/v1/orgs/acme", org_token, 401, "revoked")
    error = refused(world, "POST", f"/v1/tokens/{token_id}/revoke", admin, 409, "conflict")
    assert "already revoked" in error["message"]

    # An attenuated child revokes its own block: it dies, its parent lives on.
    parent = world.tokens["acme.org"]
    child = attenuate(parent, world.services.root.public, apps=["acme-web"])
    block = inspect(child).blocks[-1].revocation_id
    assert world.call("GET", "/v1/apps/acme-web", child).status_code == 200
    response = world.call("POST", f"/v1/tokens/{block}/revoke", child)
    assert response.status_code == 200, response.text
    assert response.json()["revoked"]["scope"] == "attenuated block"
    error = refused(world, "GET", "/v1/apps/acme-web", child, 401, "revoked")
    assert "attenuated block" in error["message"]
    assert world.call("GET", "/v1/apps/acme-web", parent).status_code == 200

    # Destroying an app revokes the tokens scoped to it.
    assert world.call("DELETE", "/v1/apps/acme-web", admin).status_code == 200
    for name in ("acme.deploy", "acme.machine"):
        refused(world, "GET", "/v1/auth/whoami", world.tokens[name], 401, "revoked")


# -- bodies -----------------------------------------------------------------------------------

BODY_ROUTES = [
    "/v1/orgs",
    "/v1/orgs/acme/members",
    NEW_APP,
    "/v1/orgs/acme/tokens",
    "/v1/apps/acme-web/tokens",
    "/v1/tokens/{victim}/revoke",
]


def _victim(world: World) -> str:
    """A token the acme admin may revoke, so a body wrongly accepted would change the store."""
    response = world.call(
        "POST", "/v1/orgs/acme/tokens", world.tokens["acme.admin"], json={"type": "readonly"}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_oversized_bodies_are_413(world: World) -> None:
    victim = _victim(world)
    big = b'{"slug": "' + b"a" * MAX_BODY + b'"}'
    for route in BODY_ROUTES:
        path = route.format(victim=victim)
        for token in (world.tokens["acme.admin"], None):
            error = refused(
                world,
                "POST",
                path,
                token,
                413,
                "body_too_large",
                content=big,
                headers={"content-type": "application/json"},
            )
            assert str(MAX_BODY) in error["message"] and error["hint"]


def test_a_body_of_exactly_the_limit_is_accepted(world: World) -> None:
    document = b'{"slug": "edge-org"}'
    padded = document + b" " * (MAX_BODY - len(document))
    response = world.call(
        "POST",
        "/v1/orgs",
        world.tokens["acme.admin"],
        content=padded,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 201, response.text
    refused(
        world,
        "POST",
        "/v1/orgs",
        world.tokens["acme.admin"],
        413,
        "body_too_large",
        content=padded + b" ",
        headers={"content-type": "application/json"},
    )


def _chunks(total: int) -> Iterator[bytes]:
    yield b'{"slug": "'
    sent = 0
    while sent < total:
        yield b"a" * 65536
        sent += 65536
    yield b'"}'


def test_oversized_chunked_body_is_413(world: World) -> None:
    victim = _victim(world)
    for route in BODY_ROUTES:
        path = route.format(victim=victim)
        refused(
            world,
            "POST",
            path,
            world.tokens["acme.admin"],
            413,
            "body_too_large",
            content=_chunks(MAX_BODY + 1),
            headers={"content-type": "application/json"},
        )


def test_oversized_chunked_body_changes_nothing(world: World) -> None:
    """Whatever the status, a body cut off at the limit is never acted on."""
    victim = _victim(world)
    for route in BODY_ROUTES:
        path = route.format(victim=victim)
        before = world.services.store.revision()
        response = world.call(
            "POST",
            path,
            world.tokens["acme.admin"],
            content=_chunks(MAX_BODY + 1),
            headers={"content-type": "application/json"},
        )
        assert 400 <= response.status_code < 500, response.text
        assert_error(response, response.status_code, response.json()["error"]["code"])
        assert world.services.store.revision() == before


def test_non_json_bodies_are_400(world: World) -> None:
    victim = _victim(world)
    cases = [
        (b"not json", "application/json"),
        (b'{"slug": "half', "application/json"),
        (b"slug=new-org", "application/x-www-form-urlencoded"),
        (b"just text", "text/plain"),
        (b"[1, 2]", "application/json"),
        (b'"a string"', "application/json"),
        (b"42", "application/json"),
    ]
    for content, content_type in cases:
        for route in BODY_ROUTES:
            path = route.format(victim=victim)
            refused(
                world,
                "POST",
                path,
                world.tokens["acme.admin"],
                400,
                "invalid_request",
                content=content,
                headers={"content-type": content_type},
            )


def test_unknown_fields_are_400(world: World) -> None:
    victim = _victim(world)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/orgs", {"slug": "fine-org", "admin": True}, "admin"),
        (
            "/v1/orgs/acme/members",
            {"email": "new@acme.test", "platform_admin": True},
            "platform_admin",
        ),
        (NEW_APP, {"name": "fine-app", "org_id": world.ids["globex.org"]}, "org_id"),
        ("/v1/orgs/acme/tokens", {"type": "org", "org": "globex"}, "org"),
        ("/v1/apps/acme-web/tokens", {"type": "deploy", "app": "globex-web"}, "app"),
        (f"/v1/tokens/{victim}/revoke", {"token": None, "cascade": True}, "cascade"),
    ]
    for path, body, field in cases:
        error = refused(
            world, "POST", path, world.tokens["acme.admin"], 400, "invalid_request", json=body
        )
        assert field in error["message"], (path, error)


# -- methods and parameters -------------------------------------------------------------------


WRONG_METHODS: list[tuple[str, str, set[str]]] = [  # (method, path, what the path allows)
    ("PUT", "/v1/orgs/acme", {"GET"}),
    ("DELETE", "/v1/orgs/acme", {"GET"}),
    ("PATCH", "/v1/orgs/acme/members", {"GET", "POST"}),
    ("PUT", "/v1/orgs", {"GET", "POST"}),
    ("DELETE", "/v1/orgs", {"GET", "POST"}),
    ("PATCH", "/v1/apps/acme-web", {"GET", "DELETE"}),
    ("POST", "/v1/health", {"GET"}),
    ("DELETE", "/v1/tokens/public-key", {"GET"}),
    ("GET", "/v1/tokens/tok_x/revoke", {"POST"}),
    ("POST", "/v1/audit", {"GET"}),
]


def _allow(response: httpx.Response) -> set[str]:
    return {m.strip() for m in response.headers.get("allow", "").split(",") if m.strip()}


@pytest.mark.parametrize("token_name", ["acme.admin", None])
def test_wrong_methods_are_405(world: World, token_name: str | None) -> None:
    token = world.tokens[token_name] if token_name else None
    for method, path, _ in WRONG_METHODS:
        response = world.call(method, path, token, json={} if method != "GET" else None)
        error = assert_error(response, 405, "method_not_allowed")
        assert method in error["message"] and path in error["message"]
    assert world.call("GET", "/v1/apps/acme-web", world.tokens["acme.admin"]).status_code == 200


def test_405_names_a_method_that_is_allowed(world: World) -> None:
    for method, path, allowed in WRONG_METHODS:
        response = world.call(method, path, world.tokens["acme.admin"])
        assert response.status_code == 405
        assert _allow(response) and _allow(response) <= allowed, (path, response.headers)


def test_405_lists_every_allowed_method(world: World) -> None:
    for method, path, allowed in WRONG_METHODS:
        response = world.call(method, path, world.tokens["acme.admin"])
        assert response.status_code == 405
        assert _allow(response) == allowed, (path, response.headers)


def test_wrong_methods_change_nothing(world: World) -> None:
    for method, path in (
        ("PUT", "/v1/orgs/acme"),
        ("PATCH", "/v1/apps/acme-web"),
        ("PUT", "/v1/orgs/acme/members/member@acme.test"),
    ):
        refused(
            world,
            method,
            path,
            world.tokens["acme.admin"],
            405,
            "method_not_allowed",
            json={"slug": "renamed", "name": "renamed", "role": "admin"},
        )


def test_bad_query_parameters_are_400(world: World) -> None:
    token = world.tokens["platform.admin"]
    for query in ("limit=0", "limit=1001", "after=-1", "limit=lots"):
        error = refused(world, "GET", f"/v1/audit?{query}", token, 400, "invalid_request")
        assert query.split("=")[0] in error["message"]
    refused(world, "GET", "/v1/changes?limit=5001", token, 400, "invalid_request")
