"""The edge's request path compiled (mypyc) and as Python: a build is used only while it
matches the sources on disk, and the edge serves alike either way."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aerodrome.edge.native import MANIFEST, build, build_root, compiled_dir, is_compiled
from aerodrome.runtime.agent import free_port
from tests.cli import upstreams
from tests.edge import support

WHERE = (
    "import aerodrome.edge.proxy as p, aerodrome.edge.worker as w, aerodrome.edge.tls as t; "
    "print(p.__file__, w.__file__, t.__file__)"
)
NO_BUILD = "no compiled build matches the sources: run `python -m aerodrome.edge.build`"


def module_files(env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", WHERE], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.split()


def test_the_request_path_runs_compiled() -> None:
    if compiled_dir() is None:
        pytest.skip(NO_BUILD)
    assert is_compiled()


def test_a_build_that_no_longer_matches_the_sources_is_not_used(tmp_path: Path) -> None:
    if compiled_dir() is None:
        pytest.skip(NO_BUILD)
    copy = tmp_path / "native"
    shutil.copytree(build_root(), copy)
    env = {**os.environ, "AERO_EDGE_NATIVE_DIR": str(copy)}
    proxy, worker, tls = module_files(env)
    assert proxy.startswith(str(copy)) and proxy.endswith(".so")
    assert worker.startswith(str(copy)) and worker.endswith(".so")
    assert tls.endswith("tls.py")  # not compiled: found in the source tree as before

    manifest = copy / MANIFEST
    good = json.loads(manifest.read_text())
    for edited_file in ("edge/proxy.py", "platform/http_policy.py"):  # a module, or a type it uses
        edited = json.loads(manifest.read_text())
        edited["sources"][edited_file] = "0" * 64  # as if edited after the build
        manifest.write_text(json.dumps(edited))
        assert all(path.endswith(".py") for path in module_files(env))  # all of it
        manifest.write_text(json.dumps(good))

    other_abi = {**good, "ext_suffix": ".other" + str(good["ext_suffix"])}
    manifest.write_text(json.dumps(other_abi))
    assert all(path.endswith(".py") for path in module_files(env))

    manifest.write_text(json.dumps(good))
    next((copy / "aerodrome" / "edge").glob("worker.*.so")).unlink()  # a build cut short
    assert all(path.endswith(".py") for path in module_files(env))

    assert all(path.endswith(".py") for path in module_files({**env, "AERO_EDGE_NATIVE": "0"}))


def test_a_build_never_replaces_a_directory_that_is_not_one(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("an operator's file")  # AERO_EDGE_NATIVE_DIR set wrong
    with pytest.raises(RuntimeError, match="not replacing it"):
        build(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "an operator's file"


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    http_port = free_port()
    with upstreams.running(http_port, free_port()):
        yield http_port


def exchange(port: int, request: bytes, context: ssl.SSLContext | None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        sock = context.wrap_socket(raw, server_hostname="web.test") if context else raw
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_the_edge_serves_alike_compiled_and_as_python(
    compiled: bool, upstream: int, tmp_path: Path
) -> None:
    if compiled and compiled_dir() is None:
        pytest.skip(NO_BUILD)
    env = {"AERO_EDGE_NATIVE": "1" if compiled else "0"}
    where = module_files({**os.environ, **env})[0]
    assert where.endswith(".so") == compiled
    with support.static_edge(tmp_path, upstream, env=env) as edge:
        https, http = edge.https_port, edge.http_port
        request = b"GET /hello?x=1 HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n"
        answer = exchange(https, request, edge.client_context)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"strict-transport-security: max-age=31536000" in head.lower()
        seen = json.loads(body)
        assert seen["path"] == "/hello?x=1"
        assert ["x-forwarded-proto", "https"] in seen["headers"]
        redirect = exchange(http, request, None)
        assert redirect.startswith(b"HTTP/1.1 301 ")
        assert b"location: https://web.test:%d/hello?x=1" % https in redirect.lower()
