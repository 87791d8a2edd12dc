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
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

log = logging.getLogger("aerodrome.agent")
TABLE = "aerodrome"


def ruleset(test_uids: range) -> str:
    uids = f"{test_uids.start}-{test_uids.stop - 1}"
    new_to_this_host = f"meta skuid {uids} ct state new fib daddr type local"
    return f"""\
table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
  chain output {{
    type filter hook output priority filter; policy accept;
    {new_to_this_host} meta l4proto tcp counter reject with tcp reset
    {new_to_this_host} counter reject
  }}
}}
"""


def isolate_test_machines(test_uids: range) -> str | None:
    """Install the rule; returns None when it is in place, else why not (for a warning)."""
    if os.geteuid() != 0:
        return "not root: test machines run as the agent's user, with no firewall rule"
    nft = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None
    )
    if nft is None:
        return "nft is not installed (apt-get install nftables): test machines can reach this host"
    result = subprocess.run(
        [nft, "-f", "-"], input=ruleset(test_uids), capture_output=True, text=True, timeout=10
    )
    if result.returncode != 0:
        return f"nft refused the rule: {result.stderr.strip()[:200]}"
    return None
