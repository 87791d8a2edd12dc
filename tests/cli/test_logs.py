"""`aero logs` against a real `aero up`: a deployed app's output, its secret masked in every
form, shown once (people and `--json`) and followed (`-f`) until Ctrl-C."""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
import urllib.parse
import uuid
from typing import Any

import httpx
import pytest

from aerodrome.cli import logs as cli_logs
from aerodrome.config import Settings
from aerodrome.errors import AeroError
from tests.cli.conftest import AERO, Platform

APP = "logs-web"
# Prints the secret raw, base64-encoded, URL-encoded, JSON-escaped, split across two writes
# and on stderr, then serves (http.server writes a line to stderr for every request, which is
# what the follow test waits for).
SERVER = """\
import base64, http.server, json, os, sys, time, urllib.parse
secret = os.environ["LOG_CANARY"]
print("starting with " + secret, flush=True)
print("encoded " + base64.b64encode(secret.encode()).decode(), flush=True)
print("url " + urllib.parse.quote(secret, safe=""), flush=True)
print("json " + json.dumps({"token": secret}), flush=True)
half = len(secret) // 2
sys.stdout.write("split " + secret[:half]); sys.stdout.flush(); time.sleep(0.2)
sys.stdout.write(secret[half:] + "\\n"); sys.stdout.flush()
print("to stderr " + secret, file=sys.stderr, flush=True)
http.server.HTTPServer(
    ("127.0.0.1", int(os.environ["PORT"])), http.server.SimpleHTTPRequestHandler
).serve_forever()
"""
TOML = f"""\
app = "{APP}"

[processes]
app = "python3 server.py"
"""
HUMAN = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (mch_[a-z2-7]{24})\[local\] (stdout|stderr)  (.*)"
)


