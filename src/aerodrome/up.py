"""`aero up`: bootstrap a single-node platform and supervise its processes.

The first run creates the keys, the database, an admin user and a session token; every run
(re)writes `DATA/aero.env` once the API answers. Each component runs as a child process the
supervisor restarts with backoff; Ctrl-C or SIGTERM stops them all. Later components (edge,
agent) are more `Component`s in the same list.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import select

from aerodrome.config import Settings
from aerodrome.errors import AeroError
from aerodrome.keyfiles import write_private_text
from aerodrome.platform import orgs as org_rules
from aerodrome.platform import tokens as token_records
from aerodrome.services import Services
from aerodrome.store.models import User
from aerodrome.tokens.mint import Scope
from aerodrome.tokens.verify import VerifiedToken

ENV_FILE = "aero.env"


@dataclass
class Component:
    name: str
    argv: list[str]
    ready_url: str | None = None
    ready_any_status: bool = False  # any HTTP answer means ready (the edge: 404 for no host)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0

    def start(self, log_dir: Path) -> None:
        log = (log_dir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            self.argv,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started_at = time.monotonic()

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class Bootstrap:
    admin_email: str
    token: str = field(repr=False)
    new_token: bool
    first_run: bool = False  # this run created the platform admin: a fresh data directory


def bootstrap(services: Services, admin_email: str) -> Bootstrap:
    """Ensure a platform admin and a usable session token for it.

    An existing aero.env whose token still verifies is kept, so a second run does not
    invalidate a configured shell."""
    env_file = services.settings.data_dir / ENV_FILE
    current = read_env_file(env_file).get("AERO_API_TOKEN")
    if current:
        verified = services.verifier.verify(current)
        if isinstance(verified, VerifiedToken) and verified.kind == "session":
            with services.store.read() as session:
                user = session.get(User, verified.user_id)
            if user is not None and user.is_platform_admin:
                return Bootstrap(user.email, current, new_token=False)
    with services.store.write() as tx:
        admin = (
            tx.session.execute(
                select(User).where(User.is_platform_admin.is_(True)).order_by(User.created_at)
            )
            .scalars()
            .first()
        )
        first_run = admin is None
        if admin is None:
            admin = org_rules.get_or_create_user(tx, admin_email, name="admin", platform_admin=True)
        minted, _ = token_records.create_token(
            tx,
            services.root,
            Scope("session", user_id=admin.id),
            created_by=admin.id,
            name="aero up bootstrap session",
        )
        email = admin.email
    return Bootstrap(email, minted.token, new_token=True, first_run=first_run)


def read_env_file(path: Path) -> dict[str, str]:
    """The settings `write_env_file` wrote (also for scripts and tests that drive the CLI)."""
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            out[key.strip()] = value.strip().strip("'\"")
    return out


def env_file_version(path: Path) -> int | None:
    """Which copy of aero.env is on disk (its inode: `write_env_file` replaces the file), so a
    script starting `aero up` on a used data directory can wait for this run's copy."""
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def write_env_file(
    path: Path, api_url: str, token: str, public_key: str, ca_bundle: Path | None = None
) -> None:
    """The client settings, mode 0600; written only once the platform answers, so its
    presence means "ready"."""
    lines = [
        "# written by `aero up`: configure a shell with  set -a; . ./aero.env; set +a",
        f"AERO_API_URL={api_url}",
        f"AERO_API_TOKEN={token}",
        f"AERO_TOKEN_PUBLIC_KEY={public_key}",
    ]
    if ca_bundle is not None:
        lines.append(f"AERO_CA_BUNDLE={ca_bundle}")
    write_private_text(path, "\n".join(lines) + "\n")


