"""The agent: runs each app's current release as machines, and moves traffic between them.

It follows the store's revision and converges. For each app, the release to run is the newest
one with code (artifact and configuration) that has not failed. When the machines of an app do
not run it, the agent rolls it out with the release's `[deploy] strategy`:

- `rolling` (default): one machine at a time — start a new machine, wait for its check, route
  to it, stop routing to an old one, drain, stop it. A machine that never passes its check
  aborts the deploy: the release is marked failed, and any machine already replaced is rolled
  back to the previous release, so the previous release keeps serving.
- `immediate`: all new machines at once; traffic moves only when every one passes its check.

Machines are checked for as long as they run; the edge routes only to passing ones. A machine
that exits is restarted with backoff; five exits in a minute mark it failed. Users ask for a
machine to stop, start or restart through the API (`desired`, `generation`); the agent does it.
Every machine start mints a machine credential that the machine's code never sees (it unseals
the secrets and backs the machine-local API); it is revoked when that process stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import random
import shutil
import signal
import socket
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import select

from aerodrome.config import Settings
from aerodrome.errors import InvalidInput
from aerodrome.ids import MACHINE_ID, new_id
from aerodrome.platform import http_service as upstream_rules
from aerodrome.platform import machines as machine_rules
from aerodrome.platform import secrets as release_rules
from aerodrome.platform import tokens as token_records
from aerodrome.platform.apps import MACHINE_UIDS
from aerodrome.runtime import cgroups
from aerodrome.runtime.artifact import app_artifacts, stored_artifact, unpack_artifact
from aerodrome.runtime.config import AppConfig, Check, load_config
from aerodrome.runtime.isolation import (
    OrgTable,
    drop_org_table,
    isolate_orgs,
    isolate_test_machines,
)
from aerodrome.runtime.localapi import Identity, LocalApi, MachineCredentialCheck
from aerodrome.runtime.logstore import LogStore
from aerodrome.runtime.machine import (
    LogLine,
    Machine,
    MachineSpec,
    kill_recorded_groups,
    machine_user,
)
from aerodrome.secrets.machine import unseal_for_machine
from aerodrome.secrets.redact import Redactor
from aerodrome.services import Services
from aerodrome.store.db import Audit, Tx
from aerodrome.store.models import App, Org, Release, Token, Upstream
from aerodrome.store.models import Machine as MachineRow
from aerodrome.tokens.mint import Scope


@functools.lru_cache(maxsize=256)
def parsed_config(text: str) -> AppConfig:
    """A release's config, parsed once: the agent looks at every app's on each store change.
    (Shared: callers never change what it returns.)"""
    return load_config(text)


log = logging.getLogger("aerodrome.agent")
CRASH_WINDOW = 60.0
CRASH_LIMIT = 5
DRAIN = 1.0  # the edge polls the store every 0.5 s: after this, no new request reaches it
FAILING_AFTER = 2  # consecutive failed checks before a started machine leaves the route table
NO_CHECK_WAIT = 15.0  # without a check: how long the port may take to open
MIN_CHECK_WAIT = 10.0  # after the grace period: how long a new machine has to pass its check
CREDENTIAL_REFRESH = 24 * 3600.0


def _ephemeral_start() -> int:
    """Where the kernel's range for outgoing connections' local ports begins."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(taken: Collection[int] = ()) -> int:
    """A port to listen on: nothing listens on it now, it is not one of `taken` (ports of
    machines that are stopped or waiting to restart: they keep theirs), and it is below the
    kernel's ephemeral range, so no outgoing connection of this host can be holding it when
    the listener binds it (a port picked with bind(0) can be). Falls back to bind(0)."""
    low, high = 10000, _ephemeral_start()
    rng = random.SystemRandom()
    for _ in range(200 if high - low > 1000 else 0):
        port = rng.randrange(low, high)
        if port in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            return port
    raise OSError("no free port")


class StartFailed(Exception):
    """A machine did not get healthy; the message says why, in words for the user."""


@dataclass(eq=False)  # one machine is one object: compared by identity
class Running:
    """One machine this agent supervises."""

    app_id: str
    app_name: str
    release: int
    config: AppConfig
    machine: Machine
    port: int
    code: tuple[str, str] = ("", "")  # the release's artifact and aerodrome.toml text
    credential_id: str = ""
    credential_at: float = 0.0  # monotonic time it was minted
    api: LocalApi | None = None  # the machine-local API, holding the credential
    generation: int = 0
    upstream_id: str | None = None  # set while the edge routes to it
    unrouted_at: float = 0.0  # when it last left the route table (monotonic)
    healthy: bool = False
    failures: int = 0  # consecutive failed checks
    next_check: float = 0.0
    crashes: list[float] = field(default_factory=list)
    restart_at: float = 0.0
    stopped: bool = False  # stopped on purpose (request, retirement): not a crash
    failed: str = ""
    org_id: str = ""  # the app's org: its machines' cgroups and firewall rules are per org

    @property
    def machine_id(self) -> str:
        return self.machine.spec.machine_id

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _cgroup_id(cgroup: Path) -> int:
    """The id the kernel (and nftables) knows a cgroup by: its inode; 0 if it is gone."""
    try:
        return cgroup.stat().st_ino
    except OSError:
        return 0


