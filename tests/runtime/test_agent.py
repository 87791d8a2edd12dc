"""The agent rolls a release out: a machine from the artifact with its secrets, healthy, then
the app's upstream; a release that never gets healthy leaves the previous one serving."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from sqlalchemy import select

from aerodrome.platform import apps as app_rules
from aerodrome.platform import orgs as org_rules
from aerodrome.platform import secrets as release_rules
from aerodrome.runtime.agent import Agent
from aerodrome.runtime.artifact import build_artifact, store_artifact
from aerodrome.secrets.values import SecretValue
from aerodrome.services import Services
from aerodrome.store.models import App, Upstream

SERVER = """\
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        pages = {"/healthz": "ok",
                 "/": os.environ["GREETING"] + ":" + str(len(os.environ["API_KEY"]))}
        body = pages.get(self.path, "no such page").encode()
        self.send_response(200 if self.path in pages else 404)
        self.send_header("content-length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): print("request", self.path, os.environ["API_KEY"], flush=True)
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def release(services: Services, tmp_path: Path, name: str, check_path: str) -> int:
    source = tmp_path / name
    source.mkdir()
    (source / "server.py").write_text(SERVER)
    config = f"""app = "web"
[env]
GREETING = "hello"
[processes]
app = "python3 server.py"
[http_service]
internal_port = 8080
[[http_service.checks]]
path = "{check_path}"
interval = "1s"
timeout = "1s"
grace_period = "1s"
"""
    artifact = build_artifact(source)
    store_artifact(artifact, services.settings.data_dir / "artifacts")
    artifact.discard()
    with services.store.write() as tx:
        app = tx.session.execute(select(App).where(App.name == "web")).scalar_one()
        return release_rules.create_release(
            tx, app, "deploy", artifact=artifact.digest, config=config
        ).number


def test_the_agent_rolls_out_and_keeps_the_old_release_on_a_bad_one(
    services: Services, tmp_path: Path
) -> None:
    secret = "s3cret-value-for-the-app"
    with services.store.write() as tx:
        admin = org_rules.get_or_create_user(tx, "a@example.com")
        org = org_rules.create_org(tx, "acme", None, admin)
        app = app_rules.create_app(tx, org, "web", "production", admin.id)
        release_rules.set_secrets(
            tx,
            services.keyring(tx.session),
            services.digester,
            app,
            {"API_KEY": SecretValue(secret.encode())},
        )
    first = release(services, tmp_path, "v1", "/healthz")
    agent = Agent(services)

    def upstreams() -> list[str]:
        with services.store.read() as session:
            return [u.address for u in session.execute(select(Upstream)).scalars()]

    async def scenario() -> None:
        await agent.converge()
        running = agent.running[app.id]
        assert running.release == first
        assert upstreams() == [f"127.0.0.1:{running.port}"]
        async with httpx.AsyncClient() as client:
            seen = (await client.get(f"http://127.0.0.1:{running.port}/")).text
        assert seen == f"hello:{len(secret)}"  # the app sees its secret and its [env]
        bad = release(services, tmp_path, "v2", "/never")  # its check never passes
        await agent.converge()
        assert agent.running[app.id].release == first and agent.abandoned[app.id] == bad
        assert upstreams() == [f"127.0.0.1:{running.port}"]  # the old machine still serves
        await agent.shutdown()

    asyncio.run(scenario())
    logged = "\n".join(line.message for line in agent.logs.read(app.id))
    assert "request /" in logged and secret not in logged and "[REDACTED]" in logged
