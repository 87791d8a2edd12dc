"""A canary secret set through the CLI never appears in plaintext anywhere: not under the
data directory, not in the database (SQLite or PostgreSQL, files and dump), not in any log
at debug level, not in any API response or CLI output, not in any process's argv."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aerodrome.cli.secrets import parse_assignments
from aerodrome.errors import AeroError
from tests.cli.conftest import Platform, free_port, read_env, start_platform, stop_platform
from tests.postgres import PostgresServer


def _forms(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, base64.b64encode(raw), raw.hex().encode(), json.dumps(value).encode()]


def _files_holding(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {n[:12]!r}…" for n in needles if n in data]
    return found


def _argv_holding(needles: list[bytes]) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        found += [proc.name for n in needles if n in cmdline]
    return found


@pytest.fixture(params=["sqlite", "postgresql"])
def canary_platform(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Platform, PostgresServer | None]]:
    env = {"AERO_LOG_LEVEL": "debug"}
    server: PostgresServer | None = None
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres")
        env["AERO_DATABASE_URL"] = server.create_database()
    data_dir = tmp_path / "data"
    port = free_port()
    process = start_platform(data_dir, port, env_extra=env)
    try:
        yield Platform(data_dir, port, process, read_env(data_dir / "aero.env")), server
    finally:
        stop_platform(process)


def test_canary_secret_never_appears_in_plaintext(
    canary_platform: tuple[Platform, PostgresServer | None],
) -> None:
    platform, server = canary_platform
    canary = f"canary-{uuid.uuid4().hex}"
    other = f"canary-{uuid.uuid4().hex}"
    needles = _forms(canary) + _forms(other)
    outputs: list[str] = []

    def run(*args: str, stdin: str | None = None, check: bool = True) -> None:
        result = platform.aero(*args, stdin=stdin, check=check)
        outputs.extend([result.stdout, result.stderr])

    run("orgs", "create", "canary-org")
    run("apps", "create", "canary-app", "--org", "canary-org")
    run("secrets", "set", "-a", "canary-app", "CANARY=-", stdin=canary)
    run("secrets", "import", "-a", "canary-app", "--stage", stdin=f'OTHER="{other}"\nPLAIN=x1234\n')
    run("secrets", "deploy", "-a", "canary-app")
    run("secrets", "set", "-a", "canary-app", "CANARY=-", stdin=canary)  # unchanged
    # A failing request that carries the value: the error must not echo it.
    failed = platform.aero(
        "secrets", "set", "-a", "canary-app", "bad-name=-", stdin=canary, check=False
    )
    assert failed.returncode == 1 and "invalid secret name" in failed.stderr
    outputs.extend([failed.stdout, failed.stderr])
    # The value pasted alone, without its NAME=: refused without echoing the line.
    bare = platform.aero("secrets", "import", "-a", "canary-app", stdin=canary + "\n", check=False)
    assert bare.returncode == 1 and "no NAME=" in bare.stderr
    outputs.extend([bare.stdout, bare.stderr])
    run("secrets", "list", "-a", "canary-app")
    run("secrets", "list", "-a", "canary-app", "--json")
    run("secrets", "history", "-a", "canary-app", "CANARY", "--json")
    run("releases", "-a", "canary-app", "--json")
    run("keys", "rotate")
    run("audit", "list", "--json", "--limit", "1000")

    # Every GET route the admin can call, raw.
    headers = {"authorization": f"Bearer {platform.env['AERO_API_TOKEN']}"}
    base = f"http://127.0.0.1:{platform.port}"
    for path in (
        "/v1/apps/canary-app/secrets",
        "/v1/apps/canary-app/releases",
        "/v1/keys",
        "/v1/apps/canary-app/secrets/CANARY/history",
        "/v1/audit?limit=1000",
        "/v1/changes",
        "/v1/openapi.json",
    ):
        response = httpx.get(base + path, headers=headers, timeout=10)
        assert response.status_code == 200, path
        outputs.append(response.text + json.dumps(dict(response.headers)))

    assert "CANARY" in "".join(outputs)  # the name is visible, as it should be
    leaked = [n for n in needles for text in outputs if n.decode() in text]
    assert not leaked, "a value reached a CLI output or an API response"
    assert not _argv_holding(needles), "a value is in some process's argv"
    assert not _files_holding(platform.data_dir, needles), "a value is under the data directory"

    if server is not None:
        psql = [
            str(server.bindir / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(server.port),
            "-U",
            "postgres",
            "-c",
            "CHECKPOINT",
        ]
        subprocess.run(["runuser", "-u", "postgres", "--", *psql], check=True, capture_output=True)
        assert not _files_holding(server.datadir, needles), "a value is in PostgreSQL's files"
        dump_cmd = [
            str(server.bindir / "pg_dumpall"),
            "-h",
            "127.0.0.1",
            "-p",
            str(server.port),
            "-U",
            "postgres",
        ]
        dump = subprocess.run(
            ["runuser", "-u", "postgres", "--", *dump_cmd], check=True, capture_output=True
        ).stdout
    else:
        with sqlite3.connect(platform.data_dir / "aerodrome.db") as db:
            dump = "\n".join(db.iterdump()).encode()
    assert b"canary-app" in dump  # the dump did see our data
    assert not [n for n in needles if n in dump], "a value is in the database dump"


def test_an_argument_without_a_name_is_not_echoed() -> None:
    with pytest.raises(AeroError) as refused:
        parse_assignments(["GOOD=1", "s3cr3t-typed-alone"])
    assert "s3cr3t" not in refused.value.message + (refused.value.hint or "")
    assert "argument 2" in refused.value.message
