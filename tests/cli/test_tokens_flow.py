"""The issue's acceptance path, as a user runs it: `aero up`, then the CLI against it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.cli.conftest import Platform


def test_deploy_token_lifecycle(platform: Platform) -> None:
    platform.aero("orgs", "create", "flow-org")
    platform.aero("apps", "create", "flow-web", "--org", "flow-org")
    platform.aero("apps", "create", "flow-other", "--org", "flow-org")

    created = platform.aero("tokens", "create", "deploy", "-a", "flow-web", "--expiry", "48h")
    deploy = created.stdout.strip()
    assert deploy.startswith("aero1_") and "\n" not in deploy
    assert "expires" in created.stderr and "in 1d23h" in created.stderr

    # Refused on another app, with the reason.
    refused = platform.aero("apps", "show", "flow-other", token=deploy, check=False)
    assert refused.returncode == 1
    assert "wrong_app" in refused.stderr
    assert platform.aero_json("apps", "show", "flow-web", token=deploy)["name"] == "flow-web"

    # Attenuate offline: no server involved (the API URL points nowhere).
    offline = {"AERO_API_URL": "http://127.0.0.1:9", "AERO_API_TOKEN": ""}
    child = platform.aero(
        "tokens",
        "attenuate",
        "--actions",
        "apps.read",
        "--expiry",
        "1h",
        stdin=deploy,
        extra_env=offline,
    ).stdout.strip()
    assert child != deploy
    info = platform.aero_json("tokens", "inspect", "--token", child, extra_env=offline)
    assert len(info["blocks"]) == 2
    assert info["blocks"][1]["restrictions"]["actions"] == ["apps.read"]
    child_block = info["blocks"][1]["revocation_id"]

    # The server honours the attenuation.
    assert platform.aero_json("apps", "show", "flow-web", token=child)["name"] == "flow-web"
    narrowed = platform.aero("tokens", "list", "-a", "flow-web", token=child, check=False)
    assert narrowed.returncode == 1 and "action_not_allowed" in narrowed.stderr

    # Revoke the child alone: the parent keeps working.
    platform.aero("tokens", "revoke", child_block, "--from-token", child)
    gone = platform.aero("apps", "show", "flow-web", token=child, check=False)
    assert gone.returncode == 1 and "revoked" in gone.stderr
    assert platform.aero_json("apps", "show", "flow-web", token=deploy)["name"] == "flow-web"

    listed = platform.aero_json("tokens", "list", "-a", "flow-web")
    assert [t["type"] for t in listed] == ["deploy"]
    assert listed[0]["revoked_at"] is None and listed[0]["scope"] == "app flow-web"

    # Revoking the parent by id kills it.
    platform.aero("tokens", "revoke", listed[0]["id"])
    assert platform.aero("apps", "show", "flow-web", token=deploy, check=False).returncode == 1
    assert platform.aero_json("tokens", "list", "-a", "flow-web")[0]["revoked_at"] is not None


def test_truncated_token_is_told_apart(platform: Platform) -> None:
    token = platform.env["AERO_API_TOKEN"]
    cut = platform.aero("auth", "whoami", token=token[: len(token) // 2], check=False)
    assert cut.returncode == 1
    assert "malformed" in cut.stderr and "cut short" in cut.stderr


def test_every_command_speaks_json_and_fails_in_one_line(platform: Platform) -> None:
    assert platform.aero_json("auth", "whoami")["user"]["email"] == "admin@localhost"
    assert isinstance(platform.aero_json("orgs", "list"), list)
    failed = platform.aero("orgs", "show", "no-such-org", check=False)
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[0].startswith("error (not_found):")
    as_json = platform.aero("orgs", "show", "no-such-org", "--json", check=False)
    assert as_json.returncode == 1 and '"code": "not_found"' in as_json.stdout


def test_audit_verify_clean_then_fails_on_a_tampered_copy(
    platform: Platform, tmp_path: Path
) -> None:
    assert "audit log OK" in platform.aero("audit", "verify").stdout
    copy = tmp_path / "copy.db"
    with (
        sqlite3.connect(platform.data_dir / "aerodrome.db") as source,
        sqlite3.connect(copy) as dest,
    ):
        source.backup(dest)
    with sqlite3.connect(copy) as db:
        db.execute("UPDATE audit_events SET actor = 'usr_mallory' WHERE seq = 3")
    result = platform.aero(
        "audit",
        "verify",
        "--database-url",
        f"sqlite:///{copy}",
        "--data-dir",
        str(platform.data_dir),
        check=False,
    )
    assert result.returncode == 1
    assert "first bad event 3" in result.stderr


def test_secrets_of_the_platform_stay_private(platform: Platform) -> None:
    for path in (
        platform.data_dir / "aero.env",
        platform.data_dir / "keys" / "root.key",
        platform.data_dir / "aerodrome.db",
    ):
        assert path.stat().st_mode & 0o077 == 0, path
    env = (platform.data_dir / "aero.env").read_text()
    assert "AERO_API_URL=https://api.localhost:" in env and "AERO_API_TOKEN=aero1_" in env
    assert f"AERO_CA_BUNDLE={platform.data_dir / 'ca' / 'root.pem'}" in env
