"""`/v1/apps/{app}/certs`: add, list, show and remove custom hostnames; status only, never
key material; bad names get a clear 4xx and change nothing."""

from __future__ import annotations

from typing import Any

from aerodrome.certs import store as cert_store
from aerodrome.certs.manager import CertManager, local_ca
from aerodrome.platform import apps as app_rules
from tests.api.test_bad_input import refused
from tests.certs.conftest import DOMAIN
from tests.conftest import World

ADMIN = "acme.admin"
CERTS = "/v1/apps/acme-web/certs"
VIEW_KEYS = {
    "id",
    "hostname",
    "app",
    "kind",
    "issuer",
    "status",
    "reason",
    "serving",
    "not_before",
    "not_after",
    "renew_after",
    "serial",
    "fingerprint_sha256",
    "attempts",
    "next_attempt_at",
    "created_at",
    "updated_at",
}


def call(world: World, method: str, path: str, token: str = ADMIN, **kw: Any) -> Any:
    return world.call(method, path, world.tokens[token], **kw)


def no_key_material(text: str) -> None:
    for marker in ("PRIVATE KEY", "BEGIN CERTIFICATE", "key_ciphertext", "key_wrapped"):
        assert marker not in text, text


def test_add_list_show_remove(world: World) -> None:
    before = world.services.store.revision()
    response = call(world, "POST", CERTS, json={"hostname": "WWW.Example.COM."})
    assert response.status_code == 201, response.text
    created = response.json()
    assert set(created) == VIEW_KEYS
    assert created["hostname"] == "www.example.com", "lower case, no trailing dot"
    assert (created["kind"], created["issuer"], created["status"]) == ("custom", "local", "pending")
    assert created["serving"] is False and created["not_after"] is None
    assert world.services.store.revision() == before + 1
    # The manager issues it, and the app's own name.
    CertManager(world.services, local_ca(world.services), DOMAIN).run_once()
    listed = call(world, "GET", CERTS).json()
    assert [(c["hostname"], c["kind"], c["status"]) for c in listed] == [
        ("acme-web.aero.test", "app", "issued"),
        ("www.example.com", "custom", "issued"),
    ]
    shown = call(world, "GET", f"{CERTS}/www.example.com")
    assert shown.status_code == 200
    data = shown.json()
    assert data["serving"] is True and data["not_after"] and data["reason"] == ""
    assert len(data["fingerprint_sha256"]) == 64
    for response in (shown, call(world, "GET", CERTS)):
        no_key_material(response.text)
    # A member may read and write certificates; a read-only token may read only.
    assert call(world, "GET", CERTS, token="acme.readonly").status_code == 200
    refused(
        world,
        "POST",
        CERTS,
        world.tokens["acme.readonly"],
        403,
        "action_not_allowed",
        json={"hostname": "ro.example.com"},
    )
    removed = call(world, "DELETE", f"{CERTS}/www.example.com", token="acme.member")
    assert removed.status_code == 200, removed.text
    assert removed.json() == {"removed": "www.example.com", "app": "acme-web"}
    refused(world, "GET", f"{CERTS}/www.example.com", world.tokens[ADMIN], 404, "not_found")
    with world.services.store.read() as session:
        served = cert_store.load_edge_certificates(session, world.services.keyring(session))
    assert "www.example.com" not in served and "acme-web.aero.test" in served


