# ruff: noqa: E402  (the import-path fix below must run before the imports)
"""Deploy benchmark: `aero deploy` to the new release serving, machine start latency, and the
cost of unsealing secrets, for the example app (examples/hello), against naive peers.

    .venv/bin/python bench/deploy.py [--deploys 5] [--starts 20] [--unseal-runs 200]
                                     [--json] [--write-readme]

Three parts, in one invocation (about a minute with the defaults):

  1 deploy   A real platform (`aero up --no-example` on a throwaway data directory and free
             ports, as tests/cli/conftest.py starts it). As its admin, through the CLI: org
             `personal`, app `hello`, `SESSION_KEY` staged from stdin; one deploy of a copy of
             examples/hello that is not timed (so every timed one replaces a serving release);
             then N deploys, each with a changed `[env]` value (new config, so a new release and
             new machines). For each: the time from starting `aero deploy` until it prints that
             the release exists (packaged, uploaded, released), until an HTTPS GET through the
             edge (fresh TLS connection to 127.0.0.1, SNI and Host hello.localhost, the local
             CA as trust) first returns the page showing the new release number, and until
             `aero deploy` exits (it returns once the agent reports the release complete, which
             is after the old machine drained and stopped).
             Peer: a naive restart deploy of the same app on the same machine: copy the
             directory, SIGTERM the old `python3 app.py`, wait for it to exit, start the new
             one, poll the page over plain HTTP until it shows the new release. It has a
             window with nothing listening; the platform has none.
  2 start    Machine start latency, spawn to first passing check: `aerodrome.runtime.machine.
             Machine.start` on a fresh copy of the example (clean environment, rlimits,
             no_new_privs, own session, redacting pipes, and as root the handover of the tree
             to the first production app's uid and the uid switch), with the app's one secret,
             then GET /healthz on 127.0.0.1:$PORT every 10 ms until 200. Peer:
             `subprocess.Popen(["python3", "app.py"])` of the same copy with PORT and
             SESSION_KEY in the inherited environment, the same polling. The order of the two
             alternates each run.
  3 unseal   `unseal_for_machine` (verify the machine token, authorize, read, unwrap each data
             key, decrypt, audit), which the agent calls before every machine start, shown on
             its own: bench/secrets.py's `bench_unseal` for 1 secret (as the example has) and
             for 100, on a throwaway SQLite store.

Figures are medians with min-max; every process the script starts is stopped on exit.
"""

from __future__ import annotations

import sys

# bench/ holds a file named like the standard library's `secrets`: keep this folder off the
# import path so `import secrets` elsewhere finds the real module.
sys.path[:] = [p for p in sys.path if p not in ("", __file__.rsplit("/", 1)[0])]

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

import uvloop

from aerodrome.ids import new_id
from aerodrome.platform.apps import MACHINE_UIDS
from aerodrome.runtime.agent import free_port
from aerodrome.runtime.machine import SAFE_PATH, Machine, MachineSpec, machine_user
from aerodrome.secrets.redact import Redactor
from aerodrome.secrets.values import SecretValue
from aerodrome.up import env_file_version, read_env_file

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
README = SCRIPT.parent / "README.md"
EXAMPLE = ROOT / "examples" / "hello"
APP, ORG, SECRET = "hello", "personal", "SESSION_KEY"
AERO = [sys.executable, "-m", "aerodrome.cli.main"]
# Machines run the system's python3 (the agent gives them SAFE_PATH); so does the peer.
PYTHON3 = shutil.which("python3", path=SAFE_PATH) or "/usr/bin/python3"
EDGE_POLL = 0.025  # seconds between HTTPS GETs while waiting for the new release
CHECK_POLL = 0.010  # seconds between GET /healthz while waiting for a machine
SECTION_BEGIN = "<!-- deploy:begin -->"
SECTION_END = "<!-- deploy:end -->"
RELEASE_SHOWN = re.compile(rb"release <b>(\d+)</b>")
BENCH_UID = MACHINE_UIDS["production"][0]  # as an agent would run the first app's machines


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
        "samples": [round(s, 4) for s in samples],
    }


