"""How the CLI follows a release to its end, against canned API answers (no platform)."""

from __future__ import annotations

from typing import Any

import pytest
import typer

from aerodrome.cli import rollout
from aerodrome.cli import secrets as secrets_cli


class CannedApi:
    """Answers GETs of release N with its given states in turn (the last one repeats)."""

    url = "https://api.localhost:8443"

    def __init__(self, **states: list[dict[str, Any]]) -> None:
        self.states = {int(k.removeprefix("r")): v for k, v in states.items()}
        self.asked: list[str] = []

    def get(self, path: str, **kw: Any) -> Any:
        self.asked.append(path)
        if "/logs" in path:
            raise AssertionError("no log lines are asked for here")
        queue = self.states[int(path.rsplit("/", 1)[1])]
        return queue.pop(0) if len(queue) > 1 else queue[0]


def release(
    number: int, status: str, machines: list[dict[str, Any]] | None = None, **kw: Any
) -> dict[str, Any]:
    return {
        "number": number, "status": status, "status_reason": kw.pop("reason", ""),
        "machines": [] if machines is None else machines, **kw,
    }  # fmt: skip


def superseded(number: int, carries_code: bool) -> dict[str, Any]:
    reason = f"release {number + 1} came before it rolled out"
    after = {"number": number + 1, "carries_code": carries_code}
    return release(number, "superseded", reason=reason, superseded_by=after)


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout, "POLL", 0.0)


def test_a_deploy_superseded_by_a_newer_deploy_ends_with_the_reason_and_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = CannedApi(r3=[release(3, "pending"), superseded(3, carries_code=False)])
    with pytest.raises(typer.Exit) as ended:
        rollout.follow(api, "web", 3, json_mode=False, timeout=5)  # type: ignore[arg-type]
    assert ended.value.exit_code == 1 and "/releases/4" not in " ".join(api.asked)
    err = capsys.readouterr().err
    assert "release 3 of web will not roll out" in err and "release 4 came before" in err


def test_a_deploy_superseded_by_a_release_with_its_code_follows_that_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = CannedApi(r3=[superseded(3, carries_code=True)], r4=[release(4, "complete", [{}])])
    rollout.follow(api, "web", 3, json_mode=False, timeout=5)  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "release 3 of web was superseded by release 4, which carries it" in out
    assert "release 4 of web is serving on 1 machine(s)" in out


def test_a_release_followed_without_machines_read_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = CannedApi(r3=[release(3, "complete", None) | {"machines": None}])
    rollout.follow(api, "web", 3, json_mode=False, timeout=5)  # type: ignore[arg-type]
    assert "release 3 of web is serving: https://web.localhost:8443/" in capsys.readouterr().out
    assert rollout._summary({"number": 3, "status": "running", "machines": None}) == (
        "release 3: running (machines not shown)"
    )


def test_a_secrets_change_follows_whatever_release_came_next(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any later release carries the secret versions current when it was made.
    api = CannedApi(r3=[superseded(3, carries_code=False)], r4=[release(4, "complete")])
    monkeypatch.setattr(secrets_cli, "client", lambda: api)
    secrets_cli._emit_after_rollout({"release": release(3, "pending")}, "web", detach=False)
    assert '"number": 4' in capsys.readouterr().out


def test_secrets_json_exits_1_when_the_release_that_carries_it_fails(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = CannedApi(r3=[superseded(3, carries_code=False)], r4=[release(4, "failed")])
    monkeypatch.setattr(secrets_cli, "client", lambda: api)
    with pytest.raises(typer.Exit) as ended:
        secrets_cli._emit_after_rollout({"release": release(3, "pending")}, "web", detach=False)
    assert ended.value.exit_code == 1 and '"status": "failed"' in capsys.readouterr().out
