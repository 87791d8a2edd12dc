"""`aero deploy` as a user runs it: validate, package (never .env), upload, release."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

from tests.cli.conftest import Platform

TOML = """\
app = "deploy-web"

[env]
GREETING = "hello"

[processes]
app = "python3 -m http.server $PORT"

[http_service]
internal_port = 8080
"""


def test_deploy_packages_uploads_and_releases(platform: Platform, tmp_path: Path) -> None:
    platform.aero("orgs", "create", "deploy-org")
    platform.aero("apps", "create", "deploy-web", "--org", "deploy-org")
    source = tmp_path / "app"
    source.mkdir()
    (source / "aerodrome.toml").write_text(TOML)
    (source / "index.html").write_text("<h1>hi</h1>")
    (source / ".env").write_text("SECRET=do-not-ship\n")
    result = platform.aero_json("deploy", "-c", str(source / "aerodrome.toml"), "--detach")
    digest = result["artifact"]["digest"]
    assert result["release"]["artifact"] == digest and result["release"]["number"] == 1
    stored = platform.data_dir / "artifacts" / "sha256" / f"{digest.split(':')[1]}.tar.gz"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(stored.read_bytes()))) as tar:
        names = tar.getnames()
    assert "index.html" in names and "aerodrome.toml" in names and ".env" not in names
    releases = platform.aero_json("releases", "-a", "deploy-web")
    assert releases[0]["artifact"] == digest
    # The same tree again: the artifact is not uploaded twice, a new release is made.
    again = platform.aero_json("deploy", "-c", str(source / "aerodrome.toml"), "--detach")
    assert again["artifact"]["digest"] == digest and again["release"]["number"] == 2


def test_a_bad_config_deploys_nothing(platform: Platform, tmp_path: Path) -> None:
    source = tmp_path / "bad"
    source.mkdir()
    (source / "aerodrome.toml").write_text(
        TOML.replace("8080", "0").replace("deploy-web", "nope-x")
    )
    result = platform.aero("deploy", "-c", str(source / "aerodrome.toml"), check=False)
    assert result.returncode == 1
    assert "aerodrome.toml:10: http_service.internal_port must be 1-65535" in result.stderr
