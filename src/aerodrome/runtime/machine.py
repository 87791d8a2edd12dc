"""A machine: one supervised process tree running an app's command.

The child gets a clean environment (nothing inherited from the agent): a fixed PATH, `PORT`,
`AERO_*` identity variables, the app's `[env]`, and its secrets unsealed at spawn time straight
into the environment (never argv, never disk). It runs in its own session and process group,
and its own cgroup when the agent manages them (runtime/cgroups.py), with resource limits and
`no_new_privs`. Its stdout and stderr are read line by line and passed through the secrets
redactor before anything stores or shows them.

When the agent runs as root, a machine runs as its app's own unprivileged uid
(`MachineSpec.user`, see `platform.apps.MACHINE_UIDS`): its workdir is handed over to that uid
once, made 0700, and the child gets that uid and gid, no supplementary groups and umask 077.
No two apps share a uid, so one app cannot read another's files or `/proc/PID/environ`,
connect to its API socket or signal it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import resource
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aerodrome.runtime import cgroups
from aerodrome.secrets.redact import Redactor
from aerodrome.secrets.values import SecretValue

log = logging.getLogger("aerodrome.runtime")

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1
MAX_LINE = 16 * 1024  # a longer line is split; each piece is redacted
DEFAULT_MEMORY = 512 * 1024 * 1024
DEFAULT_OPEN_FILES = 1024
PIPE_DRAIN_SECONDS = 5.0  # after the machine ends, for the output still in its pipes


def machine_user(app_uid: int) -> int | None:
    """The uid a machine runs as: its app's own (`App.machine_uid`), or None when the agent
    is not root (then machines run as the agent's own user, as in development)."""
    return app_uid if os.geteuid() == 0 else None


def check_searchable(path: Path, uid: int) -> None:
    """Every directory above `path` must let `uid` (gid = uid) pass, or the machine could
    not reach its own home or socket by name. Raises PermissionError naming the first that
    does not (the platform's data directory is 0700: machine trees live outside it)."""
    for parent in path.absolute().parents:
        st = parent.stat()
        if st.st_uid == uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == uid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            raise PermissionError(
                f"uid {uid} cannot reach {path}: {parent} is mode {st.st_mode & 0o777:o}, owned "
                f"by {st.st_uid}; put machine directories under a directory searchable by others"
            )


def hand_over(tree: Path, uid: int) -> None:
    """Give `tree` to `uid` (gid = uid), its top 0700. Only a tree no machine has owned yet is
    walked: the agent unpacked it, so it holds no links planted by a machine (symlinks are
    changed themselves, never followed). A tree already handed over is left as it is."""
    if tree.lstat().st_uid != uid:
        for top, dirs, files in os.walk(tree):
            for name in dirs + files:
                os.chown(os.path.join(top, name), uid, uid, follow_symlinks=False)
        os.chown(tree, uid, uid, follow_symlinks=False)
    tree.chmod(0o700)


@dataclass(frozen=True)
class MachineSpec:
    machine_id: str
    app: str
    release: int
    region: str
    command: str
    workdir: Path
    port: int
    env: Mapping[str, str] = field(default_factory=dict)
    memory_bytes: int = DEFAULT_MEMORY
    open_files: int = DEFAULT_OPEN_FILES
    api_socket: Path | None = None
    user: int | None = None  # run as this uid (gid the same); the agent must be root
    # Where to note the process group at each start (see `kill_recorded_groups`): a file the
    # machine cannot write, so the next agent run can end what this one leaves behind.
    group_file: Path | None = None
    # The machine's own cgroup (see runtime/cgroups.py), when the agent can manage cgroups:
    # all of its processes, including those that leave its process group. Made by `start` if
    # missing, emptied when the machine ends, removed by whoever owns the machine.
    cgroup: Path | None = None


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/PID/stat from its third field on (the command name may hold spaces)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def _start_time(pid: int) -> int:
    """When the process started, in clock ticks after boot: with the pid, it names one
    process for the life of the boot (a pid alone is reused)."""
    return int(_stat_fields(pid)[19])


def _recorded_group(group_file: Path) -> tuple[int, int] | None:
    """(pgid, uid) of a machine's recorded group if its processes may still be killed: from
    this boot (after a reboot the ids mean nothing), not this process's own group, and not
    when the group's id is now a live process other than the one recorded (the id was handed
    on)."""
    try:
        record = json.loads(group_file.read_text())
        pgid, uid, boot = int(record["pgid"]), int(record["uid"]), str(record["boot"])
        started = int(record["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if boot != _boot_id() or pgid <= 1 or pgid in (os.getpid(), os.getpgrp()):
        return None
    try:
        if _start_time(pgid) != started:
            return None
    except (OSError, ValueError, IndexError):
        pass  # the leader is gone (it died with the agent): its group may live on
    return pgid, uid


def kill_recorded_groups(group_files: Iterable[Path]) -> int:
    """Kill what machines of a previous agent run left behind: every process still in a
    process group one of `group_files` names and running as its uid (see `_recorded_group`).
    The dying agent took each machine's first process with it (`PR_SET_PDEATHSIG`), but not
    the processes that one started (a server's workers, a background job), which would keep
    its port and its secrets in memory. A process that left the group (`setsid`) is out of
    reach. One pass over /proc for all of them; returns how many were killed."""
    groups = dict(filter(None, (_recorded_group(path) for path in group_files)))
    if not groups:
        return 0
    killed = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            uid = groups.get(int(_stat_fields(proc.name)[2]))
            if uid is None:
                continue
            real_uid = int(next(
                line.split()[1] for line in (proc / "status").read_text().splitlines()
                if line.startswith("Uid:")
            ))  # fmt: skip
            if real_uid == uid:
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
        except (OSError, ValueError, IndexError, StopIteration):
            continue  # gone meanwhile, or not ours to read
    return killed


def kill_recorded_group(group_file: Path) -> int:
    """`kill_recorded_groups` of one machine."""
    return kill_recorded_groups([group_file])


@dataclass(frozen=True)
class LogLine:
    time: float
    machine_id: str
    stream: str
    message: str


LogSink = Callable[[LogLine], Awaitable[None] | None]


def machine_environment(spec: MachineSpec, secrets: Mapping[str, SecretValue]) -> dict[str, str]:
    """Exactly what the child sees. Secrets win over `[env]` of the same name (as on Fly)."""
    env = {
        "PATH": SAFE_PATH,
        "HOME": str(spec.workdir),
        "LANG": "C.UTF-8",
        "PORT": str(spec.port),
        "AERO_APP_NAME": spec.app,
        "AERO_MACHINE_ID": spec.machine_id,
        "AERO_REGION": spec.region,
        "AERO_RELEASE": str(spec.release),
    }
    if spec.api_socket is not None:
        env["AERO_API_SOCKET"] = str(spec.api_socket)
    env.update(spec.env)
    env.update({name: value.reveal_text() for name, value in secrets.items()})
    return env


def _confine(
    memory_bytes: int, open_files: int, uid: int | None = None, cgroup: Path | None = None
) -> Callable[[], None]:
    """Runs in the child between fork and exec: its cgroup (while still root), limits, the
    machine's uid (groups, then gid, then uid: nothing of root's is left), and no privilege
    gain through exec. Done here rather than with `subprocess`'s user/group arguments, which
    uvloop's event loop does not take. A failure here fails the start."""

    def apply() -> None:
        if cgroup is not None:
            cgroups.join(cgroup)
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core dumps full of secrets
        if uid is not None and os.geteuid() != uid:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.umask(0o077)
        libc = ctypes.CDLL(None, use_errno=True)
        # Die with the agent (set after the uid change, which clears it): a machine never
        # outlives the supervisor that holds its credential and its log pipe.
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(126)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            os._exit(126)

    return apply


class _MachineProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """`create_subprocess_exec`'s protocol, and an event set when the process exits.
    `Process.wait()` also waits for the output pipes to close, which a process the machine
    started (and that outlives it) can put off for ever."""

    def __init__(self, exited: asyncio.Event, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self._exited_event = exited

    def process_exited(self) -> None:
        super().process_exited()
        self._exited_event.set()


class Machine:
    """Start, watch and stop one machine's process; stream its redacted output to `sink`."""

    def __init__(self, spec: MachineSpec, redactor: Redactor, sink: LogSink) -> None:
        self.spec = spec
        self.redactor = redactor
        self.sink = sink
        self.process: asyncio.subprocess.Process | None = None
        self._transport: asyncio.SubprocessTransport | None = None
        # Waits for the main process to exit, then kills what it left behind (once: its pid,
        # the group id, is free for reuse from then on); its result is the exit status.
        self._reaper: asyncio.Task[int] | None = None
        self.started_at = 0.0
        self._readers: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"Machine({self.spec.machine_id!r}, app={self.spec.app!r})"

    async def start(self, secrets: Mapping[str, SecretValue]) -> None:
        if self.process is not None:  # a restart: reap the previous process and its pipes
            await self.wait()
        self.spec.workdir.mkdir(parents=True, exist_ok=True)
        if self.spec.user is not None:
            uid = self.spec.user
            if os.geteuid() not in (0, uid):
                raise PermissionError(f"running a machine as uid {uid} needs the agent to be root")
            check_searchable(self.spec.workdir, uid)
            await asyncio.to_thread(hand_over, self.spec.workdir, uid)
        if self.spec.cgroup is not None:
            await asyncio.to_thread(cgroups.prepare, self.spec.cgroup)
        loop = asyncio.get_running_loop()
        exited = asyncio.Event()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _MachineProtocol(exited, MAX_LINE, loop),
                "/bin/sh", "-c", self.spec.command,  # the command is config, never a secret
                cwd=self.spec.workdir,
                env=machine_environment(self.spec, secrets),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                preexec_fn=_confine(
                    self.spec.memory_bytes, self.spec.open_files, self.spec.user, self.spec.cgroup
                ),
            )  # fmt: skip
        except BaseException:
            if self.spec.cgroup is not None:  # a child that got in before failing
                await asyncio.to_thread(cgroups.empty, self.spec.cgroup)
            raise
        self._transport = transport
        self.process = process = asyncio.subprocess.Process(transport, protocol, loop)
        self._reaper = asyncio.create_task(self._reap(process, exited))
        self.started_at = time.monotonic()
        if self.spec.group_file is not None:
            uid = self.spec.user if self.spec.user is not None else os.geteuid()
            pid = self.process.pid
            try:
                started = _start_time(pid)
            except (OSError, ValueError, IndexError):
                started = 0  # already exited and reaped: its group is killed by `wait`
            record = {"pgid": pid, "uid": uid, "boot": _boot_id(), "started": started}
            self.spec.group_file.write_text(json.dumps(record))
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            asyncio.create_task(self._pump(self.process.stdout, "stdout")),
            asyncio.create_task(self._pump(self.process.stderr, "stderr")),
        ]

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        """Line by line; a value split across two writes is still whole within its line, and
        the stream redactor catches one split across a forced line break."""
        redact = self.redactor.stream()
        while True:
            try:
                chunk = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as end:
                chunk = end.partial
            except asyncio.LimitOverrunError as over:
                chunk = await stream.read(over.consumed)
            if not chunk:
                tail = redact.flush()
                if tail:
                    await self._emit(name, tail)
                return
            cleaned = redact.feed(chunk)
            if chunk.endswith(b"\n"):
                cleaned += redact.flush()
            if cleaned:
                await self._emit(name, cleaned)

    async def _emit(self, stream: str, data: bytes) -> None:
        text = data.decode("utf-8", errors="replace").rstrip("\n")
        try:
            result = self.sink(LogLine(time.time(), self.spec.machine_id, stream, text))
            if result is not None:
                await result
        except Exception as error:  # e.g. a full disk: drop the line, keep draining the pipe
            log.warning("a log line of %s was lost: %s", self.spec.machine_id, type(error).__name__)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def _reap(self, process: asyncio.subprocess.Process, exited: asyncio.Event) -> int:
        """When the main process exits, the machine has ended, whatever still holds its output
        pipes: anything it left behind (which would otherwise keep the pipes, a port and its
        secrets) goes at once, in its process group or, with a cgroup, anywhere."""
        await exited.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # the id stays taken while a member lives
        if self.spec.cgroup is not None:  # emptied, kept for a restart (its owner removes it)
            await asyncio.to_thread(cgroups.empty, self.spec.cgroup)
        assert process.returncode is not None
        return process.returncode

    async def wait(self) -> int:
        """The main process's exit status, once it and everything it left behind are gone and
        its last output is read."""
        assert self.process is not None and self._transport is not None
        assert self._reaper is not None
        code = await asyncio.shield(self._reaper)
        if self._readers:
            _, reading = await asyncio.wait(self._readers, timeout=PIPE_DRAIN_SECONDS)
            if reading:
                # Held open by a process outside the group (no cgroup to find it): stop reading.
                log.warning("%s: output still open after exit, closed", self.spec.machine_id)
                self._transport.close()
                await asyncio.gather(*reading, return_exceptions=True)
        return code

    async def stop(self, grace: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """`sig` to the whole process group and every process of the machine's cgroup, then
        SIGKILL after `grace` seconds."""
        if self.process is None:
            return None
        if self.process.returncode is not None:
            return await self.wait()
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        for pid in cgroups.members(self.spec.cgroup) if self.spec.cgroup is not None else ():
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(pid) != pgid:  # those that left the group: once each
                    os.kill(pid, sig)
        try:
            return await asyncio.wait_for(self.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            return await self.wait()
