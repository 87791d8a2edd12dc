"""Org isolation between machines' cgroups, as the processes in them see it: the agents'
nftables tables loaded for real, processes placed in org cgroups as machines are."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aerodrome.platform.apps import MACHINE_UIDS
from aerodrome.runtime import cgroups
from aerodrome.runtime.agent import free_port
from aerodrome.runtime.cgroups import MachineCgroups
from aerodrome.runtime.isolation import OrgTable, drop_org_table, isolate_orgs

ORG_A, ORG_B = "org_" + "a" * 24, "org_" + "b" * 24

# Both sides of a UDP exchange on loopback, each in its own process.
UDP = """
import socket, sys, time
mine, theirs, role = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", mine))
s.settimeout(1.5)
if role == "first":  # sends first, then waits for an answer
    s.sendto(b"hello", ("127.0.0.1", theirs))
    try:
        print("got", s.recv(100).decode())
    except TimeoutError:
        print("got nothing")
else:  # answers the first one's port, as if replying
    time.sleep(0.4)
    try:
        s.sendto(b"injected", ("127.0.0.1", theirs))
        print("sent")
    except OSError as e:
        print("refused", e.errno)
"""


class Agents:
    """Stands for agents on one host: a table and cgroups per tag, orgs and machines in them."""

    def __init__(self) -> None:
        self.tags: dict[str, MachineCgroups] = {}

    def add(
        self, tag: str, orgs: list[str], owners: list[tuple[int, Path]] | None = None
    ) -> MachineCgroups:
        found, problem = MachineCgroups.open(tag)
        if found is None:
            pytest.skip(f"cgroups cannot be managed here: {problem}")
        self.tags[tag] = found
        named = []
        for org in orgs:
            name = found.nft_name(found.org(org))
            assert name is not None
            named.append((org, *name))
        guarded = []
        for port, cgroup in owners or []:
            cgroups.prepare(cgroup)
            name = found.nft_name(cgroup)
            assert name is not None
            guarded.append((port, *name))
        table = OrgTable(
            tag, MACHINE_UIDS["production"], frozenset(), frozenset(), tuple(named), tuple(guarded)
        )
        problem = isolate_orgs(table)
        assert problem is None, problem
        return found

    def run(self, where: Path | None, *argv: str) -> subprocess.Popen[str]:
        """`argv` in the cgroup `where`, or (None) in this test's own, as any host process."""
        if where is None:
            return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        cgroups.prepare(where)
        return subprocess.Popen(
            argv, stdout=subprocess.PIPE, text=True, preexec_fn=lambda: cgroups.join(where)
        )

    def close(self) -> None:
        for tag, found in self.tags.items():
            drop_org_table(tag)
            found.remove_all()


@pytest.fixture
def agents() -> Iterator[Agents]:
    made = Agents()
    try:
        yield made
    finally:
        made.close()


def _tag(name: str) -> str:
    return f"t{os.getpid()}_{time.monotonic_ns() % 10**9}_{name}"


def test_an_org_cannot_answer_a_flow_another_org_started(agents: Agents, tmp_path: Path) -> None:
    # B's machine sends from one port to another where nothing listens yet; A's machine then
    # binds that port and "replies": to conntrack, the reply direction of B's flow.
    here = agents.add(_tag("one"), [ORG_A, ORG_B])
    script = tmp_path / "udp.py"
    script.write_text(UDP)
    b_port, a_port = free_port(), free_port()
    b = agents.run(here.path(ORG_B, "mch_b"), sys.executable, str(script), str(b_port),
                   str(a_port), "first")  # fmt: skip
    a = agents.run(here.path(ORG_A, "mch_a"), sys.executable, str(script), str(a_port),
                   str(b_port), "second")  # fmt: skip
    a_says, _ = a.communicate(timeout=10)
    b_says, _ = b.communicate(timeout=10)
    assert a_says.strip() == "refused 1"  # EPERM: dropped on its way out
    assert b_says.strip() == "got nothing"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def test_orgs_are_told_apart_across_the_agents_of_one_host(
    agents: Agents, tmp_path: Path, host: str
) -> None:
    # A machine of org A under one agent, org A and org B under another (two regions or data
    # directories on one host): the marks mean the same org in both tables, on either family.
    one = agents.add(_tag("one"), [ORG_A])
    two = agents.add(_tag("two"), [ORG_A, ORG_B])
    ports = {"a": free_port()}
    ports["b"] = free_port({ports["a"]})
    server = (
        "import socket, sys\n"
        "family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n"
        "s = socket.create_server((sys.argv[1], int(sys.argv[2])), family=family)\n"
        "print('listening', flush=True)\n"
        "while True: s.accept()[0].close()\n"
    )
    probe = (
        "import socket, sys\n"
        "try:\n"
        "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()\n"
        "    print('open')\n"
        "except OSError as e:\n"
        "    print(type(e).__name__)\n"
    )
    servers = [
        agents.run(two.path(ORG_A, "mch_sa"), sys.executable, "-c", server, host, str(ports["a"])),
        agents.run(two.path(ORG_B, "mch_sb"), sys.executable, "-c", server, host, str(ports["b"])),
    ]
    try:
        for listener in servers:
            assert listener.stdout is not None and listener.stdout.readline() == "listening\n"
        seen = {}
        for name, port in ports.items():
            client = agents.run(
                one.path(ORG_A, "mch_c"), sys.executable, "-c", probe, host, str(port)
            )
            seen[name] = client.communicate(timeout=10)[0].strip()
        assert seen == {"a": "open", "b": "ConnectionRefusedError"}
    finally:
        for server_process in servers:
            server_process.kill()
            server_process.wait()


def test_a_machines_port_taken_by_another_process_gets_none_of_its_traffic(
    agents: Agents, tmp_path: Path
) -> None:
    # While a machine restarts, its port is free: another org's machine may bind it, answer
    # the checks and be sent the app's requests. Only the machine's own cgroup may serve it.
    port = free_port()
    tag = _tag("one")
    found, problem = MachineCgroups.open(tag)
    if found is None:
        pytest.skip(f"cgroups cannot be managed here: {problem}")
    owner = found.path(ORG_A, "mch_owner")
    here = agents.add(tag, [ORG_A, ORG_B], owners=[(port, owner)])
    server = (
        "import socket, sys\n"
        "s = socket.create_server(('127.0.0.1', int(sys.argv[1])))\n"
        "print('listening', flush=True)\n"
        "while True: s.accept()[0].sendall(b'hi')\n"
    )

    def reply_from(where: Path | None) -> str:
        listener = agents.run(where, sys.executable, "-c", server, str(port))
        assert listener.stdout is not None and listener.stdout.readline() == "listening\n"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as conn:
                return conn.recv(10).decode()
        except OSError as error:
            return type(error).__name__
        finally:
            listener.kill()
            listener.wait()

    assert reply_from(here.path(ORG_B, "mch_thief")) == "ConnectionRefusedError"
    assert reply_from(here.path(ORG_A, "mch_sibling")) == "ConnectionRefusedError"
    assert reply_from(None) == "ConnectionRefusedError"  # a process in no machine's cgroup
    assert reply_from(owner) == "hi"
