"""The agent rolls releases out as machines, keeps them healthy, and does what users ask.

Each test runs a real agent against a real store: machines are real processes serving HTTP on
loopback, with their secrets in the environment; what a user would see is asserted through the
store (release status, machines, the edge's upstreams) and the machines' own answers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from aerodrome.errors import NotFound
from aerodrome.platform import apps as app_rules
from aerodrome.platform import machines as machine_rules
from aerodrome.platform import orgs as org_rules
from aerodrome.platform import secrets as release_rules
from aerodrome.runtime import agent as agent_module
from aerodrome.runtime.agent import Agent, Running, free_port
from aerodrome.runtime.artifact import app_artifacts, build_artifact, store_artifact
from aerodrome.runtime.isolation import apps_table
from aerodrome.secrets.values import SecretValue
from aerodrome.services import Services
from aerodrome.store.models import App, Release, Token, Upstream
from aerodrome.store.models import Machine as MachineRow
from tests.runtime.conftest import process_alive

SERVER = """\
import http.server, os, pathlib, socket, sys
marker = os.environ.get("ONLY_ONE")
if marker:  # the second machine of this release refuses to start
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        sys.exit(3)
sick = os.environ.get("SICK_FILE")
if os.environ.get("SHOW_SELF"):  # who am I, from the machine-local API, and as which uid
    import json, socket
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.environ["AERO_API_SOCKET"])
    s.sendall(b"GET /v1/self HTTP/1.1\\r\\nHost: machine\\r\\nConnection: close\\r\\n\\r\\n")
    body = s.makefile("rb").read().split(b"\\r\\n\\r\\n", 1)[1]
    print("self", json.dumps(json.loads(body)), "uid", os.getuid(),
          "env", sorted(os.environ), flush=True)
