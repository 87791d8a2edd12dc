"""Secrets through the API, as a user sees them, on SQLite and PostgreSQL.

Values go in and never come out: no response of any route carries one, and the audit log
holds names and digests only. The one way back to plaintext is `unseal_for_machine`, for a
machine credential of the app, and every refusal there is audited.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event, func, select

from aerodrome.api.authz import PUBLIC, declared
from aerodrome.api.routes.secrets import SecretsSet
from aerodrome.errors import AeroError
from aerodrome.platform import apps as app_rules
from aerodrome.platform import machines as machine_rules
from aerodrome.platform.secrets import MAX_TOTAL, MAX_VALUE
from aerodrome.secrets.machine import unseal_for_machine
from aerodrome.store.models import AuditEvent, Release, SecretVersion
from aerodrome.store.models import Machine as MachineRow
from aerodrome.tokens.mint import Scope
from aerodrome.tokens.verify import VerifiedToken
from tests.api.test_authz_matrix import (
    ROUTES,
    api_routes,
    app_of,
    as_payload,
    body_for,
    prepare,
)
from tests.api.test_bad_input import assert_error, events_of
from tests.conftest import World, mint_token

MACHINE = "mch_" + "a" * 24
SECRETS = "/v1/apps/acme-web/secrets"
DIGEST = re.compile(r"^[0-9a-f]{32}$")


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def listed(world: World, app: str = "acme-web") -> dict[str, dict[str, Any]]:
    rows = ok(world.call("GET", f"/v1/apps/{app}/secrets", world.tokens["acme.admin"]))
    for row in rows:
        assert set(row) == {"name", "digest", "version", "set_by", "updated_at", "status"}, row
    return {row["name"]: row for row in rows}


def releases(world: World, app: str = "acme-web") -> list[dict[str, Any]]:
    return list(ok(world.call("GET", f"/v1/apps/{app}/releases", world.tokens["acme.admin"])))


def run_machine(world: World, release: int, machine: str = MACHINE) -> None:
    """Put `machine` of acme-web on record running `release`, as the runtime does before it
    unseals: only a recorded machine unseals, and only its own release."""
    with world.services.store.write() as tx:
        row = tx.session.get(MachineRow, machine)
        if row is None:
            app = app_rules.get_app(tx.session, "acme-web")
            machine_rules.create_machine(tx, app, machine, release, "local")
        else:
            row.release = release


def unseal(world: World, release: int, app: str = "acme-web") -> dict[str, bytes]:
    run_machine(world, release)
    values = unseal_for_machine(world.services, world.tokens["acme.machine"], app, release, MACHINE)
    return {name: value.reveal() for name, value in values.items()}


def counts(world: World) -> tuple[int, int, int]:
    """(store revision, secret_versions rows, releases rows): what a refusal must not move."""
    with world.services.store.read() as session:
        versions = session.execute(select(func.count()).select_from(SecretVersion)).scalar_one()
        made = session.execute(select(func.count()).select_from(Release)).scalar_one()
    return world.services.store.revision(), versions, made


def refused(
    world: World, method: str, path: str, token: str, status: int, code: str, **kw: Any
) -> dict[str, str]:
    """A request that must fail with a clear error and change nothing; denials are audited."""
    before = counts(world)
    response = world.call(method, path, token, **kw)
    error = assert_error(response, status, code)
    assert counts(world) == before, f"{method} {path} changed something"
    events = [(e.outcome, e.reason) for e in events_of(world, response)]
    if status in (401, 403):
        assert events == [("denied", code)], (method, path, events)
    else:
        assert events == [], (method, path, events)
    return error


def forms(value: bytes) -> set[bytes]:
    """How a value could be spelled in a response: raw, base64 (both alphabets), hex."""
    return {
        value,
        base64.b64encode(value),
        base64.urlsafe_b64encode(value),
        binascii.hexlify(value),
        binascii.hexlify(value).upper(),
    }


def audit_text(world: World) -> bytes:
    """Every audit event, every column, as one blob to search."""
    columns = [column.name for column in AuditEvent.__table__.columns]
    with world.services.store.read() as session:
        rows = session.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars()
        return "\n".join(
            json.dumps({c: str(getattr(e, c)) for c in columns}) for e in rows
        ).encode()


# -- what a user sees ---------------------------------------------------------------------------


def test_set_list_deploy_unset_history_rollback(world: World) -> None:
    admin = world.tokens["acme.admin"]
    user = world.ids["acme.admin"]
    db1, key1, key2 = b"postgres://u:one@db/app", b"k-1", b"k-2"

    # set: sealed, deployed at once (release 1), one version each, digests only.
    body = ok(
        world.call(
            "POST",
            SECRETS,
            admin,
            json={"values": {"DATABASE_URL": db1.decode(), "API_KEY": key1.decode()}},
        )
    )
    assert [(s["name"], s["version"], s["changed"]) for s in body["secrets"]] == [
        ("API_KEY", 1, True),
        ("DATABASE_URL", 1, True),
    ]
    digests = {s["name"]: s["digest"] for s in body["secrets"]}
    assert all(DIGEST.match(d) for d in digests.values()) and len(set(digests.values())) == 2
    assert body["staged"] is False
    assert body["release"]["number"] == 1
    assert body["release"]["secrets"] == {"API_KEY": 1, "DATABASE_URL": 1}
    rows = listed(world)
    assert {n: (r["version"], r["status"], r["digest"]) for n, r in rows.items()} == {
        "API_KEY": (1, "deployed", digests["API_KEY"]),
        "DATABASE_URL": (1, "deployed", digests["DATABASE_URL"]),
    }
    assert {r["set_by"] for r in rows.values()} == {user}
    assert unseal(world, 1) == {"API_KEY": key1, "DATABASE_URL": db1}

    # the same value again: nothing changes, no release, no new version, no revision.
    before = counts(world)
    body = ok(world.call("POST", SECRETS, admin, json={"values": {"API_KEY": key1.decode()}}))
    assert body == {
        "secrets": [
            {"name": "API_KEY", "version": 1, "digest": digests["API_KEY"], "changed": False}
        ],
        "staged": False,
        "release": None,
    }
    assert counts(world) == before

    # stage a change: a new version, no release; the list says it is staged.
    body = ok(
        world.call(
            "POST", SECRETS, admin, json={"values": {"API_KEY": key2.decode()}, "stage": True}
        )
    )
    assert body["staged"] is True and body["release"] is None
    assert body["secrets"][0]["version"] == 2 and body["secrets"][0]["changed"] is True
    key2_digest = body["secrets"][0]["digest"]
    assert key2_digest != digests["API_KEY"]
    assert listed(world)["API_KEY"]["status"] == "staged"
    assert listed(world)["DATABASE_URL"]["status"] == "deployed"
    assert [r["number"] for r in releases(world)] == [1]

    # deploy: release 2 carries the current versions; a second deploy has nothing to do.
    body = ok(world.call("POST", f"{SECRETS}/deploy", admin))
    assert body["release"]["number"] == 2
    assert body["release"]["secrets"] == {"API_KEY": 2, "DATABASE_URL": 1}
    assert body["changes"] == {"API_KEY": {"from": 1, "to": 2}}
    assert {r["status"] for r in listed(world).values()} == {"deployed"}
    before = counts(world)
    assert ok(world.call("POST", f"{SECRETS}/deploy", admin)) == {"release": None, "changes": {}}
    assert counts(world) == before
    assert unseal(world, 2) == {"API_KEY": key2, "DATABASE_URL": db1}
    assert unseal(world, 1) == {"API_KEY": key1, "DATABASE_URL": db1}  # releases are pinned

    # unset, staged: still in the running release, listed as such, then deployed away.
    body = ok(
        world.call(
            "POST", f"{SECRETS}/unset", admin, json={"names": ["DATABASE_URL"], "stage": True}
        )
    )
    assert body == {"unset": ["DATABASE_URL"], "staged": True, "release": None}
    row = listed(world)["DATABASE_URL"]
    assert (row["status"], row["version"], row["digest"]) == (
        "unset (staged)",
        1,
        digests["DATABASE_URL"],
    )
    body = ok(world.call("POST", f"{SECRETS}/deploy", admin))
    assert body["release"]["number"] == 3 and body["release"]["secrets"] == {"API_KEY": 2}
    assert body["changes"] == {"DATABASE_URL": {"from": 1, "to": None}}
    assert set(listed(world)) == {"API_KEY"}
    assert unseal(world, 3) == {"API_KEY": key2}

    # history: every version, with its operation and digest, never a value.
    history = ok(world.call("GET", f"{SECRETS}/API_KEY/history", admin))
    assert [(h["version"], h["op"], h["digest"], h["size"]) for h in history] == [
        (1, "set", digests["API_KEY"], len(key1)),
        (2, "set", key2_digest, len(key2)),
    ]
    assert all(set(h) == {"version", "op", "digest", "set_by", "set_at", "size"} for h in history)
    history = ok(world.call("GET", f"{SECRETS}/DATABASE_URL/history", admin))
    assert [(h["version"], h["op"], h["digest"]) for h in history] == [
        (1, "set", digests["DATABASE_URL"]),
        (2, "unset", None),
    ]

    # rollback: a new version with the old value (same digest), released unless staged.
    body = ok(world.call("POST", f"{SECRETS}/API_KEY/rollback", admin, json={"to_version": 1}))
    assert body["secret"] == {
        "name": "API_KEY",
        "version": 3,
        "digest": digests["API_KEY"],
        "changed": True,
    }
    assert body["staged"] is False and body["release"]["secrets"] == {"API_KEY": 3}
    before = counts(world)
    body = ok(world.call("POST", f"{SECRETS}/API_KEY/rollback", admin, json={"to_version": 1}))
    assert body["secret"]["changed"] is False and body["release"] is None
    assert counts(world) == before
    body = ok(
        world.call(
            "POST", f"{SECRETS}/DATABASE_URL/rollback", admin, json={"to_version": 1, "stage": True}
        )
    )
    assert body["secret"]["version"] == 3 and body["staged"] is True and body["release"] is None
    assert listed(world)["DATABASE_URL"]["status"] == "staged"
    ok(world.call("POST", f"{SECRETS}/deploy", admin))
    rows = listed(world)
    assert {n: (r["version"], r["status"], r["digest"]) for n, r in rows.items()} == {
        "API_KEY": (3, "deployed", digests["API_KEY"]),
        "DATABASE_URL": (3, "deployed", digests["DATABASE_URL"]),
    }
    assert unseal(world, 5) == {"API_KEY": key1, "DATABASE_URL": db1}

    # releases: newest first, each with the versions it carries.
    assert [(r["number"], r["secrets"]) for r in releases(world)] == [
        (5, {"API_KEY": 3, "DATABASE_URL": 3}),
        (4, {"API_KEY": 3}),
        (3, {"API_KEY": 2}),
        (2, {"API_KEY": 2, "DATABASE_URL": 1}),
        (1, {"API_KEY": 1, "DATABASE_URL": 1}),
    ]
    assert releases(world, "acme-api") == []


def test_digests_are_keyed_per_app(world: World) -> None:
    admin = world.tokens["acme.admin"]
    same = {"values": {"TOKEN": "the same value", "OTHER": "another value"}}
    web = ok(world.call("POST", "/v1/apps/acme-web/secrets", admin, json=same))["secrets"]
    api = ok(world.call("POST", "/v1/apps/acme-api/secrets", admin, json=same))["secrets"]
    assert [s["name"] for s in web] == [s["name"] for s in api] == ["OTHER", "TOKEN"]
    for mine, theirs in zip(web, api, strict=True):
        assert DIGEST.match(mine["digest"]) and DIGEST.match(theirs["digest"])
        assert mine["digest"] != theirs["digest"]  # the same value, two apps
    assert web[0]["digest"] != web[1]["digest"]
    assert listed(world, "acme-web")["TOKEN"]["digest"] == web[1]["digest"]
    assert listed(world, "acme-api")["TOKEN"]["digest"] == api[1]["digest"]


def test_limits_at_the_boundary_are_accepted(world: World) -> None:
    admin = world.tokens["acme.admin"]
    name = "N" + "_" * 255  # 256 characters
    body = ok(world.call("POST", SECRETS, admin, json={"values": {name: "x" * MAX_VALUE}}))
    assert body["secrets"][0]["name"] == name
    assert ok(world.call("GET", f"{SECRETS}/{name}/history", admin))[0]["size"] == MAX_VALUE
    # Multi-byte characters count as their UTF-8 bytes.
    ok(world.call("POST", SECRETS, admin, json={"values": {"WIDE": "é" * (MAX_VALUE // 2)}}))
    refused(
        world,
        "POST",
        SECRETS,
        admin,
        413,
        "secret_too_large",
        json={"values": {"WIDE": "é" * (MAX_VALUE // 2) + "x"}},
    )
    # An app's secrets may total exactly 1 MiB.
    full = {f"PART_{i}": chr(ord("a") + i) * MAX_VALUE for i in range(MAX_TOTAL // MAX_VALUE)}
    api = "/v1/apps/acme-api/secrets"
    ok(world.call("POST", api, admin, json={"values": full}))
    error = refused(
        world, "POST", api, admin, 413, "secret_too_large", json={"values": {"ONE_MORE": "xyzw"}}
    )
    assert str(MAX_TOTAL) in error["message"] and error["hint"]
    # Replacing a value counts the new size only; unsetting frees room.
    ok(world.call("POST", api, admin, json={"values": {"PART_0": "small"}}))
    ok(world.call("POST", api, admin, json={"values": {"ONE_MORE": "xyzw"}}))
    ok(world.call("POST", f"{api}/unset", admin, json={"names": ["PART_1"]}))
    ok(world.call("POST", api, admin, json={"values": {"AGAIN": "z" * (MAX_VALUE - 10)}}))


def test_expect_version_is_a_check_and_set(world: World) -> None:
    admin = world.tokens["acme.admin"]

    def put(value: str, expect: int) -> httpx.Response:
        response: httpx.Response = world.call(
            "POST", SECRETS, admin, json={"values": {"LOCK": value}, "expect_version": expect}
        )
        return response

    assert ok(put("one", 0))["secrets"][0]["version"] == 1  # 0: must not exist yet
    for value, expect in (("two", 0), ("two", 2), ("one", 0), ("one", 5)):
        error = refused(
            world,
            "POST",
            SECRETS,
            admin,
            409,
            "conflict",
            json={"values": {"LOCK": value}, "expect_version": expect},
        )
        assert "LOCK is at version 1" in error["message"], error
    assert ok(put("two", 1))["secrets"][0]["version"] == 2
    refused(
        world,
        "POST",
        SECRETS,
        admin,
        409,
        "conflict",
        json={"values": {"LOCK": "three"}, "expect_version": 1},
    )
    assert ok(put("two", 2))["secrets"][0]["changed"] is False  # matches, and unchanged
    refused(
        world,
        "POST",
        SECRETS,
        admin,
        400,
        "invalid_request",
        json={"values": {"LOCK": "x", "OTHER": "y"}, "expect_version": 2},
    )
    ok(world.call("POST", f"{SECRETS}/unset", admin, json={"names": ["LOCK"]}))
    assert ok(put("back", 0))["secrets"][0]["version"] == 4  # unset: no longer exists
    assert listed(world)["LOCK"]["version"] == 4


# -- bad input: a clear error, and nothing changes ------------------------------------------------


def test_bad_input_is_refused_and_changes_nothing(world: World) -> None:
    admin = world.tokens["acme.admin"]
    ok(world.call("POST", SECRETS, admin, json={"values": {"KEPT": "kept value", "OLD": "v1"}}))
    ok(world.call("POST", f"{SECRETS}/unset", admin, json={"names": ["OLD"]}))
    canary = "canary-" + os.urandom(12).hex()

    for name in ("1ABC", "A-B", "", "A B", "A.B", "ÄPFEL", "A" * 257, "A=B", "$HOME"):
        error = refused(
            world,
            "POST",
            SECRETS,
            admin,
            400,
            "invalid_request",
            json={"values": {name: canary, "GOOD_NAME": canary}},
        )
        assert "invalid secret name" in error["message"] and error["hint"], (name, error)
        assert canary not in json.dumps(error)
    for name in ("1ABC", "A-B"):
        refused(
            world, "POST", f"{SECRETS}/unset", admin, 400, "invalid_request", json={"names": [name]}
        )
        refused(world, "GET", f"{SECRETS}/{name}/history", admin, 400, "invalid_request")

    error = refused(
        world,
        "POST",
        SECRETS,
        admin,
        413,
        "secret_too_large",
        json={"values": {"BIG": "x" * (MAX_VALUE + 1), "GOOD_NAME": canary}},
    )
    assert "BIG" in error["message"] and str(MAX_VALUE) in error["message"]
    error = refused(
        world,
        "POST",
        SECRETS,
        admin,
        400,
        "invalid_request",
        json={"values": {"GOOD_NAME": canary, "NUL": canary + "\x00tail"}},
    )
    assert "NUL" in error["message"] and canary not in json.dumps(error)
    malformed: list[dict[str, Any]] = [
        {"values": {}},
        {"values": {"A": 42}},
        {"values": {"A": None}},
        {"values": ["A", "B"]},
        {"values": {"A": "x"}, "extra": True},
        {"values": {"A": "x"}, "expect_version": -1},
        {"names": ["KEPT"]},
        {},
    ]
    for body in malformed:
        refused(world, "POST", SECRETS, admin, 400, "invalid_request", json=body)
    malformed = [{"names": []}, {"names": "KEPT"}, {}, {"names": ["KEPT"], "extra": 1}]
    for body in malformed:
        refused(world, "POST", f"{SECRETS}/unset", admin, 400, "invalid_request", json=body)
    malformed = [{"to_version": 0}, {"to_version": "one"}, {}]
    for body in malformed:
        refused(world, "POST", f"{SECRETS}/KEPT/rollback", admin, 400, "invalid_request", json=body)

    # Unknown apps, secrets and versions.
    missing: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/v1/apps/nope/secrets", None),
        ("POST", "/v1/apps/nope/secrets", {"values": {"A": canary}}),
        ("POST", "/v1/apps/nope/secrets/unset", {"names": ["A"]}),
        ("POST", "/v1/apps/nope/secrets/deploy", None),
        ("GET", "/v1/apps/nope/secrets/A/history", None),
        ("POST", "/v1/apps/nope/secrets/A/rollback", {"to_version": 1}),
        ("GET", "/v1/apps/nope/releases", None),
        ("POST", f"{SECRETS}/unset", {"names": ["MISSING"]}),
        ("POST", f"{SECRETS}/unset", {"names": ["KEPT", "MISSING"]}),  # all or nothing
        ("POST", f"{SECRETS}/unset", {"names": ["OLD"]}),  # already unset
        ("GET", f"{SECRETS}/MISSING/history", None),
        ("POST", f"{SECRETS}/MISSING/rollback", {"to_version": 1}),
        ("POST", f"{SECRETS}/KEPT/rollback", {"to_version": 2}),
    ]
    for method, path, payload in missing:
        refused(world, method, path, admin, 404, "not_found", json=payload)
    error = refused(
        world,
        "POST",
        f"{SECRETS}/OLD/rollback",
        admin,
        400,
        "invalid_request",
        json={"to_version": 2},
    )
    assert "unset" in error["message"]

    # Tokens that do not reach: another app's deploy token, read-only, a machine.
    writes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/secrets", {"values": {"KEPT": canary}}),
        ("POST", "/secrets/unset", {"names": ["KEPT"]}),
        ("POST", "/secrets/deploy", None),
        ("POST", "/secrets/KEPT/rollback", {"to_version": 1}),
    ]
    reads: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/secrets", None),
        ("GET", "/secrets/KEPT/history", None),
    ]
    for method, suffix, payload in writes + reads:
        for app in ("acme-api", "globex-web"):
            path = f"/v1/apps/{app}{suffix}"
            token = world.tokens["acme.deploy"]
            refused(world, method, path, token, 403, "wrong_app", json=payload)
        path = f"/v1/apps/acme-web{suffix}"
        token = world.tokens["acme.machine"]
        refused(world, method, path, token, 403, "wrong_machine", json=payload)
        token = world.tokens["globex.admin"]
        refused(world, method, path, token, 403, "wrong_org", json=payload)
    for method, suffix, payload in writes:
        path = f"/v1/apps/acme-web{suffix}"
        token = world.tokens["acme.readonly"]
        refused(world, method, path, token, 403, "action_not_allowed", json=payload)
    assert set(listed(world)) == {"KEPT"} and listed(world)["KEPT"]["version"] == 1
    assert canary.encode() not in audit_text(world)


def test_a_name_with_a_trailing_newline_is_refused(world: World) -> None:
    refused(
        world,
        "POST",
        SECRETS,
        world.tokens["acme.admin"],
        400,
        "invalid_request",
        json={"values": {"ABC\n": "value"}},
    )


def test_a_value_with_a_lone_surrogate_is_a_clear_error(world: World) -> None:
    refused(
        world,
        "POST",
        SECRETS,
        world.tokens["acme.admin"],
        400,
        "invalid_request",
        content=b'{"values": {"SURROGATE": "ab\\ud800cd"}}',
        headers={"content-type": "application/json"},
    )


# -- write-only ---------------------------------------------------------------------------------


@contextmanager
def recording(world: World) -> Iterator[list[httpx.Response]]:
    """Every response `world.call` returns while inside."""
    seen: list[httpx.Response] = []
    call = world.call

    def recorded(method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        response = call(method, path, token, **kw)
        seen.append(response)
        return response

    world.call = recorded  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        world.call = call  # type: ignore[method-assign]


def test_no_response_of_any_route_carries_a_value(world: World) -> None:
    admin, root = world.tokens["acme.admin"], world.tokens["platform.admin"]
    canary = "canary-" + os.urandom(16).hex()
    spellings = forms(canary.encode())
    with recording(world) as responses:
        # The canary goes in, in every way a request can carry it.
        ok(world.call("POST", SECRETS, admin, json={"values": {"CANARY": canary}}))
        ok(world.call("POST", SECRETS, admin, json={"values": {"CANARY": canary}}))  # unchanged
        ok(world.call("POST", SECRETS, admin, json={"values": {"COPY": canary}, "stage": True}))
        ok(world.call("POST", SECRETS, admin, json={"values": {"CANARY": "other"}}))
        ok(world.call("POST", f"{SECRETS}/CANARY/rollback", admin, json={"to_version": 1}))
        ok(world.call("POST", f"{SECRETS}/deploy", admin))
        for status, body in (
            (409, {"values": {"CANARY": canary + "x"}, "expect_version": 1}),
            (400, {"values": {"bad name": canary}}),
            (400, {"values": {"NUL": canary + "\x00"}}),
            (413, {"values": {"BIG": canary * (MAX_VALUE // len(canary) + 1)}}),
            (400, {"values": {"CANARY": canary}, "unknown": canary}),
            (400, {"values": {"CANARY": canary}, "expect_version": canary}),
        ):
            assert world.call("POST", SECRETS, admin, json=body).status_code == status, body
        assert (
            world.call(
                "POST", SECRETS, world.tokens["acme.readonly"], json={"values": {"X": canary}}
            ).status_code
            == 403
        )
        # Then every route of the API, each with a valid request.
        routes = api_routes(app_of(world))
        visited = set()
        order = {"GET": 0, "POST": 1, "PUT": 1, "DELETE": 2}
        for n, (method, template, _route) in enumerate(
            sorted(routes, key=lambda r: order[r[0]]), start=1000
        ):
            spec = ROUTES.get((method, template))
            token = root if spec is not None and str(spec.action).startswith("platform.") else admin
            app = "acme-api" if (method, template) == ("DELETE", "/v1/apps/{app}") else "acme-web"
            url = prepare(world, method, template, "acme", app, n)
            if template.endswith("/history"):
                url = f"{SECRETS}/CANARY/history"
            payload = as_payload(body_for(world, method, template, app, n))
            response = world.call(method, url, token, **payload)
            assert 200 <= response.status_code < 300, (method, url, response.text)
            visited.add((method, template))
        assert visited == {(m, t) for m, t, _ in routes}
        assert {(m, t) for m, t, r in routes if declared(r) != PUBLIC} == set(ROUTES)
        ok(world.call("GET", "/v1/audit", root))
        ok(world.call("GET", "/v1/orgs/acme/audit", admin))
    assert len(responses) > len(routes)
    for response in responses:
        blobs = [response.content] + [k + b": " + v for k, v in response.headers.raw]
        for blob in blobs:
            for spelling in spellings:
                assert spelling not in blob, (response.request.url, spelling)
    assert all(spelling not in audit_text(world) for spelling in spellings)
    assert unseal(world, 3) == {"CANARY": canary.encode(), "COPY": canary.encode()}


# -- the machine's way in -----------------------------------------------------------------------


def _token_id(world: World, token: str) -> str:
    parsed = world.services.verifier.parse(token)
    assert isinstance(parsed, VerifiedToken)
    return parsed.token_id


def _deployed(world: World) -> tuple[int, dict[str, bytes]]:
    values = {"DATABASE_URL": b"postgres://machine:pw@db/x", "TOKEN": "tök€n ✓".encode()}
    body = {"values": {k: v.decode() for k, v in values.items()}}
    release: int = ok(world.call("POST", SECRETS, world.tokens["acme.admin"], json=body))[
        "release"
    ]["number"]
    return release, values


def _assert_unseal_refused(
    world: World, token: str, app: str, machine: str, release: int, reason: str
) -> None:
    """Refused with `reason`, nothing changed, and exactly one `denied` event for it."""
    request_id = f"req_unseal_{os.urandom(6).hex()}"
    before = world.services.store.revision()
    with pytest.raises(AeroError) as caught:
        unseal_for_machine(world.services, token, app, release, machine, request_id=request_id)
    assert caught.value.code == reason, (reason, caught.value.code, caught.value.message)
    assert caught.value.status in (401, 403)
    assert world.services.store.revision() == before
    with world.services.store.read() as session:
        events = list(
            session.execute(select(AuditEvent).where(AuditEvent.request_id == request_id)).scalars()
        )
    assert [(e.outcome, e.reason, e.action) for e in events] == [
        ("denied", reason, "secrets.unseal")
    ], reason


def test_unseal_refuses_a_revoked_or_malformed_credential(world: World) -> None:
    release, values = _deployed(world)
    scope = Scope(
        "machine", org_id=world.ids["acme.org"], app_id=world.ids["acme-web"], machine_id=MACHINE
    )
    revoked = mint_token(world.services, scope)
    run_machine(world, release)
    assert unseal_for_machine(world.services, revoked, "acme-web", release, MACHINE)
    admin = world.tokens["acme.admin"]
    ok(world.call("POST", f"/v1/tokens/{_token_id(world, revoked)}/revoke", admin, json={}))
    _assert_unseal_refused(world, revoked, "acme-web", MACHINE, release, "revoked")
    _assert_unseal_refused(world, "aero1_not-a-token", "acme-web", MACHINE, release, "malformed")
    assert unseal(world, release) == values  # the machine's own token is unaffected


def _fail_fast_on_sqlite_locks(world: World) -> None:
    """SQLite waits 30 s for a lock held by the same thread before giving up: make that wait
    short, so the self-deadlock below shows as an error at once."""
    engine = world.services.store.engine
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _short_busy_timeout(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA busy_timeout=200")

    engine.dispose()


def test_unseal_refuses_other_machines_apps_and_token_kinds(world: World) -> None:
    _fail_fast_on_sqlite_locks(world)  # a refusal must not wait on its own read
    release, values = _deployed(world)
    run_machine(world, release)
    for token, app, machine, reason in (
        (world.tokens["acme.machine"], "acme-web", "mch_" + "b" * 24, "wrong_machine"),
        (world.tokens["acme.machine"], "acme-api", MACHINE, "wrong_app"),
        (world.tokens["globex.machine"], "acme-web", MACHINE, "wrong_app"),
        (world.tokens["acme.deploy"], "acme-web", MACHINE, "action_not_allowed"),
        (world.tokens["acme.org"], "acme-web", MACHINE, "action_not_allowed"),
        (world.tokens["acme.admin"], "acme-web", MACHINE, "action_not_allowed"),
        (world.tokens["platform.admin"], "acme-web", MACHINE, "action_not_allowed"),
    ):
        _assert_unseal_refused(world, token, app, machine, release, reason)
    assert unseal(world, release) == values


def test_unseal_for_machine_returns_the_deployed_values_across_key_rotation(
    world: World,
) -> None:
    release, values = _deployed(world)
    assert unseal(world, release) == values
    with pytest.raises(AeroError) as caught:
        unseal(world, release + 1)
    assert caught.value.code == "not_found"

    # The grant is audited: names and versions, never a value.
    with world.services.store.read() as session:
        grants = list(
            session.execute(
                select(AuditEvent).where(
                    AuditEvent.action == "secrets.unseal", AuditEvent.outcome == "ok"
                )
            ).scalars()
        )
    assert len(grants) == 1
    assert json.loads(grants[0].detail) == {
        "machine": MACHINE,
        "release": release,
        "secrets": {"DATABASE_URL": 1, "TOKEN": 1},
    }

    # Rotation (platform admins only) changes no value the machine gets.
    for name in sorted(world.tokens):
        if name == "platform.admin":
            continue
        for method, path, body in (
            ("GET", "/v1/keys", None),
            ("POST", "/v1/keys/rotate", None),
            ("POST", "/v1/keys/retire", {"below": 2}),
        ):
            response = world.call(method, path, world.tokens[name], json=body)
            assert response.status_code == 403, (name, path, response.text)
    root = world.tokens["platform.admin"]
    assert ok(world.call("POST", "/v1/keys/rotate", root)) == {"active_version": 2, "rewrapped": 2}
    assert unseal(world, release) == values
    keys = ok(world.call("GET", "/v1/keys", root))
    assert [(k["version"], k["state"], k["data_keys"]) for k in keys] == [
        (1, "decrypt-only", 0),
        (2, "active", 2),
    ]
    assert ok(world.call("POST", "/v1/keys/retire", root, json={"below": 2})) == {
        "retired": [1],
        "min_decryption_version": 2,
    }
    assert unseal(world, release) == values
    refused(world, "POST", "/v1/keys/retire", root, 400, "invalid_request", json={"below": 3})


def test_audit_events_name_and_digest_but_never_hold_a_value(world: World) -> None:
    admin, root = world.tokens["acme.admin"], world.tokens["platform.admin"]
    first, second = "first-" + os.urandom(8).hex(), "second-" + os.urandom(8).hex()
    set1 = ok(world.call("POST", SECRETS, admin, json={"values": {"AUDITED": first}}))
    set2 = ok(
        world.call("POST", SECRETS, admin, json={"values": {"AUDITED": second}, "stage": True})
    )
    ok(world.call("POST", f"{SECRETS}/deploy", admin))
    ok(world.call("POST", f"{SECRETS}/AUDITED/rollback", admin, json={"to_version": 1}))
    ok(world.call("POST", f"{SECRETS}/unset", admin, json={"names": ["AUDITED"]}))
    ok(world.call("POST", "/v1/keys/rotate", root))
    with world.services.store.read() as session:
        events = list(session.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars())
    by_action: dict[str, list[dict[str, Any]]] = {}
    for row in events:
        if row.outcome == "ok":
            by_action.setdefault(row.action, []).append(json.loads(row.detail))
    digest1, digest2 = set1["secrets"][0]["digest"], set2["secrets"][0]["digest"]
    assert by_action["secrets.set"][-2:] == [
        {"name": "AUDITED", "version": 1, "digest": digest1},
        {"name": "AUDITED", "version": 2, "digest": digest2},
    ]
    assert by_action["secrets.rollback"] == [
        {"name": "AUDITED", "version": 3, "from_version": 1, "digest": digest1}
    ]
    assert by_action["secrets.unset"] == [{"name": "AUDITED", "version": 4}]
    assert [d["secrets"] for d in by_action["release.create"]] == [
        {"AUDITED": 1},
        {"AUDITED": 2},
        {"AUDITED": 3},
        {},
    ]
    assert by_action["keys.rotate"] == [{"version": 2, "rewrapped": 3}]
    text = audit_text(world)
    for value in (first, second):
        for spelling in forms(value.encode()):
            assert spelling not in text


def test_the_request_model_keeps_values_out_of_repr_and_str() -> None:
    body = SecretsSet(values={"API_KEY": "hunter2-value"})
    for shown in (repr(body), str(body), f"{body}", f"{body!r}"):
        assert "hunter2-value" not in shown and "API_KEY" in shown


def test_a_value_typed_where_a_name_goes_is_not_echoed(world: World) -> None:
    response = world.call(
        "POST", SECRETS, world.tokens["acme.admin"], json={"values": {"pa55w0rd-value!": "x"}}
    )
    assert response.status_code == 400
    assert "pa55w0rd" not in response.text and "invalid secret name" in response.text


def test_setting_an_unchanged_value_leaves_an_audit_event(world: World) -> None:
    admin = world.tokens["acme.admin"]
    ok(world.call("POST", SECRETS, admin, json={"values": {"GUESSED": "v1-value"}}))
    with world.services.store.read() as session:
        before = session.query(AuditEvent).filter(AuditEvent.action == "secrets.set").count()
    again = ok(world.call("POST", SECRETS, admin, json={"values": {"GUESSED": "v1-value"}}))
    assert again["secrets"][0]["changed"] is False
    with world.services.store.read() as session:
        events = (
            session.query(AuditEvent)
            .filter(AuditEvent.action == "secrets.set")
            .order_by(AuditEvent.seq)
            .all()
        )
    assert len(events) == before + 1
    assert json.loads(events[-1].detail)["unchanged"] is True
    assert b"v1-value" not in audit_text(world)


def test_a_credential_whose_machine_is_not_on_record_unseals_nothing(world: World) -> None:
    release, values = _deployed(world)
    assert unseal(world, release) == values  # recorded: it unseals
    with world.services.store.write() as tx:
        machine_rules.destroy_machine(tx, MACHINE)  # the record goes; the credential lives on
    token = world.tokens["acme.machine"]
    _assert_unseal_refused(world, token, "acme-web", MACHINE, release, "unknown_machine")


def test_a_recorded_machine_unseals_only_the_release_it_runs(world: World) -> None:
    admin = world.tokens["acme.admin"]
    ok(world.call("POST", SECRETS, admin, json={"values": {"ROTATED": "old-value-1"}}))
    ok(world.call("POST", SECRETS, admin, json={"values": {"ROTATED": "new-value-2"}}))
    old, new = sorted(r["number"] for r in releases(world))[-2:]
    assert unseal(world, new)["ROTATED"] == b"new-value-2"
    with pytest.raises(AeroError) as refused:
        token = world.tokens["acme.machine"]
        unseal_for_machine(world.services, token, "acme-web", old, MACHINE)  # rotated out
    assert refused.value.code == "wrong_release"
    with world.services.store.read() as session:
        last = session.query(AuditEvent).order_by(AuditEvent.seq.desc()).first()
    assert last is not None and (last.action, last.outcome, last.reason) == (
        "secrets.unseal",
        "denied",
        "wrong_release",
    )
