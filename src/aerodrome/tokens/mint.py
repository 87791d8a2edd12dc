"""Minting: the root key and the authority block of each token kind."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from biscuit_auth import Algorithm, BiscuitBuilder, KeyPair, PrivateKey, PublicKey

from aerodrome.errors import InvalidInput
from aerodrome.keyfiles import RootSecret
from aerodrome.tokens import format as wire
from aerodrome.tokens.actions import CAPABILITY_KINDS, DEFAULT_EXPIRY, KINDS, MAX_EXPIRY

ROOT_KEY_ID = 1


class RootKey:
    """The token signing key. Only the process that mints holds it; verifiers get `public`."""

    def __init__(self, keypair: KeyPair, key_id: int = ROOT_KEY_ID) -> None:
        self._keypair = keypair
        self.key_id = key_id
        self.public = keypair.public_key

    def __repr__(self) -> str:
        return f"RootKey(key_id={self.key_id}, public={self.public!r})"

    @classmethod
    def from_root(cls, root: RootSecret) -> RootKey:
        seed = root.derive("tokens/ed25519/1")
        # biscuit-python's type stub lags its API: from_bytes takes the algorithm.
        private = PrivateKey.from_bytes(seed, Algorithm.Ed25519)  # type: ignore[call-arg,attr-defined]
        return cls(KeyPair.from_private_key(private))

    @property
    def private(self) -> PrivateKey:
        return self._keypair.private_key

    def public_keys(self) -> dict[int, PublicKey]:
        return {self.key_id: self.public}


@dataclass(frozen=True)
class Scope:
    """What a token is bound to. A session token is bound to a user only."""

    kind: str
    user_id: str | None = None
    org_id: str | None = None
    app_id: str | None = None
    machine_id: str | None = None


@dataclass(frozen=True)
class Minted:
    token: str
    token_id: str
    revocation_id: str
    expires_at: datetime

    def __repr__(self) -> str:  # the token is a credential: never in a repr or a log
        return f"Minted(token_id={self.token_id!r}, expires_at={self.expires_at.isoformat()})"


def clamp_expiry(kind: str, expiry: timedelta | None) -> timedelta:
    if expiry is None:
        return DEFAULT_EXPIRY[kind]
    if expiry > MAX_EXPIRY:
        raise InvalidInput(
            f"expiry {expiry.days}d is longer than the maximum of {MAX_EXPIRY.days}d",
            hint="tokens are meant to be short-lived: mint a new one when it expires",
        )
    return expiry


def _validate(scope: Scope) -> None:
    if scope.kind not in KINDS:
        raise InvalidInput(f"unknown token type {scope.kind!r}", hint=f"one of: {', '.join(KINDS)}")
    needs = {
        "session": ("user_id",),
        "deploy": ("org_id", "app_id"),
        "org": ("org_id",),
        "readonly": ("org_id",),
        "machine": ("org_id", "app_id", "machine_id"),
    }[scope.kind]
    missing = [name for name in needs if not getattr(scope, name)]
    if missing:
        raise InvalidInput(f"a {scope.kind} token needs {', '.join(missing)}")


def mint(
    root: RootKey,
    scope: Scope,
    token_id: str,
    expiry: timedelta | None = None,
    now: datetime | None = None,
) -> Minted:
    """Build the authority block for `scope`. Capability kinds carry their limits as checks,
    so any holder of the public key can enforce them; a session token carries only its user."""
    _validate(scope)
    expires_at = (now or datetime.now(UTC)) + clamp_expiry(scope.kind, expiry)
    expires_at = expires_at.replace(microsecond=0)
    lines = ["token({token_id});", "kind({kind});"]
    params: dict[str, object] = {"token_id": token_id, "kind": scope.kind, "exp": expires_at}
    if scope.user_id:
        lines.append("user({user_id});")
        params["user_id"] = scope.user_id
    if scope.kind in CAPABILITY_KINDS:
        for name in ("org", "app", "machine"):
            value = getattr(scope, f"{name}_id")
            if value:
                lines.append(f"check if {name}({{{name}}});")
                params[name] = value
        lines.append("check if action($a), {actions}.contains($a);")
        params["actions"] = set(CAPABILITY_KINDS[scope.kind])
    lines.append("check if time($t), $t <= {exp};")
    builder = BiscuitBuilder("\n".join(lines), params)
    builder.set_root_key_id(root.key_id)
    biscuit = builder.build(root.private)
    return Minted(
        token=wire.encode(bytes(biscuit.to_bytes())),
        token_id=token_id,
        revocation_id=biscuit.revocation_ids[0],
        expires_at=expires_at,
    )
