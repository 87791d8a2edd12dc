"""Test-environment machines get no route to this host: nothing listening here (production
machines, the API, the edge, a database on loopback) accepts a connection they open.

Machines of test-environment apps run as uids from a range of their own
(`platform.apps.MACHINE_UIDS`), so one nftables rule on the output hook can tell their packets
apart: a new connection from any uid of that range to any address of this host (`fib daddr
type local`: loopback and the host's own addresses) is refused. Replies to connections made
*to* them (the edge, health checks) are established, not new, so they pass; so does traffic to
other hosts, so a test app can still reach the third-party services it is tested against.
Unix sockets (its machine-local API) are not IP.

The table is named `inet aerodrome` and replaced whole on each agent start (one `nft -f`
transaction); it is left in place when the agent stops, since other platforms on the host may
rely on it and the rule matches only the test range.

Production machines may reach this host, but not another org's machines' ports: each agent
keeps a table of its own (`inet aerodrome_apps_<tag>`, the tag naming its region and data
directory, so platforms and regions on one host never share one) with the port each of its
machines serves on (`$PORT`) and the (uid . port) pairs allowed to open a connection to it,
the production apps of the machine's org (as on Fly, an org's apps reach each other; no one
else's do, except through the edge). A new TCP connection from a production uid to one of
those ports on this host is refused unless its pair is in the set.

When the agent runs machines in cgroups (runtime/cgroups.py: `.../<org>/<machine>`), the same
table also covers every TCP and UDP port a machine opens: on the output hook, a new connection
from a socket in one of the agent's org cgroups to this host gets a conntrack mark naming the
org (`socket cgroupv2`; the high bit and a hash of the org id, so every agent on the host marks
an org alike), and a packet that a machine sends on a connection marked for another org is
dropped; on the input hook (loopback), a packet reaching a socket in an org cgroup on a
connection marked for another org is refused. Checking every packet, not only new
connections, keeps an org from answering, as the "reply", a UDP flow another org started.
Connections from anything that is not a machine (the edge, health checks, other hosts) carry
no such mark and pass; but a new loopback TCP connection to a machine's `$PORT` is accepted
only when the listener is in that machine's own cgroup (and refused otherwise), so a process
that took the port while the machine restarted is sent nothing. If nft refuses these rules,
the agent installs the uid rule alone and says so. Another user of the host's conntrack marks
must leave the high bit alone.

The agent replaces the table whole whenever it changes, adds a machine's port (and its org)
before the machine starts (and does not start it if that fails), and removes the table when
it stops (its machines stop with it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, replace

log = logging.getLogger("aerodrome.agent")
TABLE = "aerodrome"


def _replacing(table: str, body: str) -> str:
    """`nft -f` input that replaces `table` whole, in one transaction (the first line makes
    sure there is one to delete)."""
    return f"table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n{body}}}\n"


def _uids(uids: range) -> str:
    return f"{uids.start}-{uids.stop - 1}"


def _chain(hook: str, *rules: str) -> str:
    """A base chain named after its hook (`output`, `input`), accepting what no rule refuses."""
    lines = "".join(f"    {rule}\n" for rule in rules)
    return (
        f"  chain {hook} {{\n    type filter hook {hook} priority filter; policy accept;\n"
        f"{lines}  }}\n"
    )


def ruleset(test_uids: range) -> str:
    new_to_this_host = f"meta skuid {_uids(test_uids)} ct state new fib daddr type local"
    return _replacing(
        TABLE,
        _chain(
            "output",
            f"{new_to_this_host} meta l4proto tcp counter reject with tcp reset",
            f"{new_to_this_host} counter reject",
        ),
    )


def apps_table(tag: str) -> str:
    return "aerodrome_apps_" + re.sub(r"[^a-z0-9_]", "_", tag.lower())


def _nft() -> str | None:
    return shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None
    )


ORG_MARK_BIT = 0x80000000  # set in the conntrack mark of every connection a machine opens


def org_mark(org_id: str) -> int:
    """The conntrack mark of connections the org's machines open, the same in every agent's
    table on the host: the high bit, and 31 bits of a hash of the org's id."""
    digest = int.from_bytes(hashlib.sha256(org_id.encode()).digest()[:4], "big")
    return ORG_MARK_BIT | (digest & ~ORG_MARK_BIT & 0xFFFFFFFF)


