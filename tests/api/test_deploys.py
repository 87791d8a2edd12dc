"""Deploys through the API: upload an artifact, then release it with its aerodrome.toml."""

from __future__ import annotations

from pathlib import Path

from aerodrome.ids import new_id
from aerodrome.platform import apps as app_rules
from aerodrome.platform import machines as machine_rules
from aerodrome.runtime.artifact import build_artifact
from aerodrome.tokens.attenuate import attenuate
from tests.conftest import World

CONFIG = """\
app = "acme-web"

[processes]
app = "python3 -m http.server $PORT"

[http_service]
internal_port = 8080
"""


def built(tmp_path: Path) -> tuple[str, bytes]:
    source = tmp_path / "src"
    source.mkdir()
    (source / "main.py").write_text("print('hello')\n")
    (source / ".env").write_text("SECRET=never-packaged\n")
    artifact = build_artifact(source)
    data = artifact.path.read_bytes()
    artifact.discard()
    return artifact.digest, data


def test_upload_then_deploy_creates_a_release_with_code_config_and_secrets(
    world: World, tmp_path: Path
) -> None:
    token = world.tokens["acme.deploy"]
    digest, data = built(tmp_path)
    assert world.call("GET", f"/v1/apps/acme-web/artifacts/{digest}", token).status_code == 404
    uploaded = world.call("PUT", f"/v1/apps/acme-web/artifacts/{digest}", token, content=data)
    assert uploaded.status_code == 201 and uploaded.json()["size"] == len(data)
    assert world.call("GET", f"/v1/apps/acme-web/artifacts/{digest}", token).status_code == 200
    world.call("POST", "/v1/apps/acme-web/secrets", token, json={"values": {"KEY": "v1"}})
    response = world.call(
        "POST", "/v1/apps/acme-web/deploys", token, json={"artifact": digest, "config": CONFIG}
    )
    assert response.status_code == 201, response.text
    release = response.json()
    assert release["artifact"] == digest and release["secrets"] == {"KEY": 1}
    # A secrets change later keeps the code and configuration of the release before it.
    world.call("POST", "/v1/apps/acme-web/secrets", token, json={"values": {"KEY": "v2"}})
    latest = world.call("GET", "/v1/apps/acme-web/releases", token).json()[0]
    assert latest["number"] == release["number"] + 1
    assert latest["artifact"] == digest and latest["secrets"] == {"KEY": 2}


def test_bad_deploys_are_refused_and_change_nothing(world: World, tmp_path: Path) -> None:
    token = world.tokens["acme.deploy"]
    digest, data = built(tmp_path)
    wrong = "sha256:" + "0" * 64
    mismatch = world.call("PUT", f"/v1/apps/acme-web/artifacts/{wrong}", token, content=data)
    assert (
        mismatch.status_code == 400
        and mismatch.json()["error"]["code"] == "artifact_digest_mismatch"
    )
    world.call("PUT", f"/v1/apps/acme-web/artifacts/{digest}", token, content=data)
    revision = world.services.store.revision()
    cases = [
        (
            {"artifact": digest, "config": CONFIG.replace("8080", "99999")},
            "aerodrome.toml:7: http_service.internal_port must be 1-65535",
        ),
        (
            {"artifact": digest, "config": CONFIG.replace('"acme-web"', '"acme-api"')},
            "aerodrome.toml is for app 'acme-api'",
        ),
        ({"artifact": wrong, "config": CONFIG}, "was not uploaded"),
        ({"artifact": "md5:abc", "config": CONFIG}, "invalid artifact digest"),
    ]
    for body, message in cases:
        response = world.call("POST", "/v1/apps/acme-web/deploys", token, json=body)
        assert response.status_code == 400 and message in response.json()["error"]["message"]
    assert world.services.store.revision() == revision
    other = world.call(
        "POST",
        "/v1/apps/acme-web/deploys",
        world.tokens["globex.deploy"],
        json={"artifact": digest, "config": CONFIG},
    )
    assert other.status_code == 403 and other.json()["error"]["code"] == "wrong_app"
    readonly = world.call(
        "PUT", f"/v1/apps/acme-web/artifacts/{digest}", world.tokens["acme.readonly"], content=data
    )
    assert readonly.status_code == 403


def test_an_apps_artifacts_are_its_own(world: World, tmp_path: Path) -> None:
    """Another app (here: of another org) can neither learn that an artifact exists nor
    deploy it by its digest; it must upload the code itself."""
    digest, data = built(tmp_path)
    acme = world.tokens["acme.deploy"]
    assert (
        world.call("PUT", f"/v1/apps/acme-web/artifacts/{digest}", acme, content=data).status_code
        == 201
    )
    globex = world.tokens["globex.deploy"]
    assert world.call("GET", f"/v1/apps/globex-web/artifacts/{digest}", globex).status_code == 404
    config = CONFIG.replace("acme-web", "globex-web")
    refused = world.call(
        "POST", "/v1/apps/globex-web/deploys", globex, json={"artifact": digest, "config": config}
    )
    assert refused.status_code == 400 and "was not uploaded" in refused.json()["error"]["message"]


def deployed(world: World, tmp_path: Path, *configs: str) -> list[int]:
    """Upload one artifact to acme-web and deploy it once per config; the release numbers."""
    token = world.tokens["acme.deploy"]
    digest, data = built(tmp_path)
    world.call("PUT", f"/v1/apps/acme-web/artifacts/{digest}", token, content=data)
    numbers = []
    for config in configs:
        body = {"artifact": digest, "config": config}
        made = world.call("POST", "/v1/apps/acme-web/deploys", token, json=body)
        assert made.status_code == 201, made.text
        numbers.append(made.json()["number"])
    return numbers


def test_a_release_lists_its_machines_only_to_who_may_read_machines(
    world: World, tmp_path: Path
) -> None:
    token = world.tokens["acme.deploy"]
    [number] = deployed(world, tmp_path, CONFIG)
    with world.services.store.write() as tx:
        app = app_rules.get_app(tx.session, "acme-web")
        machine_rules.create_machine(tx, app, new_id("mch"), number, "local")
    path = f"/v1/apps/acme-web/releases/{number}"
    assert len(world.call("GET", path, token).json()["machines"]) == 1
    apps_only = attenuate(token, world.services.root.public, actions=["apps.read"])
    shown = world.call("GET", path, apps_only)
    assert shown.status_code == 200 and shown.json()["machines"] is None
    assert shown.json()["number"] == number  # the release itself is apps.read

    config = world.call("GET", "/v1/apps/acme-web/config", apps_only).json()
    assert config["http_service"]["internal_port"] == 8080


def test_a_superseded_release_names_the_next_and_whether_it_carries_its_code(
    world: World, tmp_path: Path
) -> None:
    token = world.tokens["acme.deploy"]
    deployed(world, tmp_path, CONFIG, CONFIG.replace("8080", "8081"))  # before any rollout
    world.call("POST", "/v1/apps/acme-web/secrets", token, json={"values": {"K": "v"}})
    first, second = (
        world.call("GET", f"/v1/apps/acme-web/releases/{n}", token).json() for n in (1, 2)
    )
    assert first["status"] == second["status"] == "superseded"
    assert first["superseded_by"] == {"number": 2, "carries_code": False}  # another config
    assert second["superseded_by"] == {"number": 3, "carries_code": True}  # a secrets change
    third = world.call("GET", "/v1/apps/acme-web/releases/3", token).json()
    assert third["status"] == "pending" and "superseded_by" not in third
