"""Verification and the authorization decision: the one place that says yes or no.

A token is checked once (signatures, with only the public key) and remembered; after that a
request costs a dictionary look-up, the revocation check and the expiry check. Every "no"
carries a machine-readable reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from biscuit_auth import (
    AuthorizationError,
    AuthorizerBuilder,
    Biscuit,
    BiscuitValidationError,
    PublicKey,
    UnverifiedBiscuit,
)

from aerodrome.tokens import format as wire
from aerodrome.tokens.actions import CAPABILITY_KINDS, GLOBAL_ACTIONS, ROLE_ACTIONS
from aerodrome.tokens.attenuate import parse_block

# Reasons a request is refused. 401: the credential itself is unusable; 403: it is valid but
# does not reach what was asked.
UNAUTHENTICATED = {"unauthenticated", "malformed", "invalid_signature", "expired", "revoked"}
REASONS = UNAUTHENTICATED | {
    "wrong_org",
    "wrong_app",
    "wrong_machine",
    "action_not_allowed",
    "too_complex",
}

# The library's default Datalog budget is 1 ms, which fails spuriously on a busy machine.
# Tokens minted here hold a handful of facts and checks; these limits leave room for deep
# attenuation chains and still bound a hostile token.
MAX_TIME = timedelta(milliseconds=50)
MAX_FACTS = 1000
MAX_ITERATIONS = 100

_FAILED_CHECK = re.compile(r"Check n°\d+ in block n°(\d+): (.*?)(?=, Check n°|$)")
# Which restriction a failed check expresses, by the fact it reads; first match wins, so a
# deploy token used on another org's app says `wrong_app`, the most specific thing.
_CHECK_REASONS = (
    ("time(", "expired"),
    ("app(", "wrong_app"),
    ("app_name(", "wrong_app"),
    ("machine(", "wrong_machine"),
    ("org(", "wrong_org"),
    ("org_slug(", "wrong_org"),
    ("action(", "action_not_allowed"),
)
_POLICIES = (
    'allow if kind("session"), role_allows(true);',
    "allow if kind($k), {capabilities}.contains($k);",
)


@dataclass(frozen=True)
class Request:
    """What a request touches. Names ride along with ids so attenuation can use either."""

    action: str
    org_id: str | None = None
    org_slug: str | None = None
    app_id: str | None = None
    app_name: str | None = None
    machine_id: str | None = None


@dataclass(frozen=True)
class UserContext:
    """For session tokens: the user's role in the request's org and platform-wide flags."""

    role: str | None = None
    platform_admin: bool = False


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
    message: str = ""
    hint: str = ""

    @property
    def status(self) -> int:
        return 401 if self.reason in UNAUTHENTICATED else 403


ALLOW = Decision(True)


@dataclass(eq=False)
class VerifiedToken:
    token_id: str
    kind: str
    user_id: str | None
    revocation_ids: tuple[str, ...]
    expires_at: datetime | None
    blocks: int
    cacheable: bool
    biscuit: Biscuit = field(repr=False)

    @property
    def attenuated(self) -> bool:
        return self.blocks > 1


def _deny(reason: str, message: str, hint: str = "") -> Decision:
    return Decision(False, reason, message, hint)


def session_grants(action: str, user: UserContext) -> bool:
    """What a user's own session token may do, from their role in the request's org."""
    if action in GLOBAL_ACTIONS:
        return not action.startswith("platform.") or user.platform_admin
    return user.role in ROLE_ACTIONS and action in ROLE_ACTIONS[user.role]


class Verifier:
    """Holds only public keys. Thread-safe for the API's worker threads: the caches are plain
    dicts whose single-key operations are atomic, and a lost race only repeats work."""

    def __init__(self, public_keys: dict[int, PublicKey], *, cache_size: int = 10_000) -> None:
        self._keys = dict(public_keys)
        self._cache_size = cache_size
        self._tokens: dict[str, VerifiedToken] = {}
        self._decisions: dict[tuple[object, ...], datetime | None] = {}
        self.revoked: set[str] = set()

    # -- revocation -------------------------------------------------------------------------

    def add_revoked(self, revocation_ids: Iterable[str]) -> None:
        self.revoked.update(revocation_ids)

    # -- verification -----------------------------------------------------------------------

    def verify(self, token: str, now: datetime | None = None) -> VerifiedToken | Decision:
        """The parsed token, or a denial (`malformed`, `invalid_signature`, `revoked`,
        `expired`). Signature results are cached; revocation and expiry are checked every
        time."""
        found = self.parse(token)
        if isinstance(found, Decision):
            return found
        for rid in found.revocation_ids:
            if rid in self.revoked:
                return _deny(
                    "revoked",
                    f"token {found.token_id} has been revoked"
                    + ("" if rid == found.revocation_ids[0] else " (an attenuated block of it)"),
                    "ask an org admin for a new token",
                )
        now = now or datetime.now(UTC)
        if found.expires_at is not None and now > found.expires_at:
            return _deny(
                "expired",
                f"token {found.token_id} expired at {found.expires_at.isoformat()}",
                "mint a new token with `aero tokens create`",
            )
        return found

    def parse(self, token: str) -> VerifiedToken | Decision:
        """Signatures and structure only (cached): no revocation or expiry check. For
        naming a token's blocks, e.g. to revoke one of them."""
        cached = self._tokens.get(token)
        if cached is not None:
            return cached
        found = self._parse_uncached(token)
        if isinstance(found, VerifiedToken):
            # Only genuine tokens are remembered: garbage must not fill the cache.
            self._remember(self._tokens, token, found)
        return found

    def _parse_uncached(self, token: str) -> VerifiedToken | Decision:
        try:
            raw = wire.decode(token)
        except wire.TokenFormatError as exc:
            hint = "copy the whole token again" if exc.truncated else ""
            return _deny("malformed", str(exc), hint)
        try:
            biscuit = Biscuit.from_bytes(raw, self._key_for)
        except (BiscuitValidationError, ValueError, KeyError, TypeError):
            # The library gives one message for every failure: tell a well-formed token with
            # a bad signature (forged, or from another platform) from bytes that are no token.
            try:
                UnverifiedBiscuit.from_base64(wire.encode_b64(raw))
            except Exception:
                return _deny(
                    "malformed", "token is not a valid biscuit", "copy the whole token again"
                )
            return _deny(
                "invalid_signature",
                "token signature is invalid: it was not issued by this platform or was "
                "tampered with",
                "use a token minted by this platform",
            )
        if bytes(biscuit.to_bytes()) != raw:
            # Unsigned parts of the encoding were altered: same meaning, different string.
            # One credential has one spelling, so the cache and the logs see one token.
            return _deny("malformed", "token encoding is not canonical", "copy the token again")
        facts: dict[str, str] = {}
        expires_at: datetime | None = None
        cacheable = True
        for index in range(biscuit.block_count()):
            _, block_facts, expiry, unknown_time = parse_block(biscuit.block_source(index))
            if index == 0:
                facts = block_facts
            if expiry is not None:
                expires_at = expiry if expires_at is None else min(expires_at, expiry)
            cacheable = cacheable and not unknown_time
        if "token" not in facts or "kind" not in facts:
            return _deny("malformed", "token has no id or kind in its authority block")
        return VerifiedToken(
            token_id=facts["token"],
            kind=facts["kind"],
            user_id=facts.get("user"),
            revocation_ids=tuple(biscuit.revocation_ids),
            expires_at=expires_at,
            blocks=biscuit.block_count(),
            cacheable=cacheable,
            biscuit=biscuit,
        )

    def _key_for(self, key_id: int | None) -> PublicKey:
        if key_id is None or key_id not in self._keys:
            raise KeyError(f"unknown root key id {key_id}")
        return self._keys[key_id]

    # -- authorization ----------------------------------------------------------------------

    def authorize(
        self,
        token: VerifiedToken,
        request: Request,
        user: UserContext | None = None,
        now: datetime | None = None,
    ) -> Decision:
        """Does this (already verified) token allow `request`? Allowed decisions are cached
        per (token, request) for tokens whose only time-dependence is their expiry, which
        `verify` checks on every call."""
        user = user or UserContext()
        if request.action == "tokens.create" and (token.kind != "session" or token.attenuated):
            # Minting from a narrowed token would shed its restrictions: only a user's own,
            # unattenuated session token mints.
            return _deny(
                "action_not_allowed",
                f"{'an attenuated' if token.attenuated else 'a'} {token.kind} token "
                "cannot mint tokens",
                "mint with your own session token (`aero up` writes one to aero.env)",
            )
        grants: bool | None = None
        if token.kind == "session":
            grants = session_grants(request.action, user)
            if not grants:
                if user.role is None and request.org_id is not None:
                    return _deny(
                        "wrong_org",
                        f"you are not a member of org {request.org_slug or request.org_id}",
                        "ask an admin of that org to add you",
                    )
                return _deny(
                    "action_not_allowed",
                    f"your role ({user.role or 'none'}) does not allow {request.action}",
                    "ask an org admin",
                )
        key = (token.token_id, token.revocation_ids[-1], request, grants)
        if key in self._decisions:
            return ALLOW
        decision = self._run_authorizer(token, request, grants, now or datetime.now(UTC))
        if decision.allowed and token.cacheable:
            self._remember(self._decisions, key, token.expires_at)
        return decision

    def _run_authorizer(
        self, token: VerifiedToken, request: Request, grants: bool | None, now: datetime
    ) -> Decision:
        code = ["time({now});", "action({action});"]
        params: dict[str, object] = {
            "now": now,
            "action": request.action,
            "capabilities": set(CAPABILITY_KINDS),
        }
        for name in ("org_id", "org_slug", "app_id", "app_name", "machine_id"):
            value = getattr(request, name)
            if value is not None:
                fact = name.removesuffix("_id")
                code.append(f"{fact}({{{name}}});")
                params[name] = value
        if grants:
            code.append("role_allows(true);")
        code.extend(_POLICIES)
        builder = AuthorizerBuilder("\n".join(code), params)
        limits = builder.limits()  # type: ignore[attr-defined]  # missing from the stub
        limits.max_time = MAX_TIME
        limits.max_facts = MAX_FACTS
        limits.max_iterations = MAX_ITERATIONS
        builder.set_limits(limits)  # type: ignore[attr-defined]
        try:
            builder.build(token.biscuit).authorize()
        except AuthorizationError as exc:
            return self._explain(token, request, str(exc.args[0] if exc.args else exc))
        return ALLOW

    @staticmethod
    def _explain(token: VerifiedToken, request: Request, error: str) -> Decision:
        if "execution limits" in error.lower() or "timeout" in error.lower():
            return _deny("too_complex", "token is too complex to evaluate", "use a simpler token")
        failed = _FAILED_CHECK.findall(error)
        for needle, reason in _CHECK_REASONS:
            for block, check in failed:
                if needle in check:
                    where = "" if block == "0" else f" (attenuated in block {block})"
                    target = {
                        "wrong_app": f"app {request.app_name or request.app_id or '(none)'}",
                        "wrong_org": f"org {request.org_slug or request.org_id or '(none)'}",
                        "wrong_machine": f"machine {request.machine_id or '(none)'}",
                        "expired": "now",
                        "action_not_allowed": f"action {request.action}",
                    }[reason]
                    return _deny(
                        reason,
                        f"token {token.token_id} does not allow {target}{where}: {check}",
                        "use a token scoped to what you are doing",
                    )
        if failed:
            block, check = failed[0]
            return _deny(
                "action_not_allowed",
                f"token {token.token_id} restriction in block {block} failed: {check}",
            )
        return _deny(
            "action_not_allowed", f"token {token.token_id} does not allow {request.action}"
        )

    def _remember(self, cache: dict, key: object, value: object) -> None:  # type: ignore[type-arg]
        if len(cache) >= self._cache_size:
            # Drop the oldest eighth: cheap, and keeps the hot set (recently inserted) warm.
            for stale in list(cache)[: self._cache_size // 8 or 1]:
                cache.pop(stale, None)
        cache[key] = value
