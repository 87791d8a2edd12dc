"""An app's HTTP service settings and upstreams, through the API, as the edge compiles them."""

from __future__ import annotations

import pytest

from aerodrome.edge.routes import EdgeConfig
from aerodrome.edge.state import compile_routes
from aerodrome.errors import InvalidInput
from aerodrome.platform.http_service import parse_address, parse_http_service
from tests.conftest import World


def test_defaults_are_secure() -> None:
    service = parse_http_service({})
    assert service.force_https and service.hsts_max_age >= 31_536_000
    assert service.cors.origins == ()


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"force_https": "yes"}, "force_https"),
        ({"hsts": {"max_age": 3600}}, "hsts.max_age"),
        ({"concurrency": {"soft_limit": 10, "hard_limit": 5}}, "concurrency.hard_limit"),
        ({"cors": {"origins": ["example.com"]}}, "cors.origins"),
        ({"cors": {"origins": ["*"], "credentials": True}}, "cors.origins"),
        ({"cors": {"methods": ["FETCH"]}}, "cors.methods"),
        ({"corss": {}}, "corss"),
        ({"hsts": 5}, "hsts"),
        ({"concurrency": "many"}, "concurrency"),
        ({"cors": ["https://a.example"]}, "cors"),
        ({"cors": {"origins": "https://a.example"}}, "cors.origins"),
        ({"cors": {"methods": "GET"}}, "cors.methods"),
        ({"cors": {"headers": ["x-a\r\nset-cookie: a=b"]}}, "cors.headers"),
        ({"cors": {"headers": ["x a"]}}, "cors.headers"),
        ({"hsts": {"include_subdomains": "false"}}, "hsts.include_subdomains"),
    ],
)
def test_bad_settings_name_the_key(document: dict[str, object], key: str) -> None:
    with pytest.raises(InvalidInput) as error:
        parse_http_service(document)
    assert key in error.value.message


@pytest.mark.parametrize("address", ["localhost:80", "127.0.0.1", "127.0.0.1:0", "1.2.3:80"])
def test_upstream_addresses_are_ip_and_port(address: str) -> None:
    with pytest.raises(InvalidInput):
        parse_address(address)


def test_settings_and_upstreams_reach_the_route_table(world: World) -> None:
    token = world.tokens["acme.deploy"]
    cors = {"origins": ["https://ui.example"], "credentials": True}
    response = world.call(
        "PUT", "/v1/apps/acme-web/http-service", token, json={"force_https": False, "cors": cors}
    )
    assert response.status_code == 200
    assert (
        world.call(
            "POST", "/v1/apps/acme-web/upstreams", token, json={"address": "127.0.0.1:9001"}
        ).status_code
        == 201
    )
    again = world.call(
        "POST", "/v1/apps/acme-web/upstreams", token, json={"address": "127.0.0.1:9001"}
    )
    assert again.status_code == 409
    bad = world.call("PUT", "/v1/apps/acme-web/http-service", token, json={"hsts": {"max_age": 5}})
    assert bad.status_code == 400 and "hsts.max_age" in bad.json()["error"]["message"]
    # another app's deploy token cannot touch it
    refused = world.call(
        "POST",
        "/v1/apps/acme-web/upstreams",
        world.tokens["globex.deploy"],
        json={"address": "127.0.0.1:9002"},
    )
    assert refused.status_code == 403
    with world.services.store.read() as session:
        table = compile_routes(session, EdgeConfig(domain="example.test"))
    route = table.routes["acme-web.example.test"]
    assert route.upstreams == (("127.0.0.1", 9001),)
    assert route.service.force_https is False
    assert route.cors.origin_allowed(b"https://ui.example")
    assert route.cors.origin_allowed(b"https://acme-web.example.test:8443")  # its own origin
    assert not route.cors.origin_allowed(b"https://evil.example")
    assert "globex-web.example.test" in table.routes


def test_a_custom_domain_routes_to_the_app_that_claimed_it(world: World) -> None:
    admin = world.tokens["acme.admin"]
    assert world.call(
        "POST", "/v1/apps/acme-web/certs", admin, json={"hostname": "www.acme-shop.example"}
    ).status_code in (200, 201)
    with world.services.store.read() as session:
        table = compile_routes(session, EdgeConfig(domain="example.test"))
    route = table.routes["www.acme-shop.example"]
    assert route.app == "acme-web"
    assert route.cors.origin_allowed(b"https://www.acme-shop.example:8443")
