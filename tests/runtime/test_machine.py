"""A machine as its app sees it, and as the operator's logs see it: a clean environment with
the secrets in it, confined, in its own process group, its output redacted."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from aerodrome.platform.apps import MACHINE_UIDS
from aerodrome.runtime import cgroups
from aerodrome.runtime import machine as machine_module
from aerodrome.runtime.cgroups import MachineCgroups
from aerodrome.runtime.machine import (
    LogLine,
    Machine,
    MachineSpec,
    hand_over,
    kill_recorded_group,
    machine_environment,
    machine_user,
)
from aerodrome.secrets.redact import Redactor
from aerodrome.secrets.values import SecretValue
from tests.runtime.conftest import process_alive

CANARY = "canary-4f1c9a2b7e-value/with+chars"

# The app prints the canary raw, base64, URL-encoded, JSON-escaped and split across two
# writes, then its environment (names only) and what it knows about itself.
APP = """
import base64, json, os, sys, time, urllib.parse
v = os.environ["CANARY"]
print("raw", v, flush=True)
print("b64", base64.b64encode(v.encode()).decode(), flush=True)
print("url", urllib.parse.quote(v, safe=""), flush=True)
print("json", json.dumps({"token": v}), flush=True)
sys.stdout.write("split " + v[:9]); sys.stdout.flush(); time.sleep(0.05)
sys.stdout.write(v[9:] + "\\n"); sys.stdout.flush()
print("stderr", v, file=sys.stderr, flush=True)
print("ENV", json.dumps(sorted(os.environ)), flush=True)
status = open("/proc/self/status").read()
print("NNP", [l for l in status.splitlines() if l.startswith("NoNewPrivs")][0], flush=True)
print("PGRP", os.getpgrp(), os.getsid(0), flush=True)
print("PORT", os.environ["PORT"], os.environ["GREETING"], flush=True)
"""


def spec(tmp_path: Path, command: str, **kw: object) -> MachineSpec:
    return MachineSpec(
        machine_id="mch_" + "c" * 24,
        app="web",
        release=3,
        region="local",
        command=command,
        workdir=tmp_path / "machine",
        port=31999,
        env={"GREETING": "hello"},
        **kw,
    )  # type: ignore[arg-type]


def run_machine(tmp_path: Path, command: str, **kw: object) -> tuple[list[LogLine], int]:
    lines: list[LogLine] = []
    machine = Machine(spec(tmp_path, command, **kw), Redactor([CANARY]), lines.append)

    async def go() -> int:
        await machine.start({"CANARY": SecretValue(CANARY.encode())})
        return await machine.wait()

    return lines, asyncio.run(go())


def test_the_app_sees_its_secrets_and_the_logs_never_do(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(APP)
    lines, code = run_machine(tmp_path, f"{sys.executable} {script}")
    assert code == 0
    text = "\n".join(f"{line.stream} {line.message}" for line in lines)
    for form in (
        CANARY,
        base64.b64encode(CANARY.encode()).decode(),
        urllib.parse.quote(CANARY, safe=""),
        json.dumps(CANARY)[1:-1],
    ):
        assert form not in text
    assert "raw [REDACTED]" in text and "stderr stderr [REDACTED]" in text
    assert any(line.message.startswith("split ") and "[REDACTED]" in line.message for line in lines)
    assert "PORT 31999 hello" in text


def test_the_environment_is_clean_and_the_process_confined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AERO_DATA_DIR", "/agent/secret/place")
    monkeypatch.setenv("AGENT_ONLY", "leak")
    script = tmp_path / "app.py"
    script.write_text(APP)
    lines, _ = run_machine(tmp_path, f"{sys.executable} {script}")
    env_line = next(line.message for line in lines if line.message.startswith("ENV "))
    names = set(json.loads(env_line[4:]))
    assert "AGENT_ONLY" not in names and "AERO_DATA_DIR" not in names
    assert {"PATH", "PORT", "CANARY", "GREETING", "AERO_MACHINE_ID", "AERO_APP_NAME"} <= names
    assert any(line.message == "NNP NoNewPrivs:\t1" for line in lines)
    pgrp, sid = next(line.message for line in lines if line.message.startswith("PGRP ")).split()[1:]
    assert pgrp == sid and int(pgrp) != os.getpgrp()  # its own session and process group


def test_resource_limits_apply(tmp_path: Path) -> None:
    command = (
        f'{sys.executable} -c "import resource; '
        f'print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"'
    )
    lines, code = run_machine(tmp_path, command, open_files=64)
    assert code == 0 and [line.message for line in lines] == ["64"]
    hog = f'{sys.executable} -c "x = bytearray(300 * 1024 * 1024)"'
    _, code = run_machine(tmp_path, hog, memory_bytes=128 * 1024 * 1024)
    assert code != 0  # over its memory limit: it fails, not the host


def test_secrets_never_reach_argv(tmp_path: Path) -> None:
    env = machine_environment(spec(tmp_path, "true"), {"CANARY": SecretValue(CANARY.encode())})
    assert env["CANARY"] == CANARY
    machine = Machine(spec(tmp_path, "sleep 5"), Redactor([CANARY]), lambda line: None)

    async def go() -> bytes:
        await machine.start({"CANARY": SecretValue(CANARY.encode())})
        assert machine.process is not None
        cmdline = Path(f"/proc/{machine.process.pid}/cmdline").read_bytes()
        await machine.stop(grace=2)
        return cmdline

    cmdline = asyncio.run(go())
    assert CANARY.encode() not in cmdline and b"sleep 5" in cmdline


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    command = f"sh -c 'echo $$ > {pidfile}; exec sleep 60' & wait"
    machine = Machine(spec(tmp_path, command), Redactor([]), lambda line: None)

    async def go() -> None:
        await machine.start({})
        for _ in range(100):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            await asyncio.sleep(0.05)
        await machine.stop(grace=2)

    asyncio.run(go())
    child = int(pidfile.read_text())
    assert (
        not Path(f"/proc/{child}").exists()
        or "zombie" in Path(f"/proc/{child}/status").read_text().lower()
    )


@pytest.fixture
def machine_cgroups() -> Iterator[MachineCgroups]:
    found, problem = MachineCgroups.open(f"test_{os.getpid()}_{time.monotonic_ns()}")
    if found is None:
        pytest.skip(f"cgroups cannot be managed here: {problem}")
    yield found
    found.remove_all()
    assert not found.base.exists()


# A process that leaves the machine's process group and session (as a daemonizing server does),
# and the machine's main process after it.
ESCAPE = "setsid sh -c 'echo $$ > escaped.pid; exec sleep 600' & "


def _escaped(tmp_path: Path) -> int:
    pidfile = tmp_path / "machine" / "escaped.pid"
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            return int(pidfile.read_text())
        time.sleep(0.05)
    raise AssertionError("the machine did not start its escaping process")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_machine_whose_main_process_exits_ends_though_a_child_holds_its_output(
    tmp_path: Path, loop: str
) -> None:
    # A server that starts a worker and then crashes: the worker still holds stdout. The
    # machine has ended (and must restart); the worker goes with it, without anyone waiting.
    command = "sleep 600 & echo $! > worker.pid; echo crashing; exit 7"
    lines: list[LogLine] = []
    machine = Machine(spec(tmp_path, command), Redactor([]), lines.append)
    worker_pid = tmp_path / "machine" / "worker.pid"

    async def go() -> int:
        await machine.start({})
        try:
            for _ in range(100):  # nobody calls wait(): the worker is killed all the same
                written = worker_pid.exists() and worker_pid.read_text().strip()
                if written and not process_alive(int(worker_pid.read_text())):
                    break
                await asyncio.sleep(0.05)
            assert not process_alive(int(worker_pid.read_text())), "the worker outlived its machine"
            return await asyncio.wait_for(machine.wait(), 10)
        finally:
            await machine.stop(grace=0)

    run = uvloop.run if loop == "uvloop" else asyncio.run
    assert run(go()) == 7
    assert [line.message for line in lines] == ["crashing"]  # its output up to the end
    assert not process_alive(int(worker_pid.read_text()))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_output_held_open_outside_the_group_does_not_hold_up_the_end(
    tmp_path: Path, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without a cgroup, a process that left the group cannot be found; its copy of the output
    # pipe must not keep the machine from ending (and from being restarted).
    monkeypatch.setattr(machine_module, "PIPE_DRAIN_SECONDS", 0.5)
    command = ESCAPE + "while [ ! -s escaped.pid ]; do sleep 0.05; done; echo bye; exit 4"
    machine = Machine(spec(tmp_path, command), Redactor([]), lambda line: None)

    async def go() -> int:
        await machine.start({})
        try:
            return await asyncio.wait_for(machine.wait(), 10)
        finally:
            await machine.stop(grace=0)

    run = uvloop.run if loop == "uvloop" else asyncio.run
    try:
        assert run(go()) == 4
    finally:
        os.kill(_escaped(tmp_path), signal.SIGKILL)


def test_a_start_that_fails_after_a_run_leaves_the_machine_stoppable(tmp_path: Path) -> None:
    machine = Machine(spec(tmp_path, "exit 0"), Redactor([]), lambda line: None)

    async def go() -> int | None:
        await machine.start({})
        assert await machine.wait() == 0
        machine.spec = dataclasses.replace(machine.spec, open_files=2**40)  # refused in the child
        with pytest.raises(subprocess.SubprocessError):
            await machine.start({})
        return await asyncio.wait_for(machine.stop(grace=1), 5)

    assert asyncio.run(go()) == 0


@pytest.mark.parametrize("ending", ["stopped", "main process exits"])
def test_nothing_of_a_machine_outlives_it_even_outside_its_process_group(
    tmp_path: Path, machine_cgroups: MachineCgroups, ending: str
) -> None:
    command = ESCAPE + ("exec sleep 600" if ending == "stopped" else "sleep 0.5; exit 3")
    cgroup = machine_cgroups.path("org_" + "a" * 24, "mch_" + "e" * 24)
    machine = Machine(spec(tmp_path, command, cgroup=cgroup), Redactor([]), lambda line: None)

    async def go() -> tuple[int, int | None]:
        await machine.start({})
        try:
            escaped = await asyncio.to_thread(_escaped, tmp_path)
            assert machine.process is not None and os.getsid(escaped) != machine.process.pid
            assert process_alive(escaped) and escaped in cgroups.members(cgroup)
            code = await machine.stop(grace=2) if ending == "stopped" else await machine.wait()
            return escaped, code
        finally:
            await machine.stop(grace=0)

    escaped, code = asyncio.run(go())
    assert code == (-signal.SIGTERM if ending == "stopped" else 3)
    for _ in range(50):  # SIGKILLed: gone once init has reaped it
        if not process_alive(escaped):
            break
        time.sleep(0.02)
    assert not process_alive(escaped), "a process that left the group outlived its machine"
    assert cgroup.exists() and cgroups.members(cgroup) == []  # emptied, kept for a restart


def test_the_next_agent_ends_what_a_crashed_one_left_in_its_cgroups(
    tmp_path: Path, machine_cgroups: MachineCgroups
) -> None:
    cgroup = machine_cgroups.path("org_" + "a" * 24, "mch_" + "f" * 24)
    cgroups.prepare(cgroup)
    victim = subprocess.Popen(
        ["sleep", "600"], start_new_session=True, preexec_fn=lambda: cgroups.join(cgroup)
    )
    try:
        assert cgroups.members(cgroup) == [victim.pid]
        assert machine_cgroups.leftovers() == [cgroup]
        assert cgroups.remove(cgroup) == 1
        assert victim.wait(timeout=5) == -signal.SIGKILL
        assert not cgroup.exists() and machine_cgroups.leftovers() == []
    finally:
        victim.kill()
        victim.wait()


# -- machines as an unprivileged uid (the tests run as root) -------------------------------------

# Two apps' uids, as `create_app` hands them out.
PRODUCTION, TEST = MACHINE_UIDS["production"][0], MACHINE_UIDS["test"][1]


def test_a_machine_runs_as_its_apps_uid_only_under_a_root_agent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert os.geteuid() == 0, "these tests run as root (as the agent does in production)"
    assert machine_user(PRODUCTION) == PRODUCTION
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert machine_user(PRODUCTION) is None  # an unprivileged agent runs machines as itself


def test_a_machine_runs_as_its_uid_and_cannot_read_other_trees(open_dir: Path) -> None:
    private = open_dir / "root-only"
    private.mkdir(mode=0o700)
    (private / "file").write_text("root's")
    (private / "file").chmod(0o644)
    production = open_dir / "production"
    (production / "app").mkdir(parents=True)
    (production / "app" / "data").write_text("production's")
    hand_over(production / "app", PRODUCTION)
    (production / "app" / "data").chmod(0o644)  # even a world-readable file: the dir is 0700

    command = (
        "echo uid $(id -u) gid $(id -g) groups $(id -G); echo to-stderr >&2; "
        f"cat {private}/file || echo denied-root; "
        f"cat {production}/app/data || echo denied-production; "
        "echo nofile $(ulimit -n); grep NoNewPrivs /proc/self/status; "
        "echo home $(stat -c '%u %a' \"$HOME\"); touch made; echo made $(stat -c '%u %a' made)"
    )
    lines: list[LogLine] = []
    machine = Machine(
        spec(open_dir, command, user=TEST, open_files=64), Redactor([CANARY]), lines.append
    )
    (open_dir / "machine").mkdir()
    (open_dir / "machine" / "shipped").write_text("from the artifact")

    async def go() -> int:
        await machine.start({"CANARY": SecretValue(CANARY.encode())})
        return await machine.wait()

    assert asyncio.run(go()) == 0
    out = [line.message for line in lines if line.stream == "stdout"]
    assert f"uid {TEST} gid {TEST} groups {TEST}" in out
    assert next(line.message for line in lines if line.stream == "stderr") == "to-stderr"
    assert "denied-root" in out and "denied-production" in out
    assert "root's" not in out and "production's" not in out
    assert "nofile 64" in out and "NoNewPrivs:\t1" in out
    assert f"home {TEST} 700" in out and f"made {TEST} 600" in out  # umask 077
    assert (open_dir / "machine" / "shipped").stat().st_uid == TEST


def test_a_machine_tree_the_uid_cannot_reach_is_refused(tmp_path: Path) -> None:
    # pytest's tmp_path sits under a 0700 root directory, as the platform's data dir is.
    machine = Machine(spec(tmp_path, "true", user=TEST), Redactor([]), lambda line: None)
    with pytest.raises(PermissionError, match="cannot reach"):
        asyncio.run(machine.start({}))


def test_hand_over_changes_links_not_their_targets(open_dir: Path) -> None:
    outside = open_dir / "outside"
    outside.write_text("x")
    tree = open_dir / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "link").symlink_to(outside)
    hand_over(tree, PRODUCTION)
    assert outside.stat().st_uid == 0
    assert (tree / "sub" / "link").lstat().st_uid == PRODUCTION
    assert (tree / "sub").stat().st_uid == PRODUCTION and tree.stat().st_mode & 0o777 == 0o700


def test_a_failing_log_sink_loses_lines_but_keeps_the_machine_running(tmp_path: Path) -> None:
    kept: list[str] = []

    def sink(line: LogLine) -> None:
        if line.message == "first":
            raise OSError(28, "No space left on device")
        kept.append(line.message)

    # Far more than a pipe holds: a dead reader would block the app on its writes.
    command = "echo first; i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done"
    machine = Machine(spec(tmp_path, command), Redactor([CANARY]), sink)

    async def go() -> int:
        await machine.start({})
        return await asyncio.wait_for(machine.wait(), 30)

    assert asyncio.run(go()) == 0
    assert kept[-1] == "line-19999" and "first" not in kept


def test_a_recorded_group_is_killed_only_as_its_uid_in_its_boot_and_its_leaders_life(
    tmp_path: Path,
) -> None:
    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)
    record = tmp_path / "group"
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    stat = Path(f"/proc/{victim.pid}/stat").read_text()
    started = int(stat[stat.rindex(")") + 2 :].split()[19])
    me = os.geteuid()
    try:
        for uid, booted, since in (
            (PRODUCTION, boot, started),  # another uid's
            (me, "another-boot", started),  # an id from before a reboot
            (me, boot, started + 1),  # the id now names another process
        ):
            fields = {"pgid": victim.pid, "uid": uid, "boot": booted, "started": since}
            record.write_text(json.dumps(fields))
            assert kill_recorded_group(record) == 0 and victim.poll() is None
        record.write_text("not json")
        assert kill_recorded_group(record) == 0
        own = {"pgid": os.getpgrp(), "uid": me, "boot": boot, "started": 0}
        record.write_text(json.dumps(own))
        assert kill_recorded_group(record) == 0  # never the agent's own group
        fields = {"pgid": victim.pid, "uid": me, "boot": boot, "started": started}
        record.write_text(json.dumps(fields))
        assert kill_recorded_group(record) == 1
        assert victim.wait(timeout=5) == -signal.SIGKILL
    finally:
        victim.kill()
        victim.wait()
