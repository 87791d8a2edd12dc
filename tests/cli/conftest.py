"""A real `aero up` in a subprocess, and a helper that runs `aero` commands against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aerodrome.runtime.agent import free_port
from aerodrome.up import env_file_version
from aerodrome.up import read_env_file as read_env

AERO = [sys.executable, "-m", "aerodrome.cli.main"]


@dataclass
class Platform:
    data_dir: Path
    port: int
    process: subprocess.Popen[str]
    env: dict[str, str]

    @property
    def https_port(self) -> int:
        return int(self.env["AERO_API_URL"].rsplit(":", 1)[1].rstrip("/"))

    def aero(
        self,
        *args: str,
        token: str | None = None,
        stdin: str | None = None,
        check: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env, **(extra_env or {})}
        if token is not None:
            env["AERO_API_TOKEN"] = token
        result = subprocess.run(
            [*AERO, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"aero {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def aero_json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self.aero(*args, "--json", **kw).stdout)


def start_platform(
    data_dir: Path,
    port: int,
    extra: list[str] | None = None,
    env_extra: dict[str, str] | None = None,
    example: bool = False,
) -> subprocess.Popen[str]:
    """`aero up` on DATA_DIR, returned once it wrote aero.env. Without `example`, a fresh data
    directory starts without the example app (faster; test_example.py deploys it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AERO_")}
    env.update(env_extra or {})
    flags = [
        "--https-port",
        str(free_port()),
        "--http-port",
        str(free_port()),
        "--metrics-port",
        str(free_port()),
        "--edge-workers",
        "1",
    ]
    if extra and "--https-port" in extra:
        flags = []
    if not example:
        flags.append("--no-example")
    env_file = data_dir / "aero.env"
    previous = env_file_version(env_file)  # a second run finds the first run's copy
    process = subprocess.Popen(
        [*AERO, "up", "--data-dir", str(data_dir), "--api-port", str(port), *flags, *(extra or [])],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"aero up exited: {process.stdout.read() if process.stdout else ''}"
            )
        if env_file_version(env_file) not in (None, previous):  # once everything answers
            return process
        time.sleep(0.2)
    process.kill()
    raise AssertionError("aero up did not become ready in 90 s")


def stop_platform(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        raise AssertionError("aero up did not stop within 30 s of SIGTERM") from None
    return out


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    data_dir = tmp_path_factory.mktemp("platform") / "data"
    port = free_port()
    process = start_platform(data_dir, port)
    try:
        yield Platform(data_dir, port, process, read_env(data_dir / "aero.env"))
    finally:
        stop_platform(process)
