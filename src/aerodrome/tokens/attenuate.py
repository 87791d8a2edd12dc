"""Offline operations on a token a user holds: narrow it, or show what it allows.

Attenuation appends a block of checks; nothing can remove it, and the server enforces it
like any other. It needs the platform's *public* key (biscuit-python can only serialise a
token whose signatures it has checked), never the server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from biscuit_auth import (
    Biscuit,
    BiscuitValidationError,
    BlockBuilder,
    PublicKey,
    UnverifiedBiscuit,
)

from aerodrome.errors import InvalidInput
from aerodrome.ids import has_prefix
from aerodrome.tokens import format as wire
from aerodrome.tokens.actions import ALL_ACTIONS

_EXPIRY = re.compile(r"^check if time\(\$(\w+)\), \$\1 <= (\S+?);?$")
_SCOPE = re.compile(r'^check if (org|org_slug|app|app_name|machine)\("([^"]*)"\);?$')
_SET = re.compile(r"^check if (\w+)\(\$(\w+)\), \{(.*)\}\.contains\(\$\2\);?$")
_FACT = re.compile(r'^(token|kind|user)\("([^"]*)"\);$')


def parse_public_key(text: str) -> PublicKey:
    try:
        return PublicKey(text.strip())
    except Exception as exc:
        raise InvalidInput(
            "invalid public key", hint="expected the form ed25519/<64 hex digits>"
        ) from exc


def attenuate(
    token: str,
    public_key: PublicKey,
    *,
    apps: list[str] | None = None,
    orgs: list[str] | None = None,
    actions: list[str] | None = None,
    expiry: timedelta | None = None,
    now: datetime | None = None,
) -> str:
    """A new token that allows only what `token` allows *and* these restrictions.

    `apps` and `orgs` take ids (`app_…`, `org_…`) or names; the server knows both.
    """
    lines: list[str] = []
    params: dict[str, object] = {}
    if apps:
        ids = {a for a in apps if has_prefix(a, "app")}
        names = set(apps) - ids
        if ids and names:
            raise InvalidInput("give apps all by id or all by name, not mixed")
        lines.append(
            "check if app($x), {apps}.contains($x);"
            if ids
            else "check if app_name($x), {apps}.contains($x);"
        )
        params["apps"] = ids or names
    if orgs:
        ids = {o for o in orgs if has_prefix(o, "org")}
        names = set(orgs) - ids
        if ids and names:
            raise InvalidInput("give orgs all by id or all by slug, not mixed")
        lines.append(
            "check if org($x), {orgs}.contains($x);"
            if ids
            else "check if org_slug($x), {orgs}.contains($x);"
        )
        params["orgs"] = ids or names
    if actions:
        unknown = sorted(set(actions) - ALL_ACTIONS)
        if unknown:
            raise InvalidInput(
                f"unknown action(s): {', '.join(unknown)}",
                hint=f"known actions: {', '.join(sorted(ALL_ACTIONS))}",
            )
        lines.append("check if action($a), {actions}.contains($a);")
        params["actions"] = set(actions)
    if expiry is not None:
        expires_at = ((now or datetime.now(UTC)) + expiry).replace(microsecond=0)
        lines.append("check if time($t), $t <= {exp};")
        params["exp"] = expires_at
    if not lines:
        raise InvalidInput(
            "nothing to restrict", hint="pass at least one of --app, --org, --actions, --expiry"
        )
    parent = _parse_verified(token, public_key)
    child = parent.append(BlockBuilder("\n".join(lines), params))
    return wire.encode(bytes(child.to_bytes()))


def _parse_verified(token: str, public_key: PublicKey) -> Biscuit:
    try:
        raw = wire.decode(token)
    except wire.TokenFormatError as exc:
        raise InvalidInput(str(exc), code="malformed") from exc
    try:
        return Biscuit.from_bytes(raw, public_key)
    except (BiscuitValidationError, ValueError) as exc:
        raise InvalidInput(
            "token signature does not verify with this platform's public key",
            hint="is the token from this platform? check AERO_API_URL / AERO_TOKEN_PUBLIC_KEY",
            code="invalid_signature",
        ) from exc


@dataclass
class BlockInfo:
    index: int
    revocation_id: str
    source: str
    restrictions: dict[str, object] = field(default_factory=dict)


@dataclass
class TokenInfo:
    root_key_id: int | None
    token_id: str | None
    kind: str | None
    user_id: str | None
    expires_at: datetime | None
    blocks: list[BlockInfo]

    def to_dict(self) -> dict[str, object]:
        return {
            "token_id": self.token_id,
            "kind": self.kind,
            "user_id": self.user_id,
            "root_key_id": self.root_key_id,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "blocks": [b.__dict__ for b in self.blocks],
        }


def parse_block(source: str) -> tuple[dict[str, object], dict[str, str], datetime | None, bool]:
    """What one block's source says, in our vocabulary.

    Returns (restrictions, facts, expiry, time_dependent_unknown): the last is True when a
    check reads the time in a form other than an expiry, so a decision cannot be cached.
    """
    restrictions: dict[str, object] = {}
    facts: dict[str, str] = {}
    expiry: datetime | None = None
    unknown_time = False
    for raw in source.splitlines():
        line = raw.strip()
        if not line:
            continue
        if m := _FACT.match(line):
            facts[m.group(1)] = m.group(2)
        elif m := _EXPIRY.match(line):
            at = datetime.fromisoformat(m.group(2).replace("Z", "+00:00"))
            expiry = at if expiry is None else min(expiry, at)
            restrictions["expires_at"] = expiry.isoformat()
        elif m := _SCOPE.match(line):
            restrictions[m.group(1)] = [m.group(2)]
        elif m := _SET.match(line):
            values = sorted(v.strip().strip('"') for v in m.group(3).split(",") if v.strip())
            restrictions["actions" if m.group(1) == "action" else m.group(1)] = values
        else:
            other = restrictions.setdefault("other", [])
            assert isinstance(other, list)
            other.append(line)
            if "time(" in line:
                unknown_time = True
    return restrictions, facts, expiry, unknown_time


def inspect(token: str) -> TokenInfo:
    """Decode a token without any key: every block, its revocation id and what it restricts.
    Nothing here is trusted: the server checks the signatures."""
    try:
        raw = wire.decode(token)
    except wire.TokenFormatError as exc:
        raise InvalidInput(str(exc), code="malformed") from exc
    try:
        unverified = UnverifiedBiscuit.from_base64(wire.encode_b64(raw))
    except Exception as exc:
        raise InvalidInput("token payload is not a biscuit", code="malformed") from exc
    blocks = []
    facts: dict[str, str] = {}
    expiry: datetime | None = None
    for index in range(unverified.block_count()):
        source = unverified.block_source(index)
        restrictions, block_facts, block_expiry, _ = parse_block(source)
        if index == 0:
            facts = block_facts
        if block_expiry is not None:
            expiry = block_expiry if expiry is None else min(expiry, block_expiry)
        blocks.append(
            BlockInfo(index, unverified.revocation_ids[index], source.strip(), restrictions)
        )
    return TokenInfo(
        root_key_id=unverified.root_key_id(),
        token_id=facts.get("token"),
        kind=facts.get("kind"),
        user_id=facts.get("user"),
        expires_at=expiry,
        blocks=blocks,
    )
