"""Each machine in a cgroup (v2) of its own: its whole process tree, wherever it goes.

A process group holds a machine's processes only while they stay in it: one that calls
`setsid` (a daemonizing server, a background job) leaves, and outlives the machine with its
port and its secrets in memory. Nothing inside a cgroup can leave it without write access to
the cgroup tree, which a machine's uid does not have. So when the agent can write cgroups
(root, a cgroup2 mount), each machine starts in `<cgroup2>/aerodrome/<agent tag>/<org
id>/<machine id>`, joined between fork and exec, and ends with `cgroup.kill`: every process in
it, at once. The org level lets the firewall tell an org's machines' sockets apart
(runtime/isolation.py). The firewall holds cgroups by id, so an org's cgroup is kept while the
agent runs, and a machine's from its launch until it is retired (emptied, not removed, when it
exits and restarts). An agent that died without stopping its machines leaves
its cgroups behind; the next agent with the same tag (region and data directory) kills and
removes them at start.

Without cgroups (an agent that is not root, no cgroup2 mount) the agent falls back to process
groups (`machine.kill_recorded_groups`) and says so once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

NFT_CGROUP_ROOT = Path("/sys/fs/cgroup")  # nft resolves `socket cgroupv2` paths from here


def cgroup2_mount() -> Path | None:
    """Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup` on a unified system,
    `/sys/fs/cgroup/unified` on a hybrid one), or None."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


class MachineCgroups:
    """The cgroups of one agent's machines, under `<cgroup2>/aerodrome/<tag>`."""

    def __init__(self, base: Path, mount: Path) -> None:
        self.base = base
        self.mount = mount  # the cgroup2 hierarchy's, found once

    @classmethod
    def open(cls, tag: str) -> tuple[MachineCgroups | None, str]:
        """The agent's cgroups, or None and why they cannot be used. Probed once: a cgroup
        made, joined by a short-lived process, and removed."""
        mount = cgroup2_mount()
        if mount is None:
            return None, "no cgroup2 hierarchy is mounted"
        base = mount / "aerodrome" / tag
        probe = base / "probe"
        try:
            probe.mkdir(parents=True, exist_ok=True)
            try:  # a process must be able to join one, as each machine's does
                subprocess.run(["true"], check=True, timeout=10, preexec_fn=lambda: join(probe))
            except subprocess.SubprocessError as exc:
                raise PermissionError(f"a process cannot join {probe}") from exc
            finally:
                remove(probe)
            with contextlib.suppress(OSError):
                base.rmdir()  # made again with the first machine; kept if leftovers are in it
        except OSError as exc:
            return None, f"cannot manage cgroups under {base} ({exc.strerror or exc})"
        return cls(base, mount), ""

    def path(self, org_id: str, machine_id: str) -> Path:
        return self.base / org_id / machine_id

    def org(self, org_id: str) -> Path:
        """The org's cgroup, made if missing (the firewall rules name it)."""
        path = self.base / org_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def leftovers(self) -> list[Path]:
        """Machine cgroups an earlier agent with this tag left behind."""
        try:
            orgs = [p for p in self.base.iterdir() if p.is_dir()]
        except OSError:
            return []
        found: list[Path] = []
        for org in orgs:
            with contextlib.suppress(OSError):  # gone meanwhile
                found.extend(machine for machine in org.iterdir() if machine.is_dir())
        return found

    def remove_all(self) -> int:
        """Kill and remove every machine cgroup of this agent, then the org cgroups and the
        agent's own (what is still busy stays, for the next start). How many processes were
        killed."""
        killed = sum(remove(machine) for machine in self.leftovers())
        with contextlib.suppress(OSError):
            for org in self.base.iterdir():
                with contextlib.suppress(OSError):
                    org.rmdir()
            self.base.rmdir()
        return killed

    def nft_name(self, org_cgroup: Path) -> tuple[int, str] | None:
        """How nftables' `socket cgroupv2` names `org_cgroup`: its level below the cgroup2
        root, and its path below /sys/fs/cgroup (where nft looks). None if nft cannot."""
        try:
            level = len(org_cgroup.relative_to(self.mount).parts)
            return level, str(org_cgroup.relative_to(NFT_CGROUP_ROOT))
        except ValueError:
            return None


def prepare(cgroup: Path) -> None:
    """Make the machine's cgroup (again, for a restart); it must hold no process."""
    cgroup.mkdir(parents=True, exist_ok=True)
    kill(cgroup)


def join(cgroup: Path) -> None:
    """Move the calling process into `cgroup` (in the child, before it drops root)."""
    with open(cgroup / "cgroup.procs", "w") as procs:
        procs.write("0")


def members(cgroup: Path) -> list[int]:
    try:
        return [int(pid) for pid in (cgroup / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def kill(cgroup: Path) -> int:
    """SIGKILL every process in `cgroup`, however it got there; how many there were.
    `cgroup.kill` (Linux 5.14) does it in one step, with no race against `fork`; before
    that, kill what is listed until nothing is."""
    found = len(members(cgroup))
    if found == 0:
        return 0
    try:
        (cgroup / "cgroup.kill").write_text("1")
        return found
    except OSError:
        pass
    for _ in range(50):
        pids = members(cgroup)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    return found


def empty(cgroup: Path, timeout: float = 5.0) -> int:
    """Kill what is in `cgroup` and wait (up to `timeout`) until the dying have left it; the
    cgroup stays, with its id (the firewall's rules name a machine's). How many were killed."""
    killed = kill(cgroup)
    deadline = time.monotonic() + timeout
    while members(cgroup) and time.monotonic() < deadline:
        kill(cgroup)
        time.sleep(0.01)
    return killed


def remove(cgroup: Path, timeout: float = 5.0) -> int:
    """Kill what is left in `cgroup` and remove it once empty (dying processes take a
    moment to leave). How many processes were killed."""
    deadline = time.monotonic() + timeout
    killed = empty(cgroup, timeout)
    while True:
        try:
            cgroup.rmdir()
            return killed
        except FileNotFoundError:
            return killed
        except OSError:
            if time.monotonic() > deadline:
                return killed  # still busy: the next agent start tries again
            time.sleep(0.01)
