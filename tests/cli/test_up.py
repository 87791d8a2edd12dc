"""`aero up` as an operator sees it: first run, second run, stop."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx

from tests.cli.conftest import AERO, free_port, read_env, start_platform, stop_platform


def _api_children(data_dir: Path) -> list[int]:
    out = subprocess.run(
        [
            "pgrep",
            "-f",
            "aerodrome.api.serve|aerodrome.edge|aerodrome.certs.manager|aerodrome.runtime.agent",
        ],
        capture_output=True,
        text=True,
    )
    pids = []
    for pid in out.stdout.split():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if str(data_dir).encode() in environ:
            pids.append(int(pid))
    return pids


def test_second_run_reuses_state_and_sigterm_stops_everything(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    first = start_platform(data_dir, port)
    token = read_env(data_dir / "aero.env")["AERO_API_TOKEN"]
    assert len(_api_children(data_dir)) >= 5, "API, certificates, edge, its worker and the agent"
    output = stop_platform(first)
    assert first.returncode == 0
    assert "aerodrome is up" in output
    deadline = time.monotonic() + 20
    while _api_children(data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _api_children(data_dir), "SIGTERM must stop every process aero up started"

    second = start_platform(data_dir, port)
    try:
        assert read_env(data_dir / "aero.env")["AERO_API_TOKEN"] == token
        who = httpx.get(
            f"http://127.0.0.1:{port}/v1/auth/whoami",
            headers={"authorization": f"Bearer {token}"},
            timeout=5,
        )
        assert who.status_code == 200 and who.json()["user"]["email"] == "admin@localhost"
    finally:
        stop_platform(second)


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AERO_")}
        result = subprocess.run(
            [*AERO, "up", "--data-dir", str(tmp_path / "d"), "--api-port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "--api-port" in result.stderr
