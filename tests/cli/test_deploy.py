"""`aero deploy` as a user runs it: validate, package (never .env), upload, release."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from aerodrome.cli.client import Client
from aerodrome.errors import AeroError
from aerodrome.runtime.artifact import app_artifacts, stored_artifact
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
    app_id = platform.aero_json("apps", "show", "deploy-web")["id"]
    stored = stored_artifact(app_artifacts(platform.data_dir, app_id), digest)
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


def test_a_deployed_app_is_served_over_https_with_its_secret(
    platform: Platform, tmp_path: Path
) -> None:
    platform.aero("orgs", "create", "live-org")
    platform.aero("apps", "create", "live-web", "--org", "live-org")
    platform.aero("secrets", "set", "-a", "live-web", "API_KEY=-", stdin="k3y-for-live-web")
    source = tmp_path / "live"
    source.mkdir()
    (source / "server.py").write_text(
        "import http.server, json, os\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        body = json.dumps({'greeting': os.environ['GREETING'],\n"
        "                           'key_length': len(os.environ['API_KEY'])}).encode()\n"
        "        self.send_response(200); self.send_header('content-length', str(len(body)))\n"
        "        self.end_headers(); self.wfile.write(body)\n"
        "http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n"
    )
    (source / "aerodrome.toml").write_text(
        TOML.replace("deploy-web", "live-web").replace(
            'app = "python3 -m http.server $PORT"', 'app = "python3 server.py"'
        )
    )
    platform.aero("deploy", "-c", str(source / "aerodrome.toml"))
    served = poll_app(platform, "live-web.localhost", lambda body: "greeting" in body)
    assert json.loads(served) == {"greeting": "hello", "key_length": len("k3y-for-live-web")}
    # A new secret value rolls the machine; `secrets set` returns once the app sees it.
    result = platform.aero(
        "secrets", "set", "-a", "live-web", "API_KEY=-", stdin="a-longer-key-value-now"
    )
    assert "restarts its machines one at a time" in result.stdout
    assert "is serving on 1 machine(s)" in result.stdout
    served = poll_app(platform, "live-web.localhost", lambda body: True)  # the first answer
    assert json.loads(served)["key_length"] == len("a-longer-key-value-now")
    # So does rolling the value back: it waits for the machines too, or says where to look.
    back = platform.aero("secrets", "rollback", "API_KEY", "-a", "live-web", "--to-version", "1")
    assert "is serving on 1 machine(s)" in back.stdout
    served = poll_app(platform, "live-web.localhost", lambda body: True)
    assert json.loads(served)["key_length"] == len("k3y-for-live-web")
    detached = platform.aero_json(
        "secrets", "rollback", "API_KEY", "-a", "live-web", "--to-version", "2", "--detach"
    )
    assert detached["secret"]["changed"] and "rollout" not in detached
    shown = platform.aero(
        "secrets", "set", "-a", "live-web", "API_KEY=-", "--detach", stdin="third-value"
    ).stdout
    assert "restarts its machines one at a time; follow it with `aero releases show" in shown
    assert "next start" not in shown


def poll_app(platform: Platform, name: str, ready: Callable[[str], bool]) -> str:
    """GET https://NAME/ through the edge with curl until `ready` (60 s at most); the last body."""
    https_port = httpx.URL(platform.env["AERO_API_URL"]).port
    deadline = time.monotonic() + 60
    body = ""
    while time.monotonic() < deadline:
        result = subprocess.run(
            ["curl", "-sS", "--cacert", platform.env["AERO_CA_BUNDLE"], "--resolve",
             f"{name}:{https_port}:127.0.0.1", f"https://{name}:{https_port}/"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        body = result.stdout
        if result.returncode == 0 and ready(body):
            break
        time.sleep(0.5)
    return body


def test_an_upload_without_a_token_is_refused_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AERO_API_TOKEN", raising=False)
    artifact = tmp_path / "a.tar.gz"
    artifact.write_bytes(b"\x1f\x8b")
    api = Client(url="http://127.0.0.1:9")  # nothing listens: a request would say unreachable
    with pytest.raises(AeroError) as refused:
        api.upload("/v1/apps/x/artifacts/sha256:00", artifact)
    assert refused.value.code == "unauthenticated" and "AERO_API_TOKEN" in refused.value.hint