BAD_HOSTNAMES = [
    ("", "invalid_request"),
    ("localhost", "invalid_request"),
    ("*.example.com", "invalid_request"),
    ("127.0.0.1", "invalid_request"),
    ("::1", "invalid_request"),
    ("exa mple.com", "invalid_request"),
    ("-bad.example.com", "invalid_request"),
    ("bad-.example.com", "invalid_request"),
    ("under_score.example.com", "invalid_request"),
    ("a" * 64 + ".example.com", "invalid_request"),
    (".".join(["abcdefghi"] * 26) + ".com", "invalid_request"),  # 263 characters
    ("bücher.example", "invalid_request"),
    ("example.123", "invalid_request"),
    ("www..example.com", "invalid_request"),
    ("https://www.example.com", "invalid_request"),
    ("www.example.com/path", "invalid_request"),
    (DOMAIN, "reserved_hostname"),
    (f"api.{DOMAIN}", "reserved_hostname"),
    (f"acme-api.{DOMAIN}", "reserved_hostname"),  # another app's name
    (f"x.acme-api.{DOMAIN}", "reserved_hostname"),
    (f"globex-web.{DOMAIN}", "reserved_hostname"),  # another org's app
]
MALFORMED_BODIES: list[Any] = [
    {},
    {"hostname": 5},
    {"hostname": None},
    {"hostname": "a.example.com", "extra": 1},
    [],
]


def test_bad_hostnames_are_400_and_change_nothing(world: World) -> None:
    for hostname, code in BAD_HOSTNAMES:
        error = refused(
            world, "POST", CERTS, world.tokens[ADMIN], 400, code, json={"hostname": hostname}
        )
        assert error["hint"], hostname


def test_malformed_bodies_are_400(world: World) -> None:
    for body in MALFORMED_BODIES:
        refused(world, "POST", CERTS, world.tokens[ADMIN], 400, "invalid_request", json=body)


def test_duplicates_are_409_without_naming_the_other_app(world: World) -> None:
    assert call(world, "POST", CERTS, json={"hostname": "shop.example.com"}).status_code == 201
    again = refused(
        world,
        "POST",
        CERTS,
        world.tokens[ADMIN],
        409,
        "already_exists",
        json={"hostname": "shop.example.com"},
    )
    assert "acme-web already has" in again["message"]
    other = refused(
        world,
        "POST",
        "/v1/apps/globex-web/certs",
        world.tokens["globex.admin"],
        409,
        "hostname_taken",
        json={"hostname": "Shop.Example.com"},
    )
    assert "acme" not in other["message"] + other["hint"]
    # The app's own name is already covered; names below it are the app's to add.
    refused(
        world,
        "POST",
        CERTS,
        world.tokens[ADMIN],
        409,
        "already_exists",
        json={"hostname": f"acme-web.{DOMAIN}"},
    )
    below = call(world, "POST", CERTS, json={"hostname": f"www.acme-web.{DOMAIN}"})
    assert below.status_code == 201, below.text


def test_certificates_of_another_app_are_not_found_and_own_names_not_removable(
    world: World,
) -> None:
    assert call(world, "POST", CERTS, json={"hostname": "mine.example.com"}).status_code == 201
    refused(
        world,
        "GET",
        "/v1/apps/acme-api/certs/mine.example.com",
        world.tokens[ADMIN],
        404,
        "not_found",
    )
    refused(
        world,
        "DELETE",
        "/v1/apps/acme-api/certs/mine.example.com",
        world.tokens[ADMIN],
        404,
        "not_found",
    )
    refused(world, "GET", f"{CERTS}/not a name", world.tokens[ADMIN], 400, "invalid_request")
    CertManager(world.services, local_ca(world.services), DOMAIN).reconcile()
    error = refused(
        world,
        "DELETE",
        f"{CERTS}/acme-web.{DOMAIN}",
        world.tokens[ADMIN],
        400,
        "managed_certificate",
    )
    assert "goes away with the app" in error["hint"]


def test_an_app_has_at_most_a_hundred_custom_names(world: World) -> None:
    with world.services.store.write() as tx:
        app = app_rules.get_app(tx.session, "acme-web")
        for n in range(cert_store.MAX_CUSTOM_PER_APP):
            cert_store.add_custom(tx, app, f"n{n}.example.com", DOMAIN, "local")
    refused(
        world,
        "POST",
        CERTS,
        world.tokens[ADMIN],
        400,
        "too_many_hostnames",
        json={"hostname": "one-more.example.com"},
    )