# -- the machine we run on ---------------------------------------------------------------------


def sibling(name: str) -> Any:
    """Another script of bench/, loaded by path under another module name (as `secrets`,
    bench/secrets.py would shadow the standard library's module)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", SCRIPT.parent / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


EDGE_BENCH = sibling("edge")  # its /proc readers


def cpu_ticks_by_pid() -> dict[tuple[int, int], tuple[str, int]]:
    """(pid, start time) -> (command name, utime + stime ticks) for every process."""
    stats = EDGE_BENCH.proc_stats()
    return {(pid, st.start): (st.comm, st.ticks) for pid, st in stats.items()}


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot."""
    busy: tuple[int, int] = EDGE_BENCH.machine_busy()
    return busy


@dataclass
class Host:
    """What the machine looked like while the benchmark ran (it is shared: say how much)."""

    cores: int = os.cpu_count() or 0
    model: str = ""
    kernel: str = platform.release()
    load_start: tuple[float, ...] = ()
    load_end: tuple[float, ...] = ()
    busy_fraction: float = 0.0
    busy_cpu_s: float = 0.0  # all CPUs, all processes, over the run
    ours_cpu_s: float = 0.0  # this script and everything it started (reaped children)
    others_cpu_s: float = 0.0
    others_top: list[tuple[str, float]] = field(default_factory=list)
    wall_s: float = 0.0
    _t0: float = 0.0
    _busy0: tuple[int, int] = (0, 0)
    _ours0: float = 0.0
    _ticks0: dict[tuple[int, int], tuple[str, int]] = field(default_factory=dict)

    def start(self) -> None:
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    self.model = line.split(":", 1)[1].strip()
                    break
        self.load_start = os.getloadavg()
        self._t0, self._busy0, self._ticks0 = time.monotonic(), busy_jiffies(), cpu_ticks_by_pid()
        me = resource.getrusage(resource.RUSAGE_SELF)
        self._ours0 = me.ru_utime + me.ru_stime  # the imports so far are not the run's

    def stop(self) -> None:
        """Called once everything this script started has stopped and been reaped. Other
        work's CPU is the machine's busy time minus ours (our own rusage and our children's,
        which includes the platform's components and machines: each parent reaps its
        children); the biggest other processes are those alive at both ends."""
        self.wall_s = time.monotonic() - self._t0
        self.load_end = os.getloadavg()
        busy, total = busy_jiffies()
        self.busy_fraction = (busy - self._busy0[0]) / max(1, total - self._busy0[1])
        tick = os.sysconf("SC_CLK_TCK")
        self.busy_cpu_s = (busy - self._busy0[0]) / tick
        me, children = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        self.ours_cpu_s = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
        self.ours_cpu_s -= self._ours0
        used: dict[str, float] = {}
        for key, (comm, ticks) in cpu_ticks_by_pid().items():
            if key in self._ticks0 and key[0] != os.getpid():
                used[comm] = used.get(comm, 0.0) + (ticks - self._ticks0[key][1]) / tick
        self.others_cpu_s = max(0.0, self.busy_cpu_s - self.ours_cpu_s)
        self.others_top = sorted(used.items(), key=lambda kv: -kv[1])[:4]


# -- 1. deploys on a real platform -------------------------------------------------------------


