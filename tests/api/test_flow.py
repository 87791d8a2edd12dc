"""The main path through the API, on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.conftest import World


def test_deploy_token_is_refused_on_another_app_with_reason(world: World) -> None:
    token = world.tokens["acme.deploy"]
    assert world.call("GET", "/v1/apps/acme-web", token).status_code == 200
    response = world.call("GET", "/v1/apps/acme-api", token)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "wrong_app"
    assert "acme-api" in response.json()["error"]["message"]


def test_every_response_carries_a_request_id(world: World) -> None:
    response = world.call("GET", "/v1/health")
    assert response.headers["aero-request-id"].startswith("req_")