side = os.environ.get("SIDE_PORT")
datagrams = []
if side:  # a second listener, besides $PORT (an admin or metrics port), and one for UDP
    import threading
    listener = socket.create_server(("127.0.0.1", int(side)))
    threading.Thread(
        target=lambda: [listener.accept()[0].close() for _ in iter(int, 1)], daemon=True
    ).start()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", int(side)))
    threading.Thread(
        target=lambda: [datagrams.append(udp.recv(100).decode()) for _ in iter(int, 1)],
        daemon=True,
    ).start()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz" and sick and pathlib.Path(sick).exists():
            self.send_response(500); self.end_headers(); return
        pages = {"/healthz": "ok", "/pid": str(os.getpid()),
                 "/": os.environ["GREETING"] + ":" + str(len(os.environ["API_KEY"]))}
        if self.path.startswith("/probe/"):  # open a connection to a port on this host
            try:
                socket.create_connection(("127.0.0.1", int(self.path[7:])), timeout=3).close()
                pages[self.path] = "open"
            except OSError as e:
                pages[self.path] = type(e).__name__
        if self.path.startswith("/udp/"):  # send a datagram to a port on this host
            port, _, text = self.path[5:].partition("/")
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
                text.encode(), ("127.0.0.1", int(port)))
            pages[self.path] = "sent"
        pages["/datagrams"] = ",".join(datagrams)
        if self.path.startswith("/environ/"):  # another process's environment, if it may
            try:
                pages[self.path] = str(len(open("/proc/" + self.path[9:] + "/environ").read()))
            except OSError as e:
                pages[self.path] = type(e).__name__
        body = pages.get(self.path, "no such page").encode()
        self.send_response(200 if self.path in pages else 404)
        self.send_header("content-length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): print("request", self.path, os.environ["API_KEY"], flush=True)
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""
SECRET = "s3cret-value-for-the-app"
# The first test runs on both databases; the rest exercise the agent's logic, on SQLite.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def make_app(services: Services, name: str, org_slug: str = "acme") -> App:
    with services.store.write() as tx:
        admin = org_rules.get_or_create_user(tx, "a@example.com")
        try:
            org = org_rules.get_org(tx.session, org_slug)
        except NotFound:
            org = org_rules.create_org(tx, org_slug, None, admin)
        app = app_rules.create_app(tx, org, name, "production", admin.id)
        release_rules.set_secrets(
            tx,
            services.keyring(tx.session),
            services.digester,
            app,
            {"API_KEY": SecretValue(SECRET.encode())},
        )
    return app


@pytest.fixture
def web(services: Services) -> App:
    return make_app(services, "web")


@pytest.fixture
def shared(open_dir: Path) -> Path:
    """A directory the machines' unprivileged uid can write to (tmp_path is root's, 0700)."""
    path = open_dir / "shared"
    path.mkdir()
    path.chmod(0o777)
    return path


def release(
    services: Services,
    tmp_path: Path,
    check_path: str | None = "/healthz",
    *,
    machines: int = 1,
    strategy: str = "rolling",
    env: dict[str, str] | None = None,
    command: str = "python3 server.py",
    app_name: str = "web",
) -> int:
    source = tmp_path / f"src{time.monotonic_ns()}"
    source.mkdir()
    (source / "server.py").write_text(SERVER)
    extra = "".join(f'{k} = "{v}"\n' for k, v in (env or {}).items())
    checks = (
        f'[[http_service.checks]]\npath = "{check_path}"\ninterval = "1s"\ntimeout = "1s"\n'
        'grace_period = "1s"\n'
        if check_path
        else ""
    )
    config = f"""app = "{app_name}"
kill_timeout = "2s"
[env]
GREETING = "hello"
{extra}
[processes]
app = "{command}"
[deploy]
strategy = "{strategy}"
machines = {machines}
[http_service]
internal_port = 8080
{checks}"""
    artifact = build_artifact(source)
    with services.store.write() as tx:
        app = tx.session.execute(select(App).where(App.name == app_name)).scalar_one()
        store_artifact(artifact, app_artifacts(services.settings.data_dir, app.id))
        artifact.discard()
        return release_rules.create_release(
            tx, app, "deploy", artifact=artifact.digest, config=config
        ).number


def upstreams(services: Services) -> list[str]:
    with services.store.read() as session:
        return sorted(u.address for u in session.execute(select(Upstream)).scalars())


def live_credentials(services: Services) -> int:
    """Machine credentials not revoked."""
    with services.store.read() as session:
        rows = session.execute(select(Token).where(Token.kind == "machine")).scalars()
        return sum(1 for row in rows if row.revoked_at is None)


def machines(services: Services) -> list[MachineRow]:
    with services.store.read() as session:
        rows = list(session.execute(select(MachineRow).order_by(MachineRow.created_at)).scalars())
        session.expunge_all()
        return rows


def status(services: Services, number: int) -> tuple[str, str]:
    with services.store.read() as session:
        row = session.execute(select(Release).where(Release.number == number)).scalar_one()
        return row.status, row.status_reason


async def settle(agent: Agent) -> None:
    await agent.converge()
    await agent.idle()


async def settle_watching(agent: Agent, services: Services) -> list[tuple[int, int]]:
    """Settle the agent, sampling every 50 ms (machines alive, upstreams routed) meanwhile."""
    seen: list[tuple[int, int]] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            alive = sum(1 for r in agent.machines.values() if r.machine.running)
            seen.append((alive, len(upstreams(services))))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    await settle(agent)
    done.set()
    await watcher
    return seen


async def until(condition: Callable[[], Awaitable[bool]], agent: Agent, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await agent.converge()
        await agent.supervise()
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the agent did not get there in time")


async def get(address: str, path: str = "/") -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://{address}{path}")).text


def test_a_release_serves_with_its_secrets_and_a_bad_one_leaves_it_serving(
    services: Services, web: App, tmp_path: Path
) -> None:
    first = release(services, tmp_path)
    agent = Agent(services)

    async def scenario() -> None:
        await settle(agent)
        [running] = agent.of_app(web.id)
        assert running.release == first and status(services, first) == ("complete", "")
        assert upstreams(services) == [running.address]
        assert await get(running.address) == f"hello:{len(SECRET)}"  # its secret and [env]
        [row] = machines(services)
        assert (row.state, row.health, row.release) == ("started", "passing", first)

        bad = release(services, tmp_path, "/never")  # its check never passes
        await settle(agent)
        assert [r.release for r in agent.of_app(web.id)] == [first]
        state, reason = status(services, bad)
        assert state == "failed" and "check GET /never never passed (HTTP 404)" in reason
        assert upstreams(services) == [running.address]  # the old machine still serves
        assert [m.release for m in machines(services)] == [first]  # nothing half-deployed
        await settle(agent)  # a failed release is not retried
        assert [r.release for r in agent.of_app(web.id)] == [first]
        await agent.shutdown()

    asyncio.run(scenario())
    logged = "\n".join(line.message for line in agent.logs.read(web.id))
    assert "request /" in logged and SECRET not in logged and "[REDACTED]" in logged


@sqlite_only
def test_a_rolling_deploy_replaces_one_machine_at_a_time(
    services: Services, web: App, tmp_path: Path
) -> None:
    release(services, tmp_path, machines=3)
    agent = Agent(services)
    seen: list[tuple[int, int]] = []  # (machines alive, routed upstreams) while deploying

    async def scenario() -> None:
        await settle(agent)
        first = {r.machine_id for r in agent.of_app(web.id)}
        assert len(first) == 3 and len(upstreams(services)) == 3
        second = release(services, tmp_path, machines=3, env={"V": "2"})
        seen.extend(await settle_watching(agent, services))
        now = agent.of_app(web.id)
        assert {r.release for r in now} == {second} and not first & {r.machine_id for r in now}
        assert upstreams(services) == sorted(r.address for r in now)
        await agent.shutdown()

    asyncio.run(scenario())
    assert max(alive for alive, _ in seen) == 4  # one new machine at a time, never all at once
    assert min(routed for _, routed in seen) >= 2  # at most one machine out of the route table


@sqlite_only
def test_an_immediate_deploy_starts_every_machine_before_stopping_any_but_not_for_secrets(
    services: Services, web: App, tmp_path: Path
) -> None:
    release(services, tmp_path, machines=2, strategy="immediate")
    agent = Agent(services)

    async def scenario() -> None:
        await settle(agent)
        release(services, tmp_path, machines=2, strategy="immediate", env={"V": "2"})
        seen = await settle_watching(agent, services)
        assert len(agent.of_app(web.id)) == 2 and len(upstreams(services)) == 2
        assert max(alive for alive, _ in seen) == 4
        # A secrets change restarts them one at a time, even with `immediate`.
        with services.store.write() as tx:
            app = tx.session.merge(web)
            release_rules.set_secrets(
                tx, services.keyring(tx.session), services.digester, app,
                {"API_KEY": SecretValue(b"rotated-value")},
            )  # fmt: skip
            release_rules.create_release(tx, app, "secrets set")
        seen = await settle_watching(agent, services)
        assert max(alive for alive, _ in seen) == 3 and len(agent.of_app(web.id)) == 2
        for running in agent.of_app(web.id):
            assert await get(running.address) == f"hello:{len(b'rotated-value')}"
        await agent.shutdown()

    asyncio.run(scenario())


@sqlite_only
def test_a_deploy_that_fails_on_its_second_machine_rolls_back_by_itself(
    services: Services, web: App, tmp_path: Path, shared: Path
) -> None:
    first = release(services, tmp_path, machines=2)
    agent = Agent(services)

    async def scenario() -> None:
        await settle(agent)
        bad = release(services, tmp_path, machines=2, env={"ONLY_ONE": str(shared / "once")})
        await settle(agent)
        assert status(services, bad)[0] == "failed"
        assert "exited with code 3" in status(services, bad)[1]
        assert sorted(r.release for r in agent.of_app(web.id)) == [first, first]
        assert sorted(m.release for m in machines(services)) == [first, first]
        assert upstreams(services) == sorted(r.address for r in agent.of_app(web.id))
        for running in agent.of_app(web.id):
            assert await get(running.address) == f"hello:{len(SECRET)}"
        await agent.shutdown()

    asyncio.run(scenario())


@sqlite_only
def test_machines_stop_start_and_restart_on_request_and_lose_their_credential(
    services: Services, web: App, tmp_path: Path
) -> None:
    release(services, tmp_path)
    agent = Agent(services)

    def ask(what: str, machine_id: str) -> None:
        with services.store.write() as tx:
            machine_rules.request(tx, tx.session.merge(web), machine_id, what)

    def credentials() -> list[bool]:
        with services.store.read() as session:
            rows = session.execute(select(Token).where(Token.kind == "machine")).scalars()
            return [row.revoked_at is not None for row in rows]

    async def scenario() -> None:
        await settle(agent)
        [running] = agent.of_app(web.id)
        pid = await get(running.address, "/pid")
        assert credentials() == [False]

        ask("stop", running.machine_id)
        await settle(agent)
        assert not running.machine.running and upstreams(services) == []
        assert machines(services)[0].state == "stopped"
        assert credentials() == [True]  # a stopped machine's credential unseals nothing

        ask("start", running.machine_id)
        await settle(agent)
        assert running.machine.running and upstreams(services) == [running.address]
        ask("restart", running.machine_id)
        await settle(agent)
        assert await get(running.address, "/pid") not in (pid, "")
        assert machines(services)[0].state == "started"
        assert credentials() == [True, True, False]
        await agent.shutdown()
        assert credentials() == [True, True, True]

    asyncio.run(scenario())


@sqlite_only
def test_a_machine_failing_its_check_leaves_the_route_table_until_it_passes(
    services: Services, web: App, tmp_path: Path, shared: Path
) -> None:
    sick = shared / "sick"
    release(services, tmp_path, env={"SICK_FILE": str(sick)})
    agent = Agent(services)

    async def scenario() -> None:
        await settle(agent)
        [running] = agent.of_app(web.id)
        sick.touch()

        async def unrouted() -> bool:
            return upstreams(services) == []

        await until(unrouted, agent, 10)
        assert machines(services)[0].health == "failing"
        sick.unlink()

        async def routed() -> bool:
            return upstreams(services) == [running.address]

        await until(routed, agent, 10)
        assert machines(services)[0].health == "passing"
        await agent.shutdown()

    asyncio.run(scenario())


@sqlite_only
def test_a_machine_that_dies_during_its_apps_rollout_leaves_the_route_table_at_once(
    services: Services, web: App, tmp_path: Path, shared: Path
) -> None:
    release(services, tmp_path, machines=2)
    agent = Agent(services)
    sick = shared / "sick"

    async def scenario() -> None:
        await settle(agent)
        old = agent.of_app(web.id)
        sick.touch()  # the new release's first machine fails its check: the rollout waits
        release(services, tmp_path, machines=2, env={"SICK_FILE": str(sick)})
        await agent.converge()
        assert agent._busy(web.id)
        victim = old[0]
        assert victim.machine.process is not None
        victim.machine.process.kill()

        async def unrouted() -> bool:
            return upstreams(services) == [old[1].address]

        await until(unrouted, agent, 4)  # well before the rollout's check deadline
        assert agent._busy(web.id)  # still rolling out: the dead machine did not wait for it
        sick.unlink()
        await agent.idle()
        assert status(services, 2)[0] == "complete"
        assert len(upstreams(services)) == 2 and victim.address not in upstreams(services)
        await agent.shutdown()

    asyncio.run(scenario())


@sqlite_only
def test_a_restart_asked_for_during_crash_backoff_leaves_one_live_credential(
    services: Services, web: App, tmp_path: Path
) -> None:
    release(services, tmp_path)
    agent = Agent(services)

    async def scenario() -> None:
        await settle(agent)
        [running] = agent.of_app(web.id)

        async def back() -> bool:
            return running.machine.running and upstreams(services) == [running.address]

        async def backing_off() -> bool:  # noticed: unrouted, credential revoked
            return running.restart_at > 0

        assert running.machine.process is not None
        running.machine.process.kill()
        await until(backing_off, agent, 10)
        assert live_credentials(services) == 0
        with services.store.write() as tx:  # `aero machines restart` meanwhile
            machine_rules.request(tx, tx.session.merge(web), running.machine_id, "restart")
        await until(back, agent, 10)
        assert live_credentials(services) == 1

        assert running.machine.process is not None
        crashed = running.machine.process.pid
        running.machine.process.kill()  # and it crashes again: the same as a first crash

        async def restarted() -> bool:
            process = running.machine.process
            return process is not None and process.pid != crashed and await back()

        await until(restarted, agent, 15)
        assert live_credentials(services) == 1
        await agent.shutdown()
        assert live_credentials(services) == 0

    asyncio.run(scenario())


@sqlite_only
def test_a_crashing_machine_restarts_then_is_marked_failed(
    services: Services, web: App, tmp_path: Path
) -> None:
    release(services, tmp_path)
    agent = Agent(services)

    async def scenario() -> None:
        await settle(agent)
        [running] = agent.of_app(web.id)
        assert running.machine.process is not None
        running.machine.process.kill()

        async def back() -> bool:
            return running.machine.running and upstreams(services) == [running.address]

        await until(back, agent, 10)  # restarted, checked, routed again
        # now it exits at once, every time
        running.machine.spec = type(running.machine.spec)(
            **{**running.machine.spec.__dict__, "command": "exit 7"}
        )
        running.machine.process.kill()

        async def failed() -> bool:
            return machines(services)[0].state == "failed"

        await until(failed, agent, 30)
        row = machines(services)[0]
        assert "exited 5 times in 60s" in row.reason and "last exit code 7" in row.reason
        assert upstreams(services) == []
        await agent.shutdown()

    asyncio.run(scenario())


@sqlite_only
def test_a_machine_knows_itself_through_its_local_api_and_runs_unprivileged(
    services: Services, web: App, tmp_path: Path
) -> None:
    number = release(services, tmp_path, env={"SHOW_SELF": "1"})
    agent = Agent(services)

    async def scenario() -> None:
        await settle(agent)
        await agent.shutdown()

    asyncio.run(scenario())
    [line] = [x.message for x in agent.logs.read(web.id) if x.message.startswith("self ")]
    [running_id] = {x.machine_id for x in agent.logs.read(web.id)}
    identity = json.loads(line.split(" ", 1)[1].rsplit(" uid ", 1)[0])
    assert identity == {
        "app": "web", "app_id": web.id, "org": "acme", "org_id": web.org_id,
        "machine": running_id, "release": number, "region": "local",
    }  # fmt: skip
    assert f" uid {web.machine_uid} " in line  # not root: the app's own uid
    assert "aero1_" not in line and "AERO_API_SOCKET" in line  # the socket, not the credential


@sqlite_only
def test_machines_of_two_apps_run_as_two_uids_and_cannot_read_each_others_secrets(
    services: Services, web: App, tmp_path: Path
) -> None:
    other = make_app(services, "other")
    release(services, tmp_path)
    release(services, tmp_path, app_name="other")
    agent = Agent(services)

    async def scenario() -> dict[str, str]:
        await settle(agent)
        [mine], [theirs] = agent.of_app(web.id), agent.of_app(other.id)
        own_pid, their_pid = await get(mine.address, "/pid"), await get(theirs.address, "/pid")
        seen = {
            "own": await get(mine.address, f"/environ/{own_pid}"),
            "theirs": await get(mine.address, f"/environ/{their_pid}"),
            "back": await get(theirs.address, f"/environ/{own_pid}"),
        }
        await agent.shutdown()
        return seen

    seen = asyncio.run(scenario())
    assert web.machine_uid != other.machine_uid
    assert seen["own"].isdigit() and int(seen["own"]) > len(SECRET)  # it can read its own
    assert seen["theirs"] == seen["back"] == "PermissionError"  # not the other app's secrets


@sqlite_only
def test_a_machine_reaches_its_orgs_machines_but_not_another_orgs(
    services: Services, web: App, tmp_path: Path
) -> None:
    make_app(services, "sibling")  # acme, like web
    make_app(services, "foreign", org_slug="globex")
    side: dict[str, int] = {}  # another listener of each app's machine
    for name in ("web", "sibling", "foreign"):
        side[name] = free_port(side.values())
    for name in ("web", "sibling", "foreign"):
        release(services, tmp_path, app_name=name, env={"SIDE_PORT": str(side[name])})
    agent = Agent(services)

    async def scenario() -> dict[str, str]:
        await settle(agent)
        [mine] = agent.of_app(web.id)
        others = {r.app_name: r for r in agent.machines.values() if r.app_id != web.id}
        seen = {}
        for name, running in others.items():
            seen[name] = await get(mine.address, f"/probe/{running.port}")
            seen[f"{name}, other port"] = await get(mine.address, f"/probe/{side[name]}")
        for name in others:
            await get(mine.address, f"/udp/{side[name]}/from-web")
        await get(others["foreign"].address, f"/udp/{side['web']}/from-foreign")
        await asyncio.sleep(0.2)
        for name, running in {**others, "web": mine}.items():
            seen[f"{name}, datagrams"] = await get(running.address, "/datagrams")
        seen["from foreign"] = await get(others["foreign"].address, f"/probe/{mine.port}")
        seen["from foreign, other port"] = await get(
            others["foreign"].address, f"/probe/{side['web']}"
        )
        for name, running in others.items():  # anyone else (the edge, this test) connects
            socket.create_connection(("127.0.0.1", running.port), timeout=3).close()
            socket.create_connection(("127.0.0.1", side[name]), timeout=3).close()
        table = apps_table(agent._isolation_tag)
        assert (
            subprocess.run(["nft", "list", "table", "inet", table], capture_output=True).returncode
            == 0
        )
        await agent.shutdown()
        gone = subprocess.run(["nft", "list", "table", "inet", table], capture_output=True)
        assert gone.returncode != 0  # its machines are gone: so is the table guarding them
        return seen

    seen = asyncio.run(scenario())
    assert seen == {
        "sibling": "open",  # an org's apps reach each other, as on Fly
        "sibling, other port": "open",
        "foreign": "ConnectionRefusedError",  # another org's only through the edge
        "foreign, other port": "ConnectionRefusedError",  # on any port it listens on
        "from foreign": "ConnectionRefusedError",
        "from foreign, other port": "ConnectionRefusedError",
        "sibling, datagrams": "from-web",  # UDP alike
        "foreign, datagrams": "",
        "web, datagrams": "",
    }


@sqlite_only
def test_a_machine_that_never_listens_fails_its_release_with_a_clear_reason(
    services: Services, web: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "NO_CHECK_WAIT", 2.0)
    number = release(services, tmp_path, None, command="sleep 60")
    agent = Agent(services)

    async def scenario() -> None:
        await settle(agent)
        await agent.shutdown()

    asyncio.run(scenario())
    state, reason = status(services, number)
    assert state == "failed" and "never listened on $PORT" in reason
    assert machines(services) == [] and upstreams(services) == []  # nothing half-deployed


@sqlite_only
def test_a_long_running_machine_gets_a_fresh_credential_and_the_old_one_is_revoked(
    services: Services, web: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "CREDENTIAL_REFRESH", 0.2)
    release(services, tmp_path)
    agent = Agent(services)

    def revoked() -> list[bool]:
        with services.store.read() as session:
            rows = session.execute(
                select(Token).where(Token.kind == "machine").order_by(Token.created_at)
            ).scalars()
            return [row.revoked_at is not None for row in rows]

    async def whoami(running: Running) -> int:
        reader, writer = await asyncio.open_unix_connection(str(running.machine.spec.api_socket))
        writer.write(b"GET /v1/self HTTP/1.1\r\nHost: machine\r\nConnection: close\r\n\r\n")
        status = int((await reader.readline()).split()[1])
        writer.close()
        return status

    async def scenario() -> None:
        await settle(agent)
        [running] = agent.of_app(web.id)
        assert revoked() == [False] and await whoami(running) == 200
        await asyncio.sleep(0.3)
        await agent.supervise()
        assert revoked() == [True, False] and await whoami(running) == 200
        await agent.shutdown()

    asyncio.run(scenario())


@sqlite_only
def test_a_restart_that_never_gets_healthy_marks_the_machine_failed_once(
    services: Services, web: App, tmp_path: Path, shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "MIN_CHECK_WAIT", 1.0)
    sick = shared / "sick"
    release(services, tmp_path, env={"SICK_FILE": str(sick)})
    agent = Agent(services)

    async def scenario() -> None:
        await settle(agent)
        [running] = agent.of_app(web.id)
        sick.touch()
        with services.store.write() as tx:
            machine_rules.request(tx, tx.session.merge(web), running.machine_id, "restart")
        await settle(agent)
        [row] = machines(services)
        assert row.state == "failed" and "check GET /healthz never passed" in row.reason
        assert not running.machine.running and upstreams(services) == []
        revision = services.store.revision()
        await settle(agent)  # nothing retries it by itself
        assert services.store.revision() == revision
        sick.unlink()
        with services.store.write() as tx:  # until someone starts it
            machine_rules.request(tx, tx.session.merge(web), running.machine_id, "start")
        await settle(agent)
        assert machines(services)[0].state == "started" and upstreams(services) == [running.address]
        await agent.shutdown()

    asyncio.run(scenario())


@sqlite_only
def test_an_agent_after_a_crash_drops_the_old_machines_and_revokes_their_credentials(
    services: Services, web: App, tmp_path: Path
) -> None:
    # The machine's first process starts one of its own (as a server starts workers) and one
    # that leaves its process group (as a daemon does), and notes their pids in the machine's
    # home; the dying agent would take neither along.
    release(
        services,
        tmp_path,
        command="sleep 600 & echo $! > stray.pid; "
        "setsid sh -c 'echo $$ > escaped.pid; exec sleep 600' & exec python3 server.py",
    )
    gone = Agent(services)  # stands for an agent killed without cleaning up

    async def scenario() -> None:
        await settle(gone)
        assert live_credentials(services) == 1 and len(machines(services)) == 1
        [running] = gone.of_app(web.id)
        tree = gone.machines_dir / running.machine_id
        stray = int((tree / "app" / "stray.pid").read_text())
        escaped = int((tree / "app" / "escaped.pid").read_text())
        assert running.machine.process is not None
        assert process_alive(stray) and process_alive(escaped)
        assert os.getsid(escaped) == escaped  # out of the machine's process group
        Agent(services).forget_previous_run()
        assert live_credentials(services) == 0  # what the old machine held opens nothing any more
        assert machines(services) == [] and upstreams(services) == []
        await asyncio.sleep(0.2)
        assert not process_alive(stray)  # nothing left
        assert not process_alive(running.machine.process.pid)
        assert not process_alive(escaped)  # not even outside its group: its cgroup held it
        assert not tree.exists()
        await gone.shutdown()

    asyncio.run(scenario())


@sqlite_only
def test_a_release_whose_config_no_longer_parses_fails_alone(
    services: Services, web: App, tmp_path: Path
) -> None:
    first = release(services, tmp_path)
    agent = Agent(services)

    async def scenario() -> None:
        await settle(agent)
        with services.store.write() as tx:  # e.g. written before a validation rule tightened
            broken = release_rules.create_release(
                tx, tx.session.merge(web), "deploy", config='app = "web"\nnope = 1\n'
            ).number
        await settle(agent)  # no exception out of the round
        state, reason = status(services, broken)
        assert state == "failed" and "nope" in reason
        assert [r.release for r in agent.of_app(web.id)] == [first]
        await agent.shutdown()

    asyncio.run(scenario())


def test_machine_ports_come_from_below_the_ephemeral_range_and_skip_taken_ones() -> None:
    # An outgoing connection's local port comes from the ephemeral range; a listener that
    # picked its port there could find it held by one by the time it binds.
    start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(20)]
    assert all(10000 <= port < start for port in ports), ports
    taken = set(range(10000, start))
    assert free_port(taken) not in taken  # all of them kept by stopped machines: elsewhere