@dataclass(frozen=True)
class OrgTable:
    """What one agent's org table holds (see the module docstring): its tag; the production
    uid range; its machines' ports and the (uid . port) pairs allowed to open them; with
    cgroups, each org with machines here (its id, and nft's level and path of its cgroup) and
    each machine's port with nft's level and path of the machine's cgroup."""

    tag: str
    production_uids: range
    ports: frozenset[int]
    peers: frozenset[tuple[int, int]]
    org_cgroups: tuple[tuple[str, int, str], ...] = ()
    port_owners: tuple[tuple[int, int, str], ...] = ()

    def without_cgroups(self) -> OrgTable:
        """The uid . port rule alone (for a kernel or nft without `socket cgroupv2`)."""
        return replace(self, org_cgroups=(), port_owners=())

    def ruleset(self) -> str:
        """`nft -f` input replacing the table: connections from production machines to the
        machines' ports only from the same org's apps; with cgroups, any packet between a
        machine of one org and a socket of another's refused, and a new TCP connection on
        loopback to a machine's port refused unless it reaches a socket of that machine."""
        port_list = ", ".join(str(port) for port in sorted(self.ports))
        peer_list = ", ".join(f"{uid} . {port}" for uid, port in sorted(self.peers))
        guarded = (
            f"meta skuid {_uids(self.production_uids)} ct state new fib daddr type local "
            "tcp dport @ports"
        )
        sets = (
            "  set ports {\n    type inet_service;"
            + (f" elements = {{ {port_list} }};" if port_list else "")
            + "\n  }\n  set peers {\n    typeof meta skuid . tcp dport;"
            + (f" elements = {{ {peer_list} }};" if peer_list else "")
            + "\n  }\n"
        )
        marked = f"ct mark & 0x{ORG_MARK_BIT:08x} == 0x{ORG_MARK_BIT:08x}"
        marking, leaving, arriving = [], [], []
        for org_id, level, path in self.org_cgroups:
            org = f'socket cgroupv2 level {level} "{path}"'
            mark = f"0x{org_mark(org_id):08x}"
            # A new connection one of its machines opens to this host carries the org's mark.
            marking.append(f"ct state new fib daddr type local {org} ct mark set {mark}")
            # Any packet that one of its machines sends on a connection another org's machine
            # opened (the reply direction of a UDP "connection", say) is dropped...
            leaving.append(f"{marked} {org} ct mark != {mark} counter drop")
            # ... and any packet that reaches one of its machines' sockets on a connection
            # another org's machine opened is refused (so is a new one).
            to_org = f'iif "lo" {marked} {org} ct mark != {mark}'
            arriving.append(f"{to_org} meta l4proto tcp counter reject with tcp reset")
            arriving.append(f"{to_org} counter reject")
        for port, level, path in self.port_owners:
            # Whoever else listens on a machine's port (another machine, or any process, that
            # took it while the machine restarted) gets none of its traffic: not the edge's,
            # not the checks'. Last in the chain: the org rules above refused what they refuse.
            to_port = f'iif "lo" ct state new tcp dport {port}'
            arriving.append(f'{to_port} socket cgroupv2 level {level} "{path}" accept')
            arriving.append(f"{to_port} counter reject with tcp reset")
        chains = _chain(
            "output",
            f"{guarded} meta skuid . tcp dport != @peers counter reject with tcp reset",
            *marking,
            *leaving,
        )
        if arriving:
            chains += _chain("input", *arriving)
        return _replacing(apps_table(self.tag), sets + chains)


def _nft_apply(rules: str, what: str) -> str | None:
    """Load `rules` in one transaction; None when done, else why not (for a warning)."""
    if os.geteuid() != 0:
        return f"not root: machines run as the agent's user, with no firewall rule for {what}"
    nft = _nft()
    if nft is None:
        return f"nft is not installed (apt-get install nftables): no firewall rule for {what}"
    result = subprocess.run(
        [nft, "-f", "-"], input=rules, capture_output=True, text=True, timeout=10
    )
    if result.returncode != 0:
        return f"nft refused the rule for {what}: {result.stderr.strip()[:200]}"
    return None


def isolate_test_machines(test_uids: range) -> str | None:
    """Install the rule; returns None when it is in place, else why not (for a warning)."""
    return _nft_apply(ruleset(test_uids), "test machines")


def drop_org_table(tag: str) -> None:
    """Remove this agent's org table (its machines are gone: it guards nothing)."""
    nft = _nft()
    if nft is not None and os.geteuid() == 0:
        subprocess.run(
            [nft, "delete", "table", "inet", apps_table(tag)], capture_output=True, timeout=10
        )


def isolate_orgs(table: OrgTable) -> str | None:
    """Replace this agent's org table; None when it is in place, else why not."""
    return _nft_apply(table.ruleset(), "other orgs")
