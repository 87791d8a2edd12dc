"""The agent: runs each app's latest release as a machine, and moves traffic to it.

It follows the store's revision. When an app's latest release (with an artifact and a
configuration) is not the one its machine runs, it rolls it out: unpack the artifact, mint a
machine credential, unseal the release's secrets with it, start the machine on a free loopback
port, wait for its check to pass, register it as the app's upstream, drop the old upstream,
then stop the old machine. A release whose machine never passes its check is abandoned and the
previous machine keeps serving. A machine that exits is restarted with backoff; one that keeps
crashing is marked failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import time
from dataclasses import dataclass, field

import httpx
from sqlalchemy import select

from aerodrome.config import Settings
from aerodrome.ids import new_id
from aerodrome.platform import http_service as upstream_rules
from aerodrome.platform import secrets as release_rules
from aerodrome.platform import tokens as token_records
from aerodrome.runtime.artifact import unpack_artifact
from aerodrome.runtime.config import AppConfig, load_config
from aerodrome.runtime.logstore import LogStore
from aerodrome.runtime.machine import LogLine, Machine, MachineSpec
from aerodrome.secrets.machine import unseal_for_machine
from aerodrome.secrets.redact import Redactor
from aerodrome.services import Services
from aerodrome.store.db import Audit
from aerodrome.store.models import App, Release
from aerodrome.tokens.mint import Scope

log = logging.getLogger("aerodrome.agent")
CRASH_WINDOW = 60.0
CRASH_LIMIT = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Running:
    app_id: str
    release: int
    machine: Machine
    port: int
    upstream_id: str | None = None
    crashes: list[float] = field(default_factory=list)
    failed: str = ""


class Agent:
    def __init__(self, services: Services, region: str = "local") -> None:
        self.services = services
        self.region = region
        self.settings: Settings = services.settings
        self.logs = LogStore(self.settings.data_dir / "logs" / "apps")
        self.running: dict[str, Running] = {}
        self.abandoned: dict[str, int] = {}  # app id -> release that failed its checks
        self._revision = -1
        self._audit = Audit(actor="agent")

    # -- following the store -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, interval: float = 0.5) -> None:
        while not stop.is_set():
            try:
                await self.converge()
                await self.watch_crashes()
            except Exception as exc:  # keep serving what runs; try again next round
                log.error("agent round failed: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
        await self.shutdown()

    def _wanted(self) -> list[tuple[App, Release]]:
        with self.services.store.read() as session:
            out = []
            for app in session.execute(select(App)).scalars():
                release = release_rules.latest_release(session, app.id)
                if release is not None and release.artifact and release.config:
                    out.append((app, release))
            return out

    async def converge(self) -> None:
        revision = await asyncio.to_thread(self.services.store.revision)
        if revision == self._revision:
            return
        wanted = await asyncio.to_thread(self._wanted)
        self._revision = revision
        for app, release in wanted:
            current = self.running.get(app.id)
            if current is not None and current.release == release.number:
                continue
            if self.abandoned.get(app.id) == release.number:
                continue
            await self.roll_out(app, release)

    # -- one release ---------------------------------------------------------------------------

    async def roll_out(self, app: App, release: Release) -> bool:
        config = load_config(release.config or "")
        machine_id = new_id("mch")
        try:
            started = await self._start(app, release, config, machine_id)
        except Exception as exc:
            log.error("release %s of %s did not start: %s", release.number, app.name, exc)
            self.abandoned[app.id] = release.number
            return False
        if not await self._healthy(started, config):
            log.error(
                "release %s of %s failed its checks; keeping the previous one",
                release.number,
                app.name,
            )
            await started.machine.stop(grace=5)
            self.abandoned[app.id] = release.number
            return False
        previous = self.running.get(app.id)
        with self.services.store.write(self._audit) as tx:
            row = upstream_rules.add_upstream(
                tx, tx.session.merge(app), f"127.0.0.1:{started.port}"
            )
            started.upstream_id = row.id
            if previous is not None and previous.upstream_id:
                upstream_rules.remove_upstream(tx, tx.session.merge(app), previous.upstream_id)
        self.running[app.id] = started
        if previous is not None:
            await asyncio.sleep(1.0)  # the edge polls every 0.5 s: drain before stopping
            await previous.machine.stop()
        log.info("release %s of %s serves on port %s", release.number, app.name, started.port)
        return True

    async def _start(
        self, app: App, release: Release, config: AppConfig, machine_id: str
    ) -> Running:
        workdir = self.settings.data_dir / "machines" / machine_id
        code = workdir / "app"
        artifact = (
            self.settings.data_dir
            / "artifacts"
            / "sha256"
            / (f"{(release.artifact or '').removeprefix('sha256:')}.tar.gz")
        )
        await asyncio.to_thread(unpack_artifact, artifact, code, release.artifact or "")
        credential = await asyncio.to_thread(self._machine_credential, app, machine_id)
        secrets = await asyncio.to_thread(
            unseal_for_machine, self.services, credential, app.id, release.number, machine_id
        )
        port = free_port()
        spec = MachineSpec(
            machine_id=machine_id, app=app.name, release=release.number, region=self.region,
            command=config.command, workdir=code, port=port, env=config.env,
        )  # fmt: skip
        redactor = Redactor(secrets.values())

        def sink(line: LogLine) -> None:
            self.logs.append(app.id, line, self.region)

        machine = Machine(spec, redactor, sink)
        await machine.start(secrets)
        return Running(app.id, release.number, machine, port)

    def _machine_credential(self, app: App, machine_id: str) -> str:
        with self.services.store.write(self._audit) as tx:
            minted, _ = token_records.create_token(
                tx, self.services.root,
                Scope("machine", org_id=app.org_id, app_id=app.id, machine_id=machine_id),
                created_by="agent", name=f"machine {machine_id}",
            )  # fmt: skip
        return minted.token

    async def _healthy(self, running: Running, config: AppConfig) -> bool:
        """The first check of [http_service] passes, or (without one) the port answers."""
        checks = config.http_service.checks if config.http_service else ()
        check = checks[0] if checks else None
        deadline = time.monotonic() + (check.grace_period + 10 * check.timeout if check else 15.0)
        async with httpx.AsyncClient(timeout=check.timeout if check else 2.0) as client:
            while time.monotonic() < deadline:
                if not running.machine.running:
                    return False
                try:
                    if check is None:
                        _, writer = await asyncio.open_connection("127.0.0.1", running.port)
                        writer.close()
                        return True
                    response = await client.request(
                        check.method, f"http://127.0.0.1:{running.port}{check.path}"
                    )
                    if response.status_code < 400:
                        return True
                except (OSError, httpx.HTTPError):
                    pass
                await asyncio.sleep(0.2)
        return False

    # -- crashes and shutdown ------------------------------------------------------------------

    async def watch_crashes(self) -> None:
        for running in list(self.running.values()):
            if running.machine.running or running.failed:
                continue
            now = time.monotonic()
            running.crashes = [t for t in running.crashes if now - t < CRASH_WINDOW] + [now]
            if len(running.crashes) >= CRASH_LIMIT:
                running.failed = f"crashed {len(running.crashes)} times in {CRASH_WINDOW:.0f}s"
                log.error("machine %s failed: %s", running.machine.spec.machine_id, running.failed)
                continue
            await asyncio.sleep(min(2 ** len(running.crashes) * 0.25, 10.0))
            with self.services.store.read() as session:
                app = session.get(App, running.app_id)
                release = release_rules.get_release(session, app, running.release) if app else None
            if app is None or release is None:
                continue
            credential = await asyncio.to_thread(
                self._machine_credential, app, running.machine.spec.machine_id
            )
            secrets = await asyncio.to_thread(
                unseal_for_machine, self.services, credential, app.id, running.release,
                running.machine.spec.machine_id,
            )  # fmt: skip
            await running.machine.start(secrets)

    async def shutdown(self) -> None:
        for running in self.running.values():
            await running.machine.stop(grace=5)


def main() -> None:
    import signal

    import uvloop

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    services = Services.open(Settings.from_env())
    agent = Agent(services)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await agent.run(stop)

    uvloop.run(run())
    shutil.rmtree(services.settings.data_dir / "machines", ignore_errors=True)
    print(json.dumps({"stopped": True}), flush=True)


if __name__ == "__main__":
    main()
