"""The README's first command: `aero up` on a fresh data directory deploys examples/hello and
prints its URL; the app serves through the edge over HTTPS with its secret set (and never
shown), its WebSocket echo works over wss:// from its own origin only, and a second start
does not deploy it again."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websockets.sync.client as ws_client
from websockets.exceptions import ConnectionClosed, InvalidStatus

from aerodrome import example
from aerodrome.cli.up import deploy_example
from aerodrome.config import Settings
from tests import wss
from tests.cli.conftest import AERO, free_port, read_env, start_platform, stop_platform

HOST = "hello.localhost"


@dataclass
class Started:
    data_dir: Path
    api_port: int
    https_port: int
    env: dict[str, str]
    banner: str  # what `aero up` printed once it was up
    process: subprocess.Popen[str]


def read_banner(process: subprocess.Popen[str], last: str, timeout: float = 30.0) -> str:
    """The lines `aero up` printed, up to and including the one starting with `last`."""
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith(last):
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return "".join(lines)


@pytest.fixture(scope="module")
def first_start(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    data_dir = tmp_path_factory.mktemp("example") / "data"
    api_port, https_port = free_port(), free_port()
    flags = ["--https-port", str(https_port), "--http-port", str(free_port())]
    flags += ["--metrics-port", str(free_port()), "--edge-workers", "1", "--json"]
    process = start_platform(data_dir, api_port, extra=flags, example=True)
    try:
        banner = read_banner(process, "}")  # --json: one object, written before aero.env
        env = read_env(data_dir / "aero.env")
        yield Started(data_dir, api_port, https_port, env, banner, process)
    finally:
        if process.poll() is None:  # the last test stops it itself
            stop_platform(process)


def get_page(started: Started, ready: str = "release <b>", timeout: float = 60.0) -> str:
    """GET https://hello.localhost:PORT/ through the edge (127.0.0.1, the name in SNI and
    Host) until the body holds `ready`: the agent rolls the release out asynchronously."""
    trust = ssl.create_default_context(cafile=started.env["AERO_CA_BUNDLE"])
    deadline = time.monotonic() + timeout
    body = ""
    with httpx.Client(verify=trust, timeout=5.0) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get(
                    f"https://127.0.0.1:{started.https_port}/",
                    headers={"host": f"{HOST}:{started.https_port}"},
                    extensions={"sni_hostname": HOST},
                )
                body = response.text
                if response.status_code == 200 and ready in body:
                    return body
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
    raise AssertionError(f"{HOST} did not serve in {timeout:.0f}s; last body: {body[:300]!r}")


def session_key(data_dir: Path) -> str:
    """The secret as the machine got it, read from its process's environment: the platform
    never shows a value, so this is the only way a test can know what must not appear."""
    machines = str(Settings.from_env(data_dir).machines_dir)
    for proc in Path("/proc").iterdir():
        try:
            if not str((proc / "cwd").readlink()).startswith(machines):
                continue
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"SESSION_KEY="):
                return item.split(b"=", 1)[1].decode()
    raise AssertionError("no machine process with SESSION_KEY in its environment")


def test_first_start_deploys_the_example_and_prints_its_url(first_start: Started) -> None:
    info = json.loads(first_start.banner)
    url = f"https://{HOST}:{first_start.https_port}/"
    assert info["example"]["url"] == url
    assert info["example"]["app"] == "hello" and info["example"]["release"] == 1
    curl = info["example"]["curl"]
    assert f"--cacert {first_start.env['AERO_CA_BUNDLE']}" in curl
    assert f"--resolve {HOST}:{first_start.https_port}:127.0.0.1 {url}" in curl
    assert not (first_start.data_dir / example.PENDING).exists()


def test_the_example_serves_over_https_with_its_secret_unseen(first_start: Started) -> None:
    body = get_page(first_start)
    assert "release <b>1</b>" in body and "region <b>local</b>" in body
    key = session_key(first_start.data_dir)
    assert len(key) >= 32
    assert f"SESSION_KEY is set ({len(key)} bytes)" in body
    assert key not in body
    logs = [p for p in (first_start.data_dir / "logs").rglob("*") if p.is_file()]
    assert logs and not [p for p in logs if key.encode() in p.read_bytes()]
    assert key not in first_start.banner


def test_the_websocket_echo_works_over_wss_from_its_own_origin_only(first_start: Started) -> None:
    get_page(first_start)
    port = first_start.https_port
    trust = ssl.create_default_context(cafile=first_start.env["AERO_CA_BUNDLE"])

    def connect(origin: str) -> ws_client.ClientConnection:
        return wss.connect(HOST, port, "/ws", context=trust, origin=origin)

    with connect(f"https://{HOST}:{port}") as ws:
        ws.send("hello through the edge")
        assert ws.recv(timeout=10) == "hello through the edge"
        ws.send(b"\x00\x01" * 20_000)
        assert ws.recv(timeout=10) == b"\x00\x01" * 20_000
    with pytest.raises(InvalidStatus) as refused:
        connect("https://evil.example")
    assert refused.value.response.status_code == 403


def test_a_redeploy_keeps_open_websockets_until_the_old_machine_says_going_away(
    first_start: Started, tmp_path: Path
) -> None:
    """The drain: a new release takes new connections; an open WebSocket stays on the old
    machine, still echoing, until its kill signal makes the app close it (1001), after which a
    new connection reaches the new release."""
    get_page(first_start)
    port = first_start.https_port
    trust = ssl.create_default_context(cafile=first_start.env["AERO_CA_BUNDLE"])
    with wss.connect(HOST, port, "/ws", context=trust, origin=f"https://{HOST}:{port}") as ws:
        _redeploy_while_open(first_start, ws, tmp_path)


def _redeploy_while_open(
    first_start: Started, ws: ws_client.ClientConnection, tmp_path: Path
) -> None:
    ws.send("before")
    assert ws.recv(timeout=10) == "before"
    source = tmp_path / "hello"
    shutil.copytree(example.example_dir(), source)
    config = source / "aerodrome.toml"
    config.write_text(config.read_text() + '\n[env]\nEDITION = "second"\n')
    deployed = subprocess.run(
        [*AERO, "deploy", "-c", str(config), "--json"],
        env={**os.environ, **first_start.env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    number = json.loads(deployed.stdout)["release"]["number"]
    assert f"release <b>{number}</b>" in get_page(first_start, f"release <b>{number}</b>")
    with pytest.raises(ConnectionClosed) as closed:  # the old machine is stopped meanwhile
        while True:
            ws.send("still here")
            assert ws.recv(timeout=15) == "still here"
            time.sleep(0.1)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


def test_a_second_start_serves_it_again_without_deploying_it_again(
    first_start: Started,
) -> None:
    def releases(env: dict[str, str]) -> list[int]:
        listed = httpx.get(
            f"http://127.0.0.1:{first_start.api_port}/v1/apps/hello/releases",
            headers={"authorization": f"Bearer {env['AERO_API_TOKEN']}"},
            timeout=10,
        ).json()
        return [r["number"] for r in listed]

    before = releases(first_start.env)
    stop_platform(first_start.process)
    https_port = free_port()
    process = start_platform(
        first_start.data_dir,
        first_start.api_port,
        extra=["--https-port", str(https_port), "--http-port", str(free_port()),
               "--metrics-port", str(free_port()), "--edge-workers", "1"],
        example=True,
    )  # fmt: skip
    try:
        banner = read_banner(process, "  stop with Ctrl-C")
        assert "aerodrome is up" in banner
        assert not [line for line in banner.splitlines() if line.startswith("  example")]
        env = read_env(first_start.data_dir / "aero.env")
        assert releases(env) == before  # no new release
        # The machines of the previous run are gone; the agent runs the latest release afresh
        # and the edge routes only to the new machine (no stale upstream answering 502).
        again = Started(first_start.data_dir, first_start.api_port, https_port, env, "", process)
        assert f"release <b>{before[0]}</b>" in get_page(again)
        upstreams = httpx.get(
            f"http://127.0.0.1:{first_start.api_port}/v1/apps/hello/upstreams",
            headers={"authorization": f"Bearer {env['AERO_API_TOKEN']}"},
            timeout=10,
        ).json()
        assert len(upstreams) == 1
    finally:
        stop_platform(process)


def test_without_a_checkout_the_example_is_skipped_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(example, "REPO", tmp_path / "site-packages")
    settings = Settings.from_env(tmp_path)
    example.mark_pending(tmp_path)
    result = deploy_example(settings, "http://127.0.0.1:9", "no-token", 8443, "127.0.0.1", None)
    assert result["code"] == "example_missing"
    missing = tmp_path / "site-packages" / "examples" / "hello"
    assert result["error"] == f"no example app at {missing}"
    assert not example.is_pending(tmp_path), "nothing to retry at the next start"
