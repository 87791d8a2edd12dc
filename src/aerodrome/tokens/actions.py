"""The vocabulary of actions, what each token kind and member role may do, and expiries."""

from __future__ import annotations

from datetime import timedelta

# Actions on an org or on an app (an app's actions are also checked against its org).
ORG_ACTIONS: frozenset[str] = frozenset(
    {
        "orgs.read",
        "members.read",
        "members.write",
        "apps.read",
        "apps.create",
        "apps.destroy",
        "apps.deploy",
        "secrets.read",
        "secrets.write",
        "machines.read",
        "machines.write",
        "logs.read",
        "tokens.read",
        "tokens.create",
        "tokens.revoke",
        "audit.read",
        "certs.read",
        "certs.write",
    }
)
# Actions on the machine a machine token was minted for.
MACHINE_ACTIONS: frozenset[str] = frozenset({"machine.self", "secrets.unseal"})
# Actions that name no org: creating one, who am I, and `platform.*` (platform admins only).
GLOBAL_ACTIONS: frozenset[str] = frozenset(
    {"orgs.create", "auth.whoami", "platform.audit.read", "platform.watch", "platform.keys"}
)
ALL_ACTIONS: frozenset[str] = ORG_ACTIONS | MACHINE_ACTIONS | GLOBAL_ACTIONS
READ_ACTIONS: frozenset[str] = frozenset(a for a in ORG_ACTIONS if a.endswith(".read"))

ROLES = ("admin", "member")
ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "admin": ORG_ACTIONS,
    "member": ORG_ACTIONS - {"members.write", "apps.destroy", "audit.read"},
}

# Token kinds minted by the API. `session` is a user's own token: it carries no scope and is
# granted what the user's membership role allows in the org a request names. The others are
# capabilities: what they allow is written into the token and checked offline.
CAPABILITY_KINDS: dict[str, frozenset[str]] = {
    "deploy": frozenset(
        {
            "apps.read",
            "apps.deploy",
            "secrets.read",
            "secrets.write",
            "machines.read",
            "machines.write",
            "logs.read",
        }
    ),
    "org": ORG_ACTIONS - {"members.write", "tokens.create", "tokens.revoke"},
    "readonly": READ_ACTIONS,
    "machine": MACHINE_ACTIONS,
}
KINDS = ("session", *CAPABILITY_KINDS)

DEFAULT_EXPIRY: dict[str, timedelta] = {
    "session": timedelta(days=30),
    "deploy": timedelta(days=7),
    "org": timedelta(days=30),
    "readonly": timedelta(days=30),
    "machine": timedelta(days=30),
}
MAX_EXPIRY = timedelta(days=365)