class Agent:
    def __init__(self, services: Services, region: str = "local") -> None:
        self.services = services
        self.region = region
        self.settings: Settings = services.settings
        self.logs = LogStore(self.settings.data_dir / "logs" / "apps")
        self.machines: dict[str, Running] = {}
        self.machines_dir = self.settings.machines_dir
        self._tasks: dict[str, asyncio.Task[None]] = {}  # app id -> its rollout or request
        self._revision = -1
        # Who may connect to this agent's machines (see runtime/isolation.py): the production
        # apps' uids per org and each app's org, from the store (replaced together); the sets
        # last installed, whether a table was ever installed, and why not, if not.
        self._orgs: tuple[dict[str, list[int]], dict[str, str]] = ({}, {})
        self._isolated: (
            tuple[
                frozenset[int],
                frozenset[tuple[int, int]],
                tuple[str, ...],
                tuple[tuple[int, Path, int], ...],
            ]
            | None
        ) = None
        self._isolation_installed = False
        self._isolation_problem = ""
        tag = hashlib.sha256(str(self.settings.data_dir).encode()).hexdigest()[:8]
        self._isolation_tag = f"{self.region}_{tag}"
        self._isolating = asyncio.Lock()
        self._cgroup_rules_problem = ""  # why nft refused the cgroup rules, if it did
        # Each machine's processes in a cgroup of its own, when this agent may make them.
        self._cgroups, self._cgroups_problem = cgroups.MachineCgroups.open(self._isolation_tag)
        self._audit = Audit(actor="agent")
        self._client: httpx.AsyncClient | None = None  # made in the loop that uses it

    # -- following the store -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, interval: float = 0.5) -> None:
        problem = await asyncio.to_thread(isolate_test_machines, MACHINE_UIDS["test"])
        if problem:
            log.warning("test-environment isolation: %s", problem)
        if self._cgroups_problem:
            log.warning(
                "machines run without cgroups (%s): a process that leaves its machine's "
                "process group outlives the machine",
                self._cgroups_problem,
            )
        await asyncio.to_thread(self.forget_previous_run)
        while not stop.is_set():
            try:
                await self.converge()
                await self.supervise()
            except Exception:  # keep serving what runs; try again next round
                log.exception("agent round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
        await self.shutdown()

    def forget_previous_run(self) -> None:
        """Machines recorded by an agent that is gone no longer run: end what they left
        behind (the processes their first one started), drop them, their trees, their routes
        and their credentials, so the releases they ran are rolled out afresh and nothing they
        held still opens anything."""
        with self.services.store.read() as session:
            left = list(
                session.execute(
                    select(MachineRow.id).where(MachineRow.region == self.region)
                ).scalars()
            )
        # Outside the write transaction: this reads all of /proc (once for every machine).
        # Every cgroup under this agent's is a leftover (it makes them, and removes them when
        # its machines are retired or it stops); the recorded process groups cover machines
        # started without one.
        killed = self._cgroups.remove_all() if self._cgroups else 0
        trees = [self.machines_dir / m for m in left if MACHINE_ID.fullmatch(m)]  # ids we made
        killed += kill_recorded_groups(tree / "group" for tree in trees)
        if killed:
            log.warning("killed %d leftover process(es) of %d machine(s)", killed, len(trees))
        for tree in trees:
            shutil.rmtree(tree, ignore_errors=True)
        with self.services.store.write(self._audit) as tx:
            rows = list(
                tx.session.execute(
                    select(MachineRow).where(MachineRow.region == self.region)
                ).scalars()
            )
            for row in rows:
                if row.address:
                    self._unroute_address(tx, row.app_id, row.address)
                machine_rules.destroy_machine(tx, row.id)
            if rows:
                credentials = tx.session.execute(
                    select(Token).where(
                        Token.machine_id.in_([row.id for row in rows]),
                        Token.revoked_at.is_(None),
                    )
                ).scalars()
                for token in list(credentials):
                    token_records.revoke_record(tx, token)

    async def _isolate(self) -> None:
        """Bring this agent's org table up to date (runtime/isolation.py): each machine's port
        may be reached by the production apps of the machine's org, and by no other machine;
        with cgroups, any port of a machine by no other org's machine here. One update at a
        time, each from the state when it runs, so the last one wins."""
        async with self._isolating:
            org_uids, app_org = self._orgs
            ports = frozenset(r.port for r in self.machines.values())
            peers = frozenset(
                (uid, r.port)
                for r in self.machines.values()
                for uid in org_uids.get(app_org.get(r.app_id, ""), [])
            )
            orgs = tuple(sorted({r.org_id for r in self.machines.values()}))
            owners = tuple(
                sorted(
                    (r.port, r.machine.spec.cgroup, _cgroup_id(r.machine.spec.cgroup))
                    for r in self.machines.values()
                    if r.machine.spec.cgroup is not None
                )
            )  # by id too: a cgroup made again under the same path is another to the rules
            if (ports, peers, orgs, owners) == self._isolated:
                return
            org_cgroups = await asyncio.to_thread(self._org_cgroups, orgs)
            port_owners = tuple(
                (port, *name)
                for port, cgroup, _ in owners
                if self._cgroups is not None
                and (name := self._cgroups.nft_name(cgroup)) is not None
            )
            table = OrgTable(
                self._isolation_tag,
                MACHINE_UIDS["production"],
                ports,
                peers,
                org_cgroups,
                port_owners,
            )
            problem = await asyncio.to_thread(isolate_orgs, table)
            if problem and org_cgroups:  # e.g. a kernel without `socket cgroupv2`
                if problem != self._cgroup_rules_problem:
                    log.warning("org isolation covers $PORT only: %s", problem)
                self._cgroup_rules_problem = problem
                problem = await asyncio.to_thread(isolate_orgs, table.without_cgroups())
            elif problem is None:
                self._cgroup_rules_problem = ""
            if problem and problem != self._isolation_problem:
                log.warning("org isolation: %s", problem)
            self._isolation_problem = problem or ""
            self._isolated = (ports, peers, orgs, owners) if problem is None else None
            self._isolation_installed |= problem is None

    def _org_cgroups(self, orgs: tuple[str, ...]) -> tuple[tuple[str, int, str], ...]:
        """Each org with machines here, and nft's name of its cgroup (made if missing: the
        rules must name it)."""
        if self._cgroups is None:
            return ()
        named = ((org, self._cgroups.nft_name(self._cgroups.org(org))) for org in orgs)
        return tuple((org, *name) for org, name in named if name is not None)

    @staticmethod
    def _unroute_address(tx: Tx, app_id: str, address: str) -> None:
        stale = tx.session.execute(
            select(Upstream).where(Upstream.app_id == app_id, Upstream.address == address)
        ).scalar_one_or_none()
        app = tx.session.get(App, app_id)
        if stale is not None and app is not None:
            upstream_rules.remove_upstream(tx, app, stale.id)

    def _desired(self) -> tuple[list[tuple[App, Release]], dict[str, MachineRow]]:
        with self.services.store.read() as session:
            serving = release_rules.serving_releases(session)
            apps = list(session.execute(select(App)).scalars())
            wanted = [(app, serving[app.id]) for app in apps if app.id in serving]
            org_uids: dict[str, list[int]] = {}
            for app in apps:
                if app.environment == "production":
                    org_uids.setdefault(app.org_id, []).append(app.machine_uid)
            self._orgs = (org_uids, {app.id: app.org_id for app in apps})
            rows = {
                row.id: row
                for row in session.execute(
                    select(MachineRow).where(MachineRow.region == self.region)
                ).scalars()
            }
            session.expunge_all()
            return wanted, rows

    async def converge(self) -> None:
        self._tasks = {k: t for k, t in self._tasks.items() if not t.done()}
        revision = await asyncio.to_thread(self.services.store.revision)
        if revision == self._revision:
            return
        wanted, rows = await asyncio.to_thread(self._desired)
        self._revision = revision
        await self._isolate()
        present = {app.id for app, _ in wanted}
        for app_id in {r.app_id for r in self.machines.values()} - present - set(self._tasks):
            self._spawn(app_id, self._discard_app(app_id))  # the app or its code is gone
        for app, release in wanted:
            if app.id in self._tasks:
                continue  # looked at again when that work is done (`_finished`)
            mine = self.of_app(app.id)
            try:
                config = parsed_config(release.config or "")
            except InvalidInput as error:  # one app's bad release must not stop the others
                log.error("release %s of %s: %s", release.number, app.name, error.message)
                await self._status(app, release.number, "failed", error.message)
                continue
            if len(mine) != config.machines or any(r.release != release.number for r in mine):
                self._spawn(app.id, self.roll_out(app, release))
                continue
            requests = [(r, rows[r.machine_id]) for r in mine if r.machine_id in rows]
            if any(self._asks(r, row) for r, row in requests):
                self._spawn(app.id, self._honour(app, requests))

    def _busy(self, app_id: str) -> bool:
        """A rollout or a request of this app is in progress."""
        task = self._tasks.get(app_id)
        return task is not None and not task.done()

    async def idle(self) -> None:
        """Wait for every rollout and request in progress (tests and shutdown)."""
        while pending := [t for t in self._tasks.values() if not t.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, app_id: str, work: object) -> None:
        assert asyncio.iscoroutine(work)
        task = asyncio.create_task(work)
        task.add_done_callback(self._finished)
        self._tasks[app_id] = task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._revision = -1  # the next round looks at the store again
        if not task.cancelled() and task.exception() is not None:
            log.error("agent task failed", exc_info=task.exception())

    async def _discard_app(self, app_id: str) -> None:
        await asyncio.gather(*(self._discard(r) for r in self.of_app(app_id)))

    def of_app(self, app_id: str) -> list[Running]:
        return [r for r in self.machines.values() if r.app_id == app_id]

    @staticmethod
    def _asks(running: Running, row: MachineRow) -> bool:
        wants_stop = row.desired == "stopped"
        return wants_stop != running.stopped or row.generation != running.generation

    # -- a release -----------------------------------------------------------------------------

    async def roll_out(self, app: App, release: Release) -> None:
        config = parsed_config(release.config or "")
        old = sorted(self.of_app(app.id), key=lambda r: r.release != release.number)
        if not await self._status(app, release.number, "running"):
            # A newer release came after this one was read (or the app went): leave it to the
            # next round, which rolls out the newest.
            log.info(
                "release %s of %s was superseded before it rolled out", release.number, app.name
            )
            return
        # A release that changes only secrets restarts machines one at a time, whatever the
        # strategy: never all of an app's machines at once for a value change.
        same_code = bool(old) and all(
            r.code == (release.artifact or "", release.config or "") for r in old
        )
        try:
            if config.strategy == "immediate" and not same_code:
                unrouted = await self._immediate(app, release, config, old)
            else:
                unrouted = await self._rolling(app, release, config, old)
        except StartFailed as failure:
            log.error("release %s of %s failed: %s", release.number, app.name, failure)
            await self._status(app, release.number, "failed", str(failure))
            await self._recover(app, release.number)
            return
        await self._finish(app, release.number, config, unrouted)

    async def _finish(
        self, app: App, number: int, config: AppConfig, unrouted: list[Running]
    ) -> None:
        """Only the release's machines are routed. Once the edge has had time to see that (a
        drain: two of its store polls) the release is complete and `aero deploy` returns; the
        machines it replaced stop meanwhile (their own drain runs from when they left)."""
        extras = [
            r for r in self.of_app(app.id) if r.release != number and r not in unrouted
        ]  # more old machines than the new release wants
        await self._switch(app, config, add=[], remove=extras)
        retiring = [asyncio.create_task(self._retire(app, r)) for r in [*unrouted, *extras]]
        try:
            await asyncio.sleep(DRAIN)
            await self._status(app, number, "complete")
            log.info("release %s of %s serves on %s machine(s)", number, app.name, config.machines)
        finally:  # cancelled (the agent stops): the retirements end before shutdown goes on
            await asyncio.gather(*retiring, return_exceptions=True)

    async def _rolling(
        self, app: App, release: Release, config: AppConfig, old: list[Running]
    ) -> list[Running]:
        """One machine at a time; returns the last machine it unrouted, not yet stopped."""
        keep = [r for r in old if r.release == release.number]  # a crash-free partial rollout
        replace = [r for r in old if r.release != release.number]
        last: list[Running] = []
        for _ in range(len(keep), config.machines):
            for previous in last:  # drained while the edge moved on; one extra machine at most
                await self._retire(app, previous)
            new = await self._launch(app, release, config)
            before = replace.pop(0) if replace else None
            await self._switch(app, config, add=[new], remove=[before] if before else [])
            last = [before] if before else []
        return last

    async def _immediate(
        self, app: App, release: Release, config: AppConfig, old: list[Running]
    ) -> list[Running]:
        started = await asyncio.gather(
            *(self._launch(app, release, config) for _ in range(config.machines)),
            return_exceptions=True,
        )
        fresh = [m for m in started if isinstance(m, Running)]
        failures = [m for m in started if isinstance(m, BaseException)]
        if failures:
            for machine in fresh:
                await self._discard(machine)
            raise (
                failures[0]
                if isinstance(failures[0], StartFailed)
                else StartFailed(f"a machine did not start: {type(failures[0]).__name__}")
            )
        await self._switch(app, config, add=fresh, remove=old)
        return old

    async def _recover(self, app: App, failed: int) -> None:
        """After a failed deploy: machines already moved to the failed release go back to the
        newest good one (a rolling deploy that failed on its second machine)."""
        if not any(r.release == failed for r in self.of_app(app.id)):
            return
        wanted, _ = await asyncio.to_thread(self._desired)
        for candidate, release in wanted:
            if candidate.id == app.id:
                log.info("rolling %s back to release %s", app.name, release.number)
                config = parsed_config(release.config or "")
                try:
                    unrouted = await self._rolling(app, release, config, self.of_app(app.id))
                    await self._finish(app, release.number, config, unrouted)
                except StartFailed as failure:
                    log.error("rolling %s back failed too: %s", app.name, failure)

    async def _status(self, app: App, number: int, status: str, reason: str = "") -> bool:
        """False when the release can no longer take a status (superseded) or the app is gone."""

        def write() -> bool:
            with self.services.store.write(self._audit) as tx:
                row = tx.session.get(App, app.id)  # never `merge`: it would re-create a removed app
                if row is None:
                    return False
                return machine_rules.set_release_status(tx, row, number, status, reason)

        return await asyncio.to_thread(write)

    # -- one machine ---------------------------------------------------------------------------

    async def _launch(self, app: App, release: Release, config: AppConfig) -> Running:
        """A new machine running `release`, passing its check; or StartFailed, leaving nothing."""
        machine_id = new_id("mch")
        workdir = self.machines_dir / machine_id
        await asyncio.to_thread(self._record, app, machine_id, release.number)
        try:
            await asyncio.to_thread(self._prepare, workdir)
            digest = release.artifact or ""
            artifact = stored_artifact(app_artifacts(self.settings.data_dir, app.id), digest)
            await asyncio.to_thread(unpack_artifact, artifact, workdir / "app", digest)
            port = free_port({r.port for r in self.machines.values()})
            spec = MachineSpec(
                machine_id=machine_id, app=app.name, release=release.number,
                region=self.region, command=config.command, workdir=workdir / "app", port=port,
                env=config.env, api_socket=workdir / "api" / "api.sock",
                user=machine_user(app.machine_uid), group_file=workdir / "group",
                cgroup=self._cgroups.path(app.org_id, machine_id) if self._cgroups else None,
            )  # fmt: skip
            machine = Machine(spec, Redactor([]), lambda line: None)  # both set by _start
            running = Running(
                app.id, app.name, release.number, config, machine, port, org_id=app.org_id
            )
            running.code = (release.artifact or "", release.config or "")
            if spec.cgroup is not None:  # the firewall names it: made before any rule does
                await asyncio.to_thread(cgroups.prepare, spec.cgroup)
            self.machines[machine_id] = running
            await self._isolate()  # its port is guarded before it listens
            if self._isolated is None and self._isolation_installed:
                raise StartFailed(
                    f"machine {machine_id} was not started: the firewall rule guarding its "
                    f"port could not be installed ({self._isolation_problem})"
                )
            await self._start(running)
            await self._wait_healthy(running)
        except BaseException as exc:
            failure = exc if isinstance(exc, StartFailed) else None
            running_or_none = self.machines.get(machine_id)
            if running_or_none is not None:
                await self._discard(running_or_none)
            else:
                await asyncio.to_thread(self._destroy, machine_id, workdir)
            if failure is None and isinstance(exc, Exception):
                log.exception("machine %s of %s did not start", machine_id, app.name)
                failure = StartFailed(f"machine {machine_id} did not start: {type(exc).__name__}")
            if failure is None:
                raise
            raise failure from None
        return running

    def _prepare(self, workdir: Path) -> None:
        """The machines directory (and any parent made for it) and this machine's: searchable
        (0711) but not listable by the uid the machine runs as; its code and socket directories
        are its own (0700)."""
        root = self.machines_dir
        made = [p for p in (*reversed(root.parents), root) if not p.exists()]
        root.mkdir(parents=True, exist_ok=True)
        for path in (*made, root):
            path.chmod(0o711)
        workdir.mkdir(mode=0o711)
        workdir.chmod(0o711)

    def _record(self, app: App, machine_id: str, release: int) -> None:
        with self.services.store.write(self._audit) as tx:
            row = tx.session.get(App, app.id)
            if row is None:
                raise StartFailed(f"{app.name} was removed")
            machine_rules.create_machine(tx, row, machine_id, release, self.region)

    def _destroy(self, machine_id: str, workdir: Path) -> None:
        with self.services.store.write(self._audit) as tx:
            machine_rules.destroy_machine(tx, machine_id)
        shutil.rmtree(workdir, ignore_errors=True)

    def _report(self, machine_id: str, **fields: str) -> None:
        with self.services.store.write(self._audit) as tx:
            machine_rules.report(tx, machine_id, **fields)

    async def _start(self, running: Running) -> None:
        """Mint a credential, unseal this release's secrets with it, start the process. The
        machine's previous credential is revoked first, and the new one if starting fails."""
        running.restart_at = 0.0  # whoever starts it (a request, a crash restart) ends backoff
        await asyncio.to_thread(self._revoke_credential, running)
        await asyncio.to_thread(self._report, running.machine_id, state="starting", reason="")
        credential, credential_id, identity = await asyncio.to_thread(self._credential, running)
        running.credential_id, running.credential_at = credential_id, time.monotonic()
        try:
            secrets = await asyncio.to_thread(
                unseal_for_machine, self.services, credential, running.app_id, running.release,
                running.machine_id,
            )  # fmt: skip
            check = MachineCredentialCheck(self.services, credential, identity)
            del credential
            if running.api is None:
                spec = running.machine.spec
                assert spec.api_socket is not None
                running.api = await LocalApi.start(
                    spec.api_socket, identity, check, owner_uid=spec.user
                )
            else:
                running.api.check = check
            running.machine.redactor = Redactor(secrets.values())
            self._bind_logs(running)
            running.stopped, running.healthy, running.failures = False, False, 0
            await running.machine.start(secrets)
        except BaseException:
            await asyncio.to_thread(self._revoke_credential, running)
            raise

    def _bind_logs(self, running: Running) -> None:
        app_id, region = running.app_id, self.region

        def sink(line: LogLine) -> None:
            self.logs.append(app_id, line, region)

        running.machine.sink = sink

    def _credential(self, running: Running) -> tuple[str, str, Identity]:
        """A fresh machine token (the process's lifetime: revoked when it stops), and who the
        machine is, as `GET /v1/self` tells it."""
        with self.services.store.write(self._audit) as tx:
            app = tx.session.get(App, running.app_id)
            assert app is not None
            org = tx.session.get(Org, app.org_id)
            assert org is not None
            minted, row = token_records.create_token(
                tx, self.services.root,
                Scope("machine", org_id=app.org_id, app_id=app.id, machine_id=running.machine_id),
                created_by="agent", name=f"machine {running.machine_id}",
            )  # fmt: skip
            identity = Identity(
                app=app.name, app_id=app.id, org=org.slug, org_id=org.id,
                machine=running.machine_id, release=running.release, region=self.region,
            )  # fmt: skip
            return minted.token, row.id, identity

    def _revoke_credential(self, running: Running) -> None:
        token_id, running.credential_id = running.credential_id, ""
        self._revoke_token(token_id)

    def _revoke_token(self, token_id: str) -> None:
        if not token_id:
            return
        with self.services.store.write(self._audit) as tx:
            row = tx.session.get(Token, token_id)
            if row is not None and row.revoked_at is None:
                token_records.revoke_record(tx, row)

    async def _wait_healthy(self, running: Running) -> None:
        """Until the first check of [http_service] passes (or, with none, the port answers)."""
        check = self._check_of(running.config)
        deadline = time.monotonic() + (
            check.grace_period + max(MIN_CHECK_WAIT, 5 * check.timeout) if check else NO_CHECK_WAIT
        )
        last = "it never answered"
        while time.monotonic() < deadline:
            if not running.machine.running:
                code = running.machine.process.returncode if running.machine.process else None
                raise StartFailed(
                    f"machine {running.machine_id} exited with code {code} before its check passed"
                )
            ok, last = await self._probe(running, check)
            if ok:
                running.healthy, running.next_check = True, time.monotonic() + self._interval(check)
                await asyncio.to_thread(
                    self._report, running.machine_id, state="started", health="passing",
                    address=running.address,
                )  # fmt: skip
                return
            await asyncio.sleep(0.2)
        if check is None:
            raise StartFailed(
                f"machine {running.machine_id} never listened on $PORT ({running.port}): "
                "the app must serve on the port in its PORT variable"
            )
        raise StartFailed(
            f"machine {running.machine_id}: check {check.method} {check.path} never passed ({last})"
        )

    @staticmethod
    def _check_of(config: AppConfig) -> Check | None:
        checks = config.http_service.checks if config.http_service else ()
        return checks[0] if checks else None

    @staticmethod
    def _interval(check: Check | None) -> float:
        return check.interval if check else 10.0

    async def _probe(self, running: Running, check: Check | None) -> tuple[bool, str]:
        try:
            if check is None:
                _, writer = await asyncio.open_connection("127.0.0.1", running.port)
                writer.close()
                return True, "port open"
            if self._client is None:
                self._client = httpx.AsyncClient(timeout=2.0)
            response = await self._client.request(
                check.method,
                f"http://{running.address}{check.path}",
                timeout=check.timeout,
            )
            return response.status_code < 400, f"HTTP {response.status_code}"
        except (OSError, httpx.HTTPError) as exc:
            return False, type(exc).__name__

    # -- traffic -------------------------------------------------------------------------------

    async def _switch(
        self, app: App, config: AppConfig, add: list[Running], remove: list[Running]
    ) -> None:
        """In one transaction: route to `add`, stop routing to `remove`, apply the release's
        [http_service] settings to the edge."""

        def write() -> None:
            with self.services.store.write(self._audit) as tx:
                row = tx.session.get(App, app.id)
                if row is None:  # removed meanwhile: nothing to route
                    return
                for running in add:
                    running.upstream_id = upstream_rules.add_upstream(tx, row, running.address).id
                for running in remove:
                    self._unroute(tx, row, running)
                if config.http_service is not None:
                    current = upstream_rules.get_http_service(tx.session, app.id)
                    if current != config.http_service.service:
                        upstream_rules.set_http_service(
                            tx, row, config.http_service.service.to_dict()
                        )

        await asyncio.to_thread(write)

    @staticmethod
    def _unroute(tx: Tx, app: App, running: Running) -> None:
        if running.upstream_id and tx.session.get(Upstream, running.upstream_id) is not None:
            upstream_rules.remove_upstream(tx, app, running.upstream_id)
            running.unrouted_at = time.monotonic()
        running.upstream_id = None

    async def _route(self, running: Running, routed: bool) -> None:
        def write() -> None:
            with self.services.store.write(self._audit) as tx:
                app = tx.session.get(App, running.app_id)
                if app is None:
                    return
                if routed and running.upstream_id is None:
                    running.upstream_id = upstream_rules.add_upstream(tx, app, running.address).id
                elif not routed:
                    self._unroute(tx, app, running)

        await asyncio.to_thread(write)

    async def _stop(self, running: Running, reason: str) -> None:
        """Drain (no new requests; open WebSockets stay), then the kill signal, then SIGKILL
        after `kill_timeout`; the credential is revoked once the process is gone."""
        running.stopped = True
        if running.upstream_id is not None:
            await self._route(running, routed=False)
        # Unrouted here or by the switch that replaced it: the edge sees that within a poll.
        drained = time.monotonic() - running.unrouted_at
        if drained < DRAIN:
            await asyncio.sleep(DRAIN - drained)
        await asyncio.to_thread(self._report, running.machine_id, state="stopping", reason=reason)
        await self._kill(running)
        await self._close_api(running)
        await asyncio.to_thread(self._revoke_credential, running)

    @staticmethod
    async def _kill(running: Running) -> None:
        """The app's `kill_signal` to its process group; SIGKILL after `kill_timeout`."""
        config = running.config
        await running.machine.stop(config.kill_timeout, getattr(signal, config.kill_signal))

    @staticmethod
    async def _remove_cgroup(running: Running) -> None:
        if running.machine.spec.cgroup is not None:
            await asyncio.to_thread(cgroups.remove, running.machine.spec.cgroup)

    @staticmethod
    async def _close_api(running: Running) -> None:
        if running.api is not None:
            api, running.api = running.api, None
            await api.close()

    async def _retire(self, app: App, running: Running) -> None:
        await self._stop(running, "replaced")
        self.machines.pop(running.machine_id, None)
        await self._isolate()  # its port is no one's now
        await self._remove_cgroup(running)
        await asyncio.to_thread(
            self._destroy, running.machine_id, running.machine.spec.workdir.parent
        )

    async def _discard(self, running: Running, isolate: bool = True) -> None:
        """Stop and forget a machine that should not exist (failed start, app gone); its port
        and cgroup leave the org table (not at shutdown, which drops the table)."""
        running.stopped = True
        with contextlib.suppress(Exception):
            await self._route(running, routed=False)
        await self._kill(running)
        with contextlib.suppress(Exception):
            await self._close_api(running)
            await asyncio.to_thread(self._revoke_credential, running)
        self.machines.pop(running.machine_id, None)
        if isolate:
            with contextlib.suppress(Exception):  # retried each supervise round
                await self._isolate()
        await self._remove_cgroup(running)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(
                self._destroy, running.machine_id, running.machine.spec.workdir.parent
            )

    # -- requests, checks and crashes ----------------------------------------------------------

    async def _honour(self, app: App, requests: list[tuple[Running, MachineRow]]) -> None:
        """`aero machines stop|start|restart`: one machine at a time."""
        for running, row in requests:
            if row.desired == "stopped" and not running.stopped:
                await self._stop(running, "stopped by request")
                await asyncio.to_thread(self._report, running.machine_id, state="stopped")
            elif row.desired == "started" and (
                running.stopped or row.generation != running.generation
            ):
                if not running.stopped:
                    await self._stop(running, "restarting by request")
                running.generation, running.crashes, running.failed = row.generation, [], ""
                try:
                    await self._start(running)
                    await self._wait_healthy(running)
                    await self._route(running, routed=True)
                except StartFailed as failure:  # failed, not stopped: no retry loop
                    await self._kill(running)
                    running.failed = str(failure)
                    await self._close_api(running)
                    await asyncio.to_thread(self._revoke_credential, running)
                    await asyncio.to_thread(
                        self._report, running.machine_id, state="failed", reason=str(failure)
                    )
            running.generation = row.generation

    async def supervise(self) -> None:
        """Checks for started machines; restarts (with backoff) for crashed ones. During an
        app's rollout or request, only a routed machine that died is dealt with (unrouted)."""
        now = time.monotonic()
        if self._isolated is None and self._isolation_installed:
            await self._isolate()  # the last update failed: try again
        due = []
        for running in list(self.machines.values()):
            if running.stopped or running.failed:
                continue
            if self._busy(running.app_id):
                # A rollout or request owns the app's machines; a routed one that died is
                # still taken out of the route table now (it restarts once that work is done).
                if (
                    not running.machine.running
                    and running.upstream_id is not None
                    and running.restart_at == 0.0
                ):
                    await self._crashed(running, now)
                continue
            if not running.machine.running:
                await self._crashed(running, now)
                continue
            if now >= running.next_check:
                due.append(running)
            if now - running.credential_at > CREDENTIAL_REFRESH:
                await self._refresh_credential(running)
        await asyncio.gather(*(self._check(r) for r in due))

    async def _refresh_credential(self, running: Running) -> None:
        """Machine tokens expire (30 days); a long-running machine's local API gets a fresh one
        every day, and the old one is revoked."""
        old = running.credential_id
        credential, running.credential_id, identity = await asyncio.to_thread(
            self._credential, running
        )
        running.credential_at = time.monotonic()
        if running.api is not None:
            running.api.check = MachineCredentialCheck(self.services, credential, identity)
        del credential
        await asyncio.to_thread(self._revoke_token, old)

    async def _check(self, running: Running) -> None:
        check = self._check_of(running.config)
        running.next_check = time.monotonic() + self._interval(check)
        ok, detail = await self._probe(running, check)
        running.failures = 0 if ok else running.failures + 1
        if ok and not running.healthy:
            running.healthy = True
            await self._route(running, routed=True)
            await asyncio.to_thread(
                self._report, running.machine_id, state="started", health="passing", reason=""
            )
        elif not ok and running.healthy and running.failures >= FAILING_AFTER:
            running.healthy = False
            await self._route(running, routed=False)
            await asyncio.to_thread(
                self._report, running.machine_id, health="failing", reason=f"check: {detail}"
            )

    async def _crashed(self, running: Running, now: float) -> None:
        if running.restart_at == 0.0:  # first noticed: take it out of the route table
            code = running.machine.process.returncode if running.machine.process else None
            running.crashes = [t for t in running.crashes if now - t < CRASH_WINDOW] + [now]
            running.healthy = False
            await self._route(running, routed=False)
            await asyncio.to_thread(self._revoke_credential, running)
            if len(running.crashes) >= CRASH_LIMIT:
                running.failed = f"exited {len(running.crashes)} times in {CRASH_WINDOW:.0f}s"
                log.error("machine %s failed: %s", running.machine_id, running.failed)
                await asyncio.to_thread(
                    self._report, running.machine_id, state="failed", health="failing",
                    reason=f"{running.failed} (last exit code {code})",
                )  # fmt: skip
                return
            running.restart_at = now + min(2 ** len(running.crashes) * 0.25, 10.0)
            await asyncio.to_thread(
                self._report, running.machine_id, state="starting", health="failing",
                reason=f"exited with code {code}; restarting",
            )  # fmt: skip
            return
        if now < running.restart_at:
            return
        running.restart_at = 0.0
        await self._start(running)
        running.next_check = 0.0  # route to it again once a check passes

    async def shutdown(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await asyncio.gather(
            *(self._discard(r, isolate=False) for r in list(self.machines.values()))
        )
        if self._isolation_installed:
            await asyncio.to_thread(drop_org_table, self._isolation_tag)
            self._isolated, self._isolation_installed = None, False
        with contextlib.suppress(OSError):
            self.machines_dir.rmdir()  # once empty: nothing of this platform's machines stays
        if self._cgroups is not None:
            await asyncio.to_thread(self._cgroups.remove_all)
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def main() -> None:
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
    print(json.dumps({"stopped": True}), flush=True)


if __name__ == "__main__":
    main()