class Platform:
    """`aero up` on a throwaway data directory and free ports, and the CLI pointed at it."""

    def __init__(self, tmp: Path) -> None:
        self.data_dir = tmp / "data"
        self.https_port = free_port()
        self.log_path = tmp / "aero-up.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}

    def start(self, timeout: float = 90.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AERO_")}
        argv = [
            *AERO, "up", "--no-example", "--data-dir", str(self.data_dir),
            "--api-port", str(free_port()), "--https-port", str(self.https_port),
            "--http-port", str(free_port()), "--metrics-port", str(free_port()),
        ]  # fmt: skip
        env_file = self.data_dir / "aero.env"
        previous = env_file_version(env_file)
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # aero.env is (re)written once everything answers
            if self.process.poll() is not None:
                raise RuntimeError(f"aero up exited:\n{self.log_path.read_text()[-2000:]}")
            if env_file_version(env_file) not in (None, previous):
                self.env = {**env, **read_env_file(env_file)}
                return
            time.sleep(0.2)
        raise RuntimeError(f"aero up was not ready in {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # the agent stops its machines on the way out
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def aero(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [*AERO, *args], env=self.env, input=stdin, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"aero {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    @property
    def ca(self) -> str:
        return self.env["AERO_CA_BUNDLE"]


def edge_page(port: int, ctx: ssl.SSLContext, host: str) -> bytes | None:
    """GET / through the edge on a new TLS connection: the response, or None if it failed."""
    try:
        request = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
        with (
            socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(request.encode())
            chunks = []
            while data := tls.recv(65536):
                chunks.append(data)
        return b"".join(chunks)
    except (OSError, ssl.SSLError):
        return None


def shown_release(response: bytes | None) -> int | None:
    """The release number the example's page shows, on a 200."""
    if not response or not response.startswith(b"HTTP/1.1 200"):
        return None
    found = RELEASE_SHOWN.search(response)
    return int(found.group(1)) if found else None


def failure_of(response: bytes | None) -> str:
    """`502 bad_gateway`: the status and the platform's error code, for the notes."""
    if not response:
        return "no response"
    status = response.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
    code = re.search(rb'"code": "([a-z_]+)"', response)
    return f"{status} {code.group(1).decode()}" if code else status


class Watcher(threading.Thread):
    """Polls a page from `started` until it shows release `wanted`; records when, and how
    long the page failed to answer (no 200 with a release) meanwhile: the longest gap."""

    def __init__(self, fetch: Callable[[], bytes | None], wanted: int, started: float) -> None:
        super().__init__(daemon=True)
        self.fetch, self.wanted, self.started = fetch, wanted, started
        self.seen_at: float | None = None
        self.last: bytes | None = None
        self.polls = self.failed = 0
        self.failures: dict[str, int] = {}  # status line (or "no response") -> count
        self.longest_gap = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        failing_since: float | None = None
        while not self.stop.is_set():
            self.last = self.fetch()
            now = time.perf_counter()
            self.polls += 1
            shown = shown_release(self.last)
            if shown is None:
                self.failed += 1
                status = failure_of(self.last)
                self.failures[status] = self.failures.get(status, 0) + 1
                failing_since = now if failing_since is None else failing_since
            elif failing_since is not None:
                self.longest_gap = max(self.longest_gap, now - failing_since)
                failing_since = None
            if shown == self.wanted:
                self.seen_at = now - self.started
                return
            self.stop.wait(EDGE_POLL)


def write_source(directory: Path, round_: int) -> Path:
    """examples/hello with `[env] BENCH_ROUND = "N"` appended: a new config every round."""
    if not directory.exists():
        shutil.copytree(EXAMPLE, directory)
    toml = (EXAMPLE / "aerodrome.toml").read_text()
    (directory / "aerodrome.toml").write_text(f'{toml}\n[env]\nBENCH_ROUND = "{round_}"\n')
    return directory / "aerodrome.toml"


def timed_deploy(plat: Platform, config: Path, wanted: int, ctx: ssl.SSLContext) -> dict[str, Any]:
    """One `aero deploy`, with the three moments above; checks it released `wanted`."""
    host = f"{APP}.localhost"
    t0 = time.perf_counter()
    watcher = Watcher(lambda: edge_page(plat.https_port, ctx, host), wanted, t0)
    watcher.start()
    proc = subprocess.Popen(
        [*AERO, "deploy", "-c", str(config)],
        env=plat.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    released_at = None
    assert proc.stdout is not None
    for line in proc.stdout:  # "release N of hello: K files, ..." once the release exists
        if released_at is None and line.startswith(f"release {wanted} of {APP}:"):
            released_at = time.perf_counter() - t0
    proc.wait()
    returned_at = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"aero deploy failed: {proc.stderr.read() if proc.stderr else ''}")
    watcher.join(timeout=30)
    watcher.stop.set()
    if watcher.seen_at is None:
        raise RuntimeError(f"release {wanted} never showed through the edge: {watcher.last!r}")
    if b"SESSION_KEY is set" not in (watcher.last or b""):
        raise RuntimeError("the page does not say SESSION_KEY is set: the secret did not arrive")
    return {
        "release": wanted,
        "released_s": released_at,
        "serving_s": watcher.seen_at,
        "returned_s": returned_at,
        "polls": watcher.polls,
        "failed_polls": watcher.failed,
        "no_answer_s": watcher.longest_gap,
        "failures": watcher.failures,
    }


def bench_deploys(tmp: Path, rounds: int) -> dict[str, Any]:
    plat = Platform(tmp)
    log("starting aero up --no-example")
    t0 = time.perf_counter()
    plat.start()
    up_s = time.perf_counter() - t0
    try:
        plat.aero("orgs", "create", ORG)
        plat.aero("apps", "create", APP, "--org", ORG)
        plat.aero("secrets", "set", "-a", APP, f"{SECRET}=-", "--stage", stdin=token_urlsafe(32))
        cli = []
        for _ in range(3):  # what one CLI process costs, before it does anything useful
            t = time.perf_counter()
            plat.aero("auth", "whoami")
            cli.append(time.perf_counter() - t)
        ctx = ssl.create_default_context(cafile=plat.ca)
        source = tmp / "hello-src"
        log("first deploy (not timed)")
        first = timed_deploy(plat, write_source(source, 0), 1, ctx)
        results = []
        for i in range(1, rounds + 1):
            results.append(timed_deploy(plat, write_source(source, i), i + 1, ctx))
            log(
                f"deploy {i}/{rounds}: released {results[-1]['released_s']:.2f} s, serving "
                f"{results[-1]['serving_s']:.2f} s, aero deploy returned "
                f"{results[-1]['returned_s']:.2f} s, {results[-1]['failed_polls']} of "
                f"{results[-1]['polls']} GETs failed"
            )
        releases = json.loads(plat.aero("releases", "-a", APP, "--json"))
        if [r["status"] for r in releases if r["number"] > 1] != ["complete"] * rounds:
            raise RuntimeError(f"unexpected release states: {releases}")
    finally:
        plat.stop()
    return {
        "aero_up_s": up_s,
        "first_deploy": first,
        "rounds": results,
        "released_s": summary([r["released_s"] for r in results]),
        "serving_s": summary([r["serving_s"] for r in results]),
        "returned_s": summary([r["returned_s"] for r in results]),
        "no_answer_s": summary([r["no_answer_s"] for r in results]),
        "polls": sum(r["polls"] for r in results),
        "failed_polls": sum(r["failed_polls"] for r in results),
        "failures": {
            status: sum(r["failures"].get(status, 0) for r in results)
            for status in sorted({s for r in results for s in r["failures"]})
        },
        "cli_whoami_s": summary(cli),
    }


def local_page(port: int) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
        return b"".join(chunks)
    except OSError:
        return None


def bench_naive_deploys(tmp: Path, rounds: int) -> dict[str, Any]:
    """The peer of part 1: stop the old process, start the new one, same port."""
    port, key = free_port(), token_urlsafe(32)

    def launch(directory: Path, release: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PORT": str(port), SECRET: key, "AERO_RELEASE": str(release)}
        return subprocess.Popen(
            [PYTHON3, "app.py"], cwd=directory, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    current = launch(write_source(tmp / "naive-0", 0).parent, 1)
    try:
        watcher = Watcher(lambda: local_page(port), 1, time.perf_counter())
        watcher.run()
        times, down = [], []
        for i in range(1, rounds + 1):
            t0 = time.perf_counter()
            watcher = Watcher(lambda: local_page(port), i + 1, t0)
            directory = tmp / f"naive-{i}"
            write_source(directory, i)  # copies the app: stands in for packaging, unpacking
            stopping = time.perf_counter() - t0  # from here on nothing answers
            current.terminate()
            current.wait()
            current = launch(directory, i + 1)
            watcher.run()  # in this thread: nothing else happens meanwhile
            assert watcher.seen_at is not None
            times.append(watcher.seen_at)
            down.append(watcher.seen_at - stopping)
    finally:
        current.terminate()
        current.wait()
    return {"serving_s": summary(times), "no_answer_s": summary(down)}


# -- 2. machine start: spawn to first passing check --------------------------------------------


async def first_passing_check(port: int, alive: Callable[[], bool]) -> None:
    """GET /healthz every CHECK_POLL seconds until it answers 200."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request)
                status = await reader.readline()
            finally:
                writer.close()
            if status.startswith(b"HTTP/1.1 200"):
                return
        except OSError:
            pass
        if not alive():
            raise RuntimeError("the app exited before its check passed")
        await asyncio.sleep(CHECK_POLL)


async def start_machine(base: Path, key: str) -> dict[str, float]:
    """One aerodrome machine of the example, as the agent starts it (minus the credential and
    the unseal, timed in part 3): seconds to `start` returning and to the first passing check."""
    machine_id = new_id("mch")
    workdir = base / machine_id / "app"
    shutil.copytree(EXAMPLE, workdir)  # the agent's unpack; not timed
    spec = MachineSpec(
        machine_id=machine_id, app=APP, release=1, region="local", command="python3 app.py",
        workdir=workdir, port=free_port(), env={"BENCH_ROUND": "1"},
        user=machine_user(BENCH_UID),
    )  # fmt: skip
    lines: list[Any] = []
    machine = Machine(spec, Redactor([key.encode()]), lines.append)
    t0 = time.perf_counter()
    await machine.start({SECRET: SecretValue(key.encode())})
    spawned = time.perf_counter() - t0
    try:
        await first_passing_check(spec.port, lambda: machine.running)
        passing = time.perf_counter() - t0
    finally:
        await machine.stop(grace=5)
    if any(key in line.message for line in lines):
        raise RuntimeError("the secret reached the machine's logs")
    shutil.rmtree(base / machine_id, ignore_errors=True)
    return {"spawned": spawned, "passing": passing}


async def start_naive(base: Path, key: str, index: int) -> dict[str, float]:
    """The peer: Popen of the same app from the same kind of copy, the same polling."""
    workdir = base / f"naive-{index}"
    shutil.copytree(EXAMPLE, workdir)
    port = free_port()
    env = {**os.environ, "PORT": str(port), SECRET: key, "BENCH_ROUND": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [PYTHON3, "app.py"], cwd=workdir, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    spawned = time.perf_counter() - t0
    try:
        await first_passing_check(port, lambda: proc.poll() is None)
        passing = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait()
    shutil.rmtree(workdir, ignore_errors=True)
    return {"spawned": spawned, "passing": passing}


def bench_starts(tmp: Path, runs: int) -> dict[str, Any]:
    # As root, machines run as their app's uid, which must be able to reach its tree: the base
    # directory is searchable (0711), as the agent's machines directory is.
    base = tmp / "machines"
    base.mkdir(mode=0o711)
    for parent in (tmp, base):
        parent.chmod(0o711)
    key = token_urlsafe(32)
    ours: list[dict[str, float]] = []
    peer: list[dict[str, float]] = []

    async def run() -> None:
        await start_machine(base, key)  # warm-up, one of each: page cache, imports
        await start_naive(base, key, -1)
        for i in range(runs):
            if i % 2 == 0:
                ours.append(await start_machine(base, key))
                peer.append(await start_naive(base, key, i))
            else:
                peer.append(await start_naive(base, key, i))
                ours.append(await start_machine(base, key))

    uvloop.run(run())  # the agent's event loop
    return {
        "runs": runs,
        "uid": machine_user(BENCH_UID),
        "aerodrome_passing_s": summary([r["passing"] for r in ours]),
        "aerodrome_spawned_s": summary([r["spawned"] for r in ours]),
        "naive_passing_s": summary([r["passing"] for r in peer]),
        "naive_spawned_s": summary([r["spawned"] for r in peer]),
    }


# -- 3. unsealing, shown separately -------------------------------------------------------------


def bench_unseal(runs: int) -> dict[str, Any]:
    """bench/secrets.py's unseal measurement, for 1 and 100 secrets. Loaded by path under
    another name: as `secrets` it would shadow the standard library's module."""
    module = sibling("secrets")
    rng = random.Random(7)
    return {str(count): module.bench_unseal(count, runs, rng) for count in (1, 100)}


# -- report -------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


def spread(s: dict[str, Any], scale: float = 1000.0, digits: int = 0) -> str:
    return f"{s['min'] * scale:,.{digits}f}-{s['max'] * scale:,.{digits}f}"


def render_table(results: dict[str, Any]) -> str:
    d, naive = results["deploy"], results["naive_deploy"]
    st, un = results["start"], results["unseal"]
    start_ms = st["aerodrome_passing_s"]["median"] * 1000
    rows: list[tuple[str, str, str, str, str]] = [
        (
            f"1. `aero deploy` to new release serving (ms, n={d['serving_s']['n']})",
            ms(d["serving_s"]["median"]),
            ms(naive["serving_s"]["median"]),
            f"{d['serving_s']['median'] / naive['serving_s']['median']:.1f}",
            f"{spread(d['serving_s'])} / {spread(naive['serving_s'])}",
        ),
        (
            f"   no answer while deploying, longest gap (ms; {d['failed_polls']} of "
            f"{d['polls']} GETs failed)",
            ms(d["no_answer_s"]["median"]),
            ms(naive["no_answer_s"]["median"]),
            "",
            f"{spread(d['no_answer_s'])} / {spread(naive['no_answer_s'])}",
        ),
        (
            "   `aero deploy` until it returns (release complete)",
            ms(d["returned_s"]["median"]),
            "",
            "",
            spread(d["returned_s"]),
        ),
        (
            "   of which until the release exists (package, upload)",
            ms(d["released_s"]["median"]),
            "",
            "",
            spread(d["released_s"]),
        ),
        (
            "   one CLI process (`aero auth whoami`), for scale",
            ms(d["cli_whoami_s"]["median"]),
            "",
            "",
            spread(d["cli_whoami_s"]),
        ),
        (
            f"2. machine start, spawn to first passing check (ms, n={st['runs']})",
            f"{start_ms:,.1f}",
            f"{st['naive_passing_s']['median'] * 1000:,.1f}",
            f"{st['aerodrome_passing_s']['median'] / st['naive_passing_s']['median']:.2f}",
            f"{spread(st['aerodrome_passing_s'], digits=1)} / "
            f"{spread(st['naive_passing_s'], digits=1)}",
        ),
        (
            "   of which the spawn call returning",
            f"{st['aerodrome_spawned_s']['median'] * 1000:,.1f}",
            f"{st['naive_spawned_s']['median'] * 1000:,.1f}",
            f"{st['aerodrome_spawned_s']['median'] / st['naive_spawned_s']['median']:.1f}",
            "",
        ),
    ]
    for count in ("1", "100"):
        u = un[count]
        p50 = u["unseal_for_machine_p50_ms"]
        rows.append(
            (
                f"3. `unseal_for_machine`, {count} secret{'s' if count != '1' else ''} "
                f"(ms, n={u['runs']})",
                f"{p50:.2f}",
                "",
                f"{p50 / start_ms:.1%} of a start",
                f"p99 {u['unseal_for_machine_p99_ms']:.2f}; read+decrypt "
                f"{u['read_and_decrypt_p50_ms']:.2f}",
            )
        )
    header = ("metric (medians)", "aerodrome", "naive peer", "ratio", "min-max (aerodrome / peer)")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    right = (False, True, True, True, False)

    def line(cells: tuple[str, ...]) -> str:
        padded = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|".join(
        "-" * (w + 1) + ":" if r else "-" * (w + 2) for w, r in zip(widths, right, strict=True)
    )
    rule = f"|{rule}|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def method_text(results: dict[str, Any], host: Host, args: argparse.Namespace) -> str:
    others = ", ".join(f"{n} {s:.0f} CPU-s" for n, s in host.others_top) or "none"
    load0 = "/".join(f"{x:.2f}" for x in host.load_start)
    load1 = "/".join(f"{x:.2f}" for x in host.load_end)
    d = results["deploy"]
    uid = results["start"]["uid"]
    return (
        f"Machine: {host.cores} cores ({host.model}), Linux {host.kernel}, Python "
        f"{platform.python_version()} for the platform, {PYTHON3} for the app. Everything runs "
        f"on these same cores: `aero up` (API, certificate manager, edge with its default "
        f"worker count, agent), the `aero` CLI, the HTTPS poller, the machines and the peers. "
        f"The machine is shared with other work and the figures are noisy: load average {load0} "
        f"at the start, {load1} at the end; it was {host.busy_fraction:.0%} busy over the "
        f"{host.wall_s:.0f} s run ({host.busy_cpu_s:.0f} CPU-s), of which this benchmark's "
        f"processes used {host.ours_cpu_s:.0f} CPU-s and other work about "
        f"{host.others_cpu_s:.0f} (biggest still running at the end: {others}). "
        f"(1) `aero up --no-example` on a throwaway data directory (ready in "
        f"{d['aero_up_s']:.1f} s); org, app `{APP}` and a staged `{SECRET}` through the CLI; one "
        f"untimed deploy, then {args.deploys} timed deploys of examples/hello, each with a "
        f"changed `[env]` value, so each is a new release and a new machine replacing the "
        f"serving one (rolling, 1 machine). 'Serving' is the first HTTPS GET through the edge "
        f"(new TLS connection every {EDGE_POLL * 1000:.0f} ms, SNI/Host {APP}.localhost, the "
        f"platform's CA) whose page shows the new release number, timed from starting "
        f"`aero deploy`; it includes the CLI's own start, packaging and upload, the agent "
        f"noticing the release (0.5 s store poll), its check loop (every 0.2 s) and the edge "
        f"picking up the new route (0.5 s store poll). `aero deploy` returns later: it polls "
        f"every 0.5 s for `complete`, which the agent sets once the old machine is retired. "
        f"Peer: a naive restart of the same app on one port (copy the "
        f"directory, SIGTERM the old `python3 app.py`, start the new one, GET / over plain "
        f"HTTP every {EDGE_POLL * 1000:.0f} ms until the page shows the new release); it has "
        f"downtime, the platform should have none. 'No answer' is the longest run of GETs "
        f"without a 200 page while deploying (for the peer: from SIGTERM to the new page). "
        f"(2) `Machine.start` under uvloop on a fresh copy of the example with its 1 secret "
        f"(clean environment, rlimits, no_new_privs, own session, redacted stdout/stderr pipes"
        + (f", tree handed to uid {uid} and the uid switch, as this ran as root" if uid else "")
        + f"), then GET /healthz every {CHECK_POLL * 1000:.0f} ms until 200; the machine's "
        f"credential, local API socket and unseal are not in this figure. Peer: "
        f"`subprocess.Popen([python3, 'app.py'])` of the same copy, inherited environment, "
        f"output to /dev/null, same polling; {args.starts} runs each after one warm-up, the "
        f"order alternating. "
        f"(3) bench/secrets.py's `bench_unseal` for 1 and 100 secrets, {args.unseal_runs} runs "
        f"after 10 warm-up, on a throwaway SQLite store; the share is of the median machine "
        f"start in (2). Ratios are aerodrome/peer: lower is better."
    )


def notes(results: dict[str, Any]) -> list[str]:
    """What the run saw that the table does not say."""
    d = results["deploy"]
    out = []
    if d["failed_polls"]:
        statuses = ", ".join(f"{n} x `{status}`" for status, n in d["failures"].items())
        gaps = ", ".join(ms(r["no_answer_s"]) for r in d["rounds"])
        out.append(
            f"{d['failed_polls']} of the {d['polls']} GETs through the edge during the timed "
            f"deploys got no page from the app ({statuses}); longest run of failures per "
            f"deploy, in ms: {gaps}. Each timed deploy replaces a serving release, so any "
            f"failure here is a request the rollout dropped."
        )
        if any(status.startswith("502") for status in d["failures"]):
            out.append(
                "A 502 `bad_gateway` is the edge failing to connect to the machine its route "
                "table names: the old machine was stopped before the edge workers loaded the "
                "table without it. In runtime/agent.py as measured, a rolling deploy's "
                "`_switch` already unroutes the old machine (`upstream_id = None`), so the "
                "`_retire` -> `_stop` that follows skips its 1 s drain and stops it at once, "
                "while the edge polls the store every 0.5 s."
            )
    else:
        out.append(
            f"None of the {d['polls']} GETs through the edge during the timed deploys failed: "
            f"the old release served until the new one did."
        )
    return out


def readme_section(table: str, method: str, when: str, run_notes: list[str]) -> str:
    lines = [
        "## Deploy: `aero deploy` to serving, machine start, unsealing (`bench/deploy.py`)",
        "",
        "    .venv/bin/python bench/deploy.py [--deploys 5] [--starts 20] [--json] "
        "[--write-readme]",
        "",
        "A real `aero up` deploys examples/hello again and again, timed until the new release",
        "serves through the edge; a machine of the example is started directly and timed to its",
        "first passing check; the unseal that precedes every start is timed on its own. The",
        "peers are a naive restart and a naive `Popen` of the same app; see the script's",
        "docstring. Medians, with min-max: the machine is shared (see Method), so they are noisy.",
        "Rows without a peer have none: they break down the row above them, or (unsealing) are",
        "set against the machine start measured in the same run.",
        "",
        f"Last run: {when}.",
        "",
        table,
        "",
        textwrap.fill(f"Method. {method}", width=100, break_on_hyphens=False),
        "",
        "Notes from the run:",
        "",
    ]
    for note in run_notes:
        lines.append(textwrap.fill(f"- {note}", width=100, subsequent_indent="  "))
    return "\n".join(lines) + "\n"


def write_readme(section: str) -> None:
    """Replace the section between its markers, or append it; nothing else is touched."""
    text = README.read_text()
    block = f"{SECTION_BEGIN}\n{section.rstrip()}\n{SECTION_END}"
    if SECTION_BEGIN in text and SECTION_END in text:
        head, rest = text.split(SECTION_BEGIN, 1)
        text = head + block + rest.split(SECTION_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    README.write_text(text)


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--deploys", type=int, default=5, help="timed deploys (after 1 untimed)")
    parser.add_argument("--starts", type=int, default=20, help="machine starts of each kind")
    parser.add_argument("--unseal-runs", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--write-readme", action="store_true", help="update bench/README.md")
    args = parser.parse_args(argv)
    if not (EXAMPLE / "aerodrome.toml").is_file():
        parser.error(f"no example app at {EXAMPLE}")
    host = Host()
    host.start()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix="aero-bench-deploy-") as name:
        tmp = Path(name)
        results: dict[str, Any] = {}
        results["deploy"] = bench_deploys(tmp, args.deploys)
        log("naive restart deploys")
        results["naive_deploy"] = bench_naive_deploys(tmp, args.deploys)
        log(f"machine starts: {args.starts} of each")
        results["start"] = bench_starts(tmp, args.starts)
        log("unseal_for_machine: 1 and 100 secrets")
        results["unseal"] = bench_unseal(args.unseal_runs)
    host.stop()
    method = method_text(results, host, args)
    results["host"] = {k: v for k, v in vars(host).items() if not k.startswith("_")}
    results["when"] = when
    table = render_table(results)
    run_notes = notes(results)
    if args.json:
        json.dump(
            {**results, "method": method, "notes": run_notes}, sys.stdout, indent=2, default=str
        )
        print()
    else:
        print(f"aerodrome deploy benchmark, {when}\n")
        print(table)
        print()
        print(textwrap.fill(f"Method. {method}", width=100, break_on_hyphens=False))
        for note in run_notes:
            print(textwrap.fill(f"- {note}", width=100, subsequent_indent="  "))
    if args.write_readme:
        write_readme(readme_section(table, method, when, run_notes))
        log(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