class Supervisor:
    """Starts components, restarts crashed ones with exponential backoff, stops all on exit."""

    def __init__(
        self, components: list[Component], log_dir: Path, say: Callable[[str], None] = print
    ) -> None:
        self.components = components
        self.log_dir = log_dir
        self.say = say
        self._stopping = False

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def handle_signals(self) -> None:
        """From here on, Ctrl-C and SIGTERM mean an orderly stop, even during start-up."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def start_all(self, timeout: float = 30.0) -> None:
        for component in self.components:
            if self._stopping:
                return
            component.start(self.log_dir)
            if component.ready_url:
                self._wait_ready(component, timeout)

    def _wait_ready(self, component: Component, timeout: float) -> None:
        log = self.log_dir / f"{component.name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping:
            assert component.process is not None
            if component.process.poll() is not None:
                raise AeroError(
                    f"{component.name} exited at start (status {component.process.returncode})",
                    hint=f"see {log}",
                    code="start_failed",
                )
            try:
                status = httpx.get(component.ready_url or "", timeout=1.0).status_code
                if status == 200 or component.ready_any_status:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        if not self._stopping:
            raise AeroError(
                f"{component.name} did not become ready in {timeout:.0f}s",
                hint=f"see {log}",
                code="start_failed",
            )

    def run(self) -> None:
        """Watch the components until a stop is asked for; restart any that exit."""
        backoff: dict[str, float] = {}
        try:
            while not self._stopping:
                for component in self.components:
                    proc = component.process
                    if proc is None or proc.poll() is None:
                        continue
                    delay = backoff.get(component.name, 0.5)
                    if time.monotonic() - component.started_at > 60:
                        delay = 0.5  # it ran a good while: start over
                    self.say(
                        f"{component.name} exited with status {proc.returncode}; "
                        f"restarting in {delay:.1f}s"
                    )
                    time.sleep(delay)
                    backoff[component.name] = min(delay * 2, 30.0)
                    component.restarts += 1
                    component.start(self.log_dir)
                time.sleep(0.2)
        finally:
            self.stop_all()

    def stop_all(self) -> None:
        for component in reversed(self.components):
            component.stop()


def api_component(settings: Settings, host: str, port: int) -> Component:
    return Component(
        name="api",
        argv=[sys.executable, "-m", "aerodrome.api.serve", "--host", host, "--port", str(port)],
        ready_url=f"http://{host}:{port}/v1/health",
        env=_component_env(settings),
    )


def certs_component(settings: Settings) -> Component:
    """The certificate manager: a certificate for every claimed hostname (no ready URL)."""
    return Component(
        name="certs",
        argv=[sys.executable, "-m", "aerodrome.certs.manager"],
        env=_component_env(settings),
    )


@dataclass(frozen=True)
class EdgePorts:
    host: str = "127.0.0.1"
    https: int = 8443
    http: int = 8080
    metrics: int = 9464
    workers: int = 0  # 0: one per core


def edge_component(settings: Settings, ports: EdgePorts, api: tuple[str, int]) -> Component:
    """The edge: HTTPS for every app at APP.DOMAIN and the API at api.DOMAIN."""
    run_dir = settings.data_dir / "run" / "edge"
    argv = [
        sys.executable, "-m", "aerodrome.edge",
        "--host", ports.host,
        "--https-port", str(ports.https),
        "--http-port", str(ports.http),
        "--metrics-port", str(ports.metrics),
        "--domain", settings.domain,
        "--api-upstream", f"{api[0]}:{api[1]}",
        "--run-dir", str(run_dir),
        "--access-log", str(settings.data_dir / "logs" / "edge-access.log"),
    ]  # fmt: skip
    if ports.workers:
        argv += ["--workers", str(ports.workers)]
    return Component(
        name="edge",
        argv=argv,
        ready_url=f"http://{ports.host}:{ports.http}/",
        ready_any_status=True,
        env=_component_env(settings),
    )


def agent_component(settings: Settings) -> Component:
    """The agent: runs each app's latest release as a machine and routes the edge to it."""
    return Component(
        name="agent",
        argv=[sys.executable, "-m", "aerodrome.runtime.agent"],
        env=_component_env(settings),
    )


def _component_env(settings: Settings) -> dict[str, str]:
    return {
        "AERO_DATA_DIR": str(settings.data_dir),
        "AERO_DATABASE_URL": settings.database_url,
        "AERO_DOMAIN": settings.domain,
    }


def wait_for_https(
    url_host: str,
    port: int,
    ca_file: Path | None,
    timeout: float = 60.0,
    address: str = "127.0.0.1",
) -> bool:
    """True once `https://url_host:port/v1/health` answers 200 through the edge (reached at
    `address`) with a certificate `ca_file` (None: the system's roots) vouches for."""
    target = f"[{address}]" if ":" in address else address
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ca_file is None or ca_file.exists():
            try:
                trust = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
                with httpx.Client(verify=trust, timeout=2.0) as client:
                    response = client.get(
                        f"https://{target}:{port}/v1/health",
                        headers={"host": f"{url_host}:{port}"},
                        extensions={"sni_hostname": url_host},
                    )
                if response.status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    return False
