"""`GET /v1/apps/{app}/logs`: the lines the agent stored, by cursor, per machine, to whom may
read them. Lines are written with `LogStore` into the data directory the API reads, as the
agent does."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import pytest

from aerodrome.ids import new_id
from aerodrome.runtime.logstore import LogStore
from aerodrome.runtime.machine import LogLine
from tests.api.test_bad_input import refused
from tests.conftest import World

WEB = "/v1/apps/acme-web/logs"
MACHINE_A = new_id("mch")
MACHINE_B = new_id("mch")


def store_of(world: World) -> LogStore:
    return LogStore(world.services.settings.data_dir / "logs" / "apps")


def write(world: World, app: str, n: int, machine: str = MACHINE_A, stream: str = "stdout") -> None:
    line = LogLine(1_800_000_000.0 + n, machine, stream, f"line {n}")
    store_of(world).append(world.ids[app], line, "local")


def get(world: World, token: str = "acme.admin", path: str = WEB, **params: Any) -> Any:
    response = world.call("GET", path, world.tokens[token], params=params)
    assert response.status_code == 200, response.text
    return response.json()


def messages(body: dict[str, Any]) -> list[str]:
    return [line["message"] for line in body["lines"]]


def test_lines_come_with_time_machine_region_stream_and_message(world: World) -> None:
    assert get(world) == {"lines": [], "next": 0}  # nothing logged yet
    write(world, "acme-web", 1, stream="stderr")
    [line] = get(world)["lines"]
    assert set(line) == {"seq", "time", "machine", "region", "stream", "message"}
    assert line["machine"] == MACHINE_A and line["region"] == "local"
    assert line["stream"] == "stderr" and line["message"] == "line 1"
    assert datetime.fromisoformat(line["time"]).timestamp() == 1_800_000_001.0
    assert line["time"].endswith("+00:00")


def test_the_cursor_pages_through_every_line_once(world: World) -> None:
    for n in range(25):
        write(world, "acme-web", n, MACHINE_A if n % 2 else MACHINE_B)
    write(world, "acme-api", 99)  # another app's line never shows up here
    tail = get(world, limit=10)
    assert messages(tail) == [f"line {n}" for n in range(15, 25)]
    assert tail["next"] == tail["lines"][-1]["seq"]
    seen: list[str] = []
    cursor = 0  # from the oldest line kept
    while True:
        page = get(world, after=cursor, limit=10)
        if not page["lines"]:
            assert page["next"] == cursor
            break
        seen += messages(page)
        cursor = page["next"]
    assert seen == [f"line {n}" for n in range(25)]
    # Following from the tail's cursor gives exactly what comes after it.
    write(world, "acme-web", 25)
    assert messages(get(world, after=tail["next"])) == ["line 25"]


def test_the_machine_filter(world: World) -> None:
    for n in range(6):
        write(world, "acme-web", n, MACHINE_A if n % 2 else MACHINE_B)
    only_b = get(world, machine=MACHINE_B)
    assert messages(only_b) == ["line 0", "line 2", "line 4"]
    assert {line["machine"] for line in only_b["lines"]} == {MACHINE_B}
    # The tail's cursor is the end of the log, whichever machine wrote it.
    assert get(world, machine=new_id("mch")) == {"lines": [], "next": only_b["next"]}
    # A filtered follower's cursor moves past other machines' lines.
    write(world, "acme-web", 6, MACHINE_A)
    write(world, "acme-web", 7, MACHINE_B)
    later = get(world, machine=MACHINE_B, after=only_b["next"])
    assert messages(later) == ["line 7"]


def test_wait_answers_as_soon_as_a_line_exists(world: World) -> None:
    write(world, "acme-web", 0)
    cursor = get(world)["next"]
    started = time.monotonic()
    assert get(world, after=cursor, wait=0.5)["lines"] == []  # nothing came: empty, on time
    assert 0.4 <= time.monotonic() - started < 5
    timer = threading.Timer(0.5, write, (world, "acme-web", 1))
    timer.start()
    try:
        started = time.monotonic()
        page = get(world, after=cursor, wait=20)
        assert messages(page) == ["line 1"]
        assert time.monotonic() - started < 10
    finally:
        timer.join()


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"after": -1}, "after"),
        ({"after": "x"}, "after"),
        ({"wait": 26}, "wait"),
        ({"wait": -1}, "wait"),
        ({"machine": "web-1"}, "machine"),
        ({"machine": "../../etc"}, "machine"),
        ({"machine": "mch_" + "A" * 24}, "machine"),
        ({"machine": "mch_" + "a" * 200}, "machine"),
    ],
)
def test_bad_input_is_a_clear_400(world: World, params: dict[str, Any], word: str) -> None:
    error = refused(world, "GET", WEB, world.tokens["acme.admin"], 400, "invalid_request",
                    params=params)  # fmt: skip
    assert word in error["message"], error


def test_an_unknown_app_is_404(world: World) -> None:
    error = refused(
        world, "GET", "/v1/apps/no-such-app/logs", world.tokens["acme.admin"], 404, "not_found"
    )
    assert "no-such-app" in error["message"] and error["hint"]


def test_who_may_read_an_apps_logs(world: World) -> None:
    write(world, "acme-web", 1)
    write(world, "acme-api", 2)
    # Members, read-only and org tokens of the org; the app's deploy token.
    for token in ("acme.admin", "acme.member", "acme.readonly", "acme.org", "acme.deploy"):
        assert messages(get(world, token)) == ["line 1"], token
    assert messages(get(world, "acme.readonly", "/v1/apps/acme-api/logs")) == ["line 2"]
    # Denied, and each denial is in the audit log (checked by `refused`).
    for token, path, reason in (
        ("acme.deploy", "/v1/apps/acme-api/logs", "wrong_app"),  # another app of its org
        ("acme.machine", WEB, "wrong_machine"),  # a machine's token reads no logs, even its own
        ("globex.admin", WEB, "wrong_org"),
        ("globex.readonly", WEB, "wrong_org"),
        ("globex.deploy", WEB, "wrong_app"),
    ):
        error = refused(world, "GET", path, world.tokens[token], 403, reason)
        assert "line" not in str(error), error
    refused(world, "GET", WEB, None, 401, "unauthenticated")
    # Authorization comes before input checks: a stranger learns nothing from a bad query.
    refused(world, "GET", WEB, world.tokens["globex.admin"], 403, "wrong_org",
            params={"limit": 0})  # fmt: skip