@pytest.fixture(scope="module")
def canary(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`APP` deployed, with the secret `LOG_CANARY` (whose value this is) in its environment."""
    value = f'canary/{uuid.uuid4().hex}+"quoted" value'  # its encodings differ from it
    platform.aero("orgs", "create", "logs-org")
    platform.aero("apps", "create", APP, "--org", "logs-org")
    platform.aero("secrets", "set", "-a", APP, "LOG_CANARY=-", stdin=value)
    source = tmp_path_factory.mktemp("logs-app")
    (source / "server.py").write_text(SERVER)
    (source / "aerodrome.toml").write_text(TOML)
    platform.aero("deploy", "-c", str(source / "aerodrome.toml"))
    return value


def _forms(canary: str) -> list[str]:
    return [
        canary,
        base64.b64encode(canary.encode()).decode(),
        urllib.parse.quote(canary, safe=""),
        json.dumps(canary)[1:-1],
        canary[: len(canary) // 2],  # a split write must not leak its first half either
    ]


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def _wait_for_lines(platform: Platform, count: int) -> list[dict[str, Any]]:
    """The app's lines once it has printed at least `count` (60 s at most)."""
    deadline = time.monotonic() + 60
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        lines = _json_lines(platform.aero("logs", "-a", APP, "--json").stdout)
        if len(lines) >= count:
            return lines
        time.sleep(0.5)
    raise AssertionError(f"the app printed {len(lines)} lines in 60 s: {lines}")


def test_logs_show_the_apps_output_with_its_secret_masked(platform: Platform, canary: str) -> None:
    lines = _wait_for_lines(platform, 6)
    assert {(x["stream"], x["message"]) for x in lines[:6]} == {
        ("stdout", "starting with [REDACTED]"),
        ("stdout", "encoded [REDACTED]"),
        ("stdout", "url [REDACTED]"),
        ("stdout", 'json {"token": "[REDACTED]"}'),
        ("stdout", "split [REDACTED]"),
        ("stderr", "to stderr [REDACTED]"),
    }
    machine = lines[0]["machine"]
    for line in lines:
        assert set(line) == {"seq", "time", "machine", "region", "stream", "message"}
        assert line["machine"] == machine and line["region"] == "local"
    # For people: TIME MACHINE[REGION] STREAM  MESSAGE.
    human = platform.aero("logs", "-a", APP)
    shown = [HUMAN.fullmatch(row) for row in human.stdout.splitlines()]
    assert all(shown), human.stdout
    assert ("stdout", "starting with [REDACTED]") in {(m[2], m[3]) for m in shown if m}
    assert {m[1] for m in shown if m} == {machine}
    # -n, --machine.
    assert len(_json_lines(platform.aero("logs", "-a", APP, "-n", "1", "--json").stdout)) == 1
    other = "mch_" + "a" * 24
    filtered = platform.aero("logs", "-a", APP, "--machine", other, "--json")
    assert filtered.stdout == ""
    # Nowhere in any output: not raw, not base64.
    for result in (human, filtered, platform.aero("logs", "-a", APP, "--json")):
        for form in _forms(canary):
            assert form not in result.stdout + result.stderr


def test_logs_follow_picks_up_new_lines_until_ctrl_c(platform: Platform, canary: str) -> None:
    _wait_for_lines(platform, 3)
    upstreams = platform.aero_json("upstreams", "list", "-a", APP)
    address = upstreams[0]["address"]
    follower = subprocess.Popen(
        [*AERO, "logs", "-a", APP, "-f", "--json"],
        env={**os.environ, **platform.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    received: queue.Queue[str] = queue.Queue()
    everything: list[str] = []

    def read() -> None:
        for row in follower.stdout or ():
            everything.append(row)
            received.put(row)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        _expect(received, lambda line: line["message"] == "starting with [REDACTED]")
        marker = f"/marker-{uuid.uuid4().hex}"
        assert httpx.get(f"http://{address}{marker}", timeout=10).status_code == 404
        line = _expect(received, lambda line: marker in line["message"])
        assert line["stream"] == "stderr"  # http.server's request log
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=15) == 0  # Ctrl-C ends following cleanly
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    reader.join(timeout=10)
    assert follower.stderr is not None
    errors = follower.stderr.read()
    assert "Traceback" not in errors
    for form in _forms(canary):
        assert form not in "".join(everything) + errors


def _expect(received: queue.Queue[str], match: Any, timeout: float = 30) -> dict[str, Any]:
    """The first JSON line `match`es, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = json.loads(received.get(timeout=left))
        except queue.Empty:
            break
        if match(line):
            return dict(line)
    raise AssertionError(f"no matching line within {timeout} s")


def test_logs_of_an_unknown_app_say_what_to_do(platform: Platform) -> None:
    result = platform.aero("logs", "-a", "no-such-app", check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert "app 'no-such-app' not found" in result.stderr
    assert "aero apps list" in result.stderr


# -- following, without a platform: an API that fails now and then -------------------------


class FlakyAPI:
    """Answers `get` from a script: a dict is returned, an exception raised."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.calls: list[dict[str, Any]] = []

    def get(self, path: str, params: dict[str, Any]) -> Any:
        self.calls.append(params)
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


def _line(seq: int, message: str) -> dict[str, Any]:
    return {"seq": seq, "time": "2026-11-30T12:00:01.250000+00:00", "machine": "mch_x",
            "region": "local", "stream": "stdout", "message": message}  # fmt: skip


def _run(monkeypatch: pytest.MonkeyPatch, api: FlakyAPI, *, json_mode: bool = False) -> None:
    monkeypatch.setattr(cli_logs, "client", lambda: api)
    monkeypatch.setattr(cli_logs.time, "sleep", lambda seconds: None)
    cli_logs.logs(APP, machine=None, follow=True, lines=10, json_mode=json_mode)


def test_following_survives_transient_errors_and_ends_on_ctrl_c(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    api = FlakyAPI(
        {"lines": [_line(1, "first \x1b[2J\x07 tab\there")], "next": 1},
        AeroError("cannot reach the aerodrome API at http://x", code="unreachable"),
        AeroError("internal error", code="internal_error", status=500),
        {"lines": [_line(2, "second")], "next": 2},
        {"lines": [], "next": 2},
        KeyboardInterrupt(),
    )
    _run(monkeypatch, api)  # returns: exit status 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "2026-11-30T12:00:01Z mch_x[local] stdout  first \\x1b[2J\\x07 tab\there",
        "2026-11-30T12:00:01Z mch_x[local] stdout  second",
    ]
    assert "cannot reach the aerodrome API" in err and "internal error" in err
    assert "retrying" in err
    assert [c.get("after") for c in api.calls] == [None, 1, 1, 1, 2, 2]
    assert all(c["wait"] > 0 for c in api.calls[1:])


def test_following_stops_on_errors_that_retrying_cannot_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    denied = AeroError("token revoked", code="revoked", status=401)
    api = FlakyAPI({"lines": [_line(1, "one")], "next": 1}, denied)
    with pytest.raises(AeroError) as raised:
        _run(monkeypatch, api, json_mode=True)
    assert raised.value is denied
    assert [json.loads(row) for row in capsys.readouterr().out.splitlines()] == [_line(1, "one")]


def test_no_form_of_the_secret_is_stored_anywhere_on_disk(platform: Platform, canary: str) -> None:
    _wait_for_lines(platform, 6)
    forms = [form.encode() for form in _forms(canary)]
    roots = [platform.data_dir, Settings.from_env(platform.data_dir).machines_dir]
    scanned = 0
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_socket():
                data = path.read_bytes()
                scanned += 1
                assert not [f for f in forms if f in data], path
    assert scanned > 10  # the database, logs, artifacts, machine trees were all read
