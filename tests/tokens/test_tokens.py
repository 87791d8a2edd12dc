"""Minting, offline attenuation and inspection, and the Verifier's decisions, reasons and cache.

Everything here runs offline with a throwaway root key: no database, no API.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
from biscuit_auth import AuthorizerBuilder, Biscuit, BlockBuilder, KeyPair
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from aerodrome.errors import InvalidInput
from aerodrome.ids import new_id
from aerodrome.tokens import format as wire
from aerodrome.tokens import verify as verify_module
from aerodrome.tokens.actions import ALL_ACTIONS, CAPABILITY_KINDS, ORG_ACTIONS, ROLE_ACTIONS
from aerodrome.tokens.attenuate import attenuate, inspect, parse_public_key
from aerodrome.tokens.mint import RootKey, Scope, mint
from aerodrome.tokens.verify import (
    MAX_FACTS,
    MAX_ITERATIONS,
    MAX_TIME,
    Decision,
    Request,
    UserContext,
    VerifiedToken,
    Verifier,
)

APP_NAMES = ("web", "api", "db")
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
REFUSED_AS_BAD_CREDENTIAL = {"malformed", "invalid_signature"}


@dataclass(frozen=True)
class Kit:
    root: RootKey
    org_id: str
    other_org_id: str
    apps: dict[str, str]  # name -> id
    machine_id: str
    user_id: str


@cache
def kit() -> Kit:
    return Kit(
        root=RootKey(KeyPair()),
        org_id=new_id("org"),
        other_org_id=new_id("org"),
        apps={name: new_id("app") for name in APP_NAMES},
        machine_id=new_id("mch"),
        user_id=new_id("usr"),
    )


def mint_kind(kind: str, *, now: datetime | None = None, expiry: timedelta | None = None) -> str:
    k = kit()
    scope = {
        "session": Scope("session", user_id=k.user_id),
        "deploy": Scope("deploy", org_id=k.org_id, app_id=k.apps["web"]),
        "org": Scope("org", org_id=k.org_id),
        "readonly": Scope("readonly", org_id=k.org_id),
        "machine": Scope("machine", org_id=k.org_id, app_id=k.apps["web"], machine_id=k.machine_id),
    }[kind]
    return mint(k.root, scope, new_id("tok"), expiry=expiry, now=now).token


@cache
def cached_token(kind: str) -> str:
    return mint_kind(kind)


@cache
def cached_child() -> str:
    """A deploy token narrowed offline to reading the web app."""
    return attenuate(cached_token("deploy"), kit().root.public, apps=["web"], actions=["apps.read"])


def new_verifier() -> Verifier:
    return Verifier(kit().root.public_keys())


def req(
    action: str,
    app: str | None = None,
    *,
    org_id: str | None = None,
    machine_id: str | None = None,
) -> Request:
    k = kit()
    org = org_id or k.org_id
    return Request(
        action,
        org_id=org,
        org_slug="acme" if org == k.org_id else "globex",
        app_id=k.apps[app] if app else None,
        app_name=app,
        machine_id=machine_id,
    )


def verified(verifier: Verifier, token: str, now: datetime | None = None) -> VerifiedToken:
    found = verifier.verify(token, now=now)
    assert isinstance(found, VerifiedToken), found
    return found


def refused(verifier: Verifier, token: str, now: datetime | None = None) -> Decision:
    found = verifier.verify(token, now=now)
    assert isinstance(found, Decision), f"token was accepted: {found}"
    assert not found.allowed
    return found


# -- minting and the decision for each kind ----------------------------------------------------


def test_minted_token_says_what_it_is() -> None:
    k = kit()
    now = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    minted = mint(k.root, Scope("deploy", org_id=k.org_id, app_id=k.apps["web"]), "tok_x", now=now)
    assert minted.expires_at == datetime(2031, 5, 13, 7, 8, 9, tzinfo=UTC)  # 7 days, whole s
    assert minted.token not in repr(minted)
    vt = verified(new_verifier(), minted.token, now=now)
    assert (vt.token_id, vt.kind, vt.user_id) == ("tok_x", "deploy", None)
    assert vt.revocation_ids == (minted.revocation_id,)
    assert vt.expires_at == minted.expires_at
    assert vt.blocks == 1 and not vt.attenuated


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        (Scope("deploy", org_id="org_x"), "needs app_id"),
        (Scope("machine", org_id="org_x", app_id="app_x"), "needs machine_id"),
        (Scope("session"), "needs user_id"),
        (Scope("superuser", user_id="usr_x"), "unknown token type"),
    ],
)
def test_mint_refuses_incomplete_scopes(scope: Scope, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        mint(kit().root, scope, "tok_x")


def test_mint_refuses_expiry_beyond_a_year() -> None:
    with pytest.raises(InvalidInput, match="maximum of 365d"):
        mint(kit().root, Scope("org", org_id="org_x"), "tok_x", expiry=timedelta(days=366))


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (req("apps.deploy", "web"), ""),
        (req("secrets.write", "web"), ""),
        (req("apps.deploy", "api"), "wrong_app"),
        (req("apps.deploy", "web", org_id=kit().other_org_id), "wrong_org"),
        (req("apps.destroy", "web"), "action_not_allowed"),
        (req("members.write", "web"), "action_not_allowed"),
        (req("tokens.create", "web"), "action_not_allowed"),
        # An org-level request names no app: a token bound to an app cannot be used for it.
        (req("apps.read"), "wrong_app"),
    ],
)
def test_deploy_token_is_scoped_to_its_app_with_reasons(request_: Request, reason: str) -> None:
    verifier = new_verifier()
    decision = verifier.authorize(verified(verifier, cached_token("deploy")), request_)
    assert decision.allowed is (reason == "")
    assert decision.reason == reason
    if reason:
        assert decision.status == 403
        assert decision.message and decision.hint


def test_refusal_message_names_the_app_that_was_asked_for() -> None:
    verifier = new_verifier()
    vt = verified(verifier, cached_token("deploy"))
    decision = verifier.authorize(vt, req("apps.read", "api"))
    assert decision.reason == "wrong_app" and "api" in decision.message


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (req("machine.self", "web", machine_id=kit().machine_id), ""),
        (req("secrets.unseal", "web", machine_id=kit().machine_id), ""),
        (req("machine.self", "web", machine_id=new_id("mch")), "wrong_machine"),
        (req("secrets.read", "web", machine_id=kit().machine_id), "action_not_allowed"),
    ],
)
def test_machine_token_is_scoped_to_its_machine(request_: Request, reason: str) -> None:
    verifier = new_verifier()
    decision = verifier.authorize(verified(verifier, cached_token("machine")), request_)
    assert (decision.allowed, decision.reason) == (reason == "", reason)


@pytest.mark.parametrize("kind", sorted(CAPABILITY_KINDS))
def test_capability_kinds_allow_exactly_their_actions_in_their_scope(kind: str) -> None:
    verifier = new_verifier()
    vt = verified(verifier, cached_token(kind))
    for action in sorted(ORG_ACTIONS | {"machine.self", "secrets.unseal"}):
        decision = verifier.authorize(vt, req(action, "web", machine_id=kit().machine_id))
        assert decision.allowed is (action in CAPABILITY_KINDS[kind]), (kind, action, decision)


# -- truncation and tampering --------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_truncation_is_malformed_and_flagged_never_a_signature_failure(
    data: st.DataObject,
) -> None:
    token = data.draw(st.sampled_from([cached_token("deploy"), cached_child()]), label="token")
    cut = data.draw(st.integers(min_value=0, max_value=len(token) - 1), label="cut")
    with pytest.raises(wire.TokenFormatError) as caught:
        wire.decode(token[:cut])
    assert caught.value.truncated
    decision = refused(new_verifier(), token[:cut])
    assert decision.reason == "malformed"
    assert decision.status == 401
    assert "copy the whole token again" in decision.hint


def _assert_refused_or_same_token(tampered_raw: bytes, original: str) -> None:
    """A tampered token is refused as a bad credential. The one tolerated exception is an edit
    that biscuit parses back into the *identical* token (see the test on malleability):
    then nothing it says may differ from the original."""
    verifier = new_verifier()
    found = verifier.verify(wire.encode(tampered_raw))
    if isinstance(found, Decision):
        assert not found.allowed
        assert found.reason in REFUSED_AS_BAD_CREDENTIAL, found
        return
    reference = verified(verifier, original)
    assert bytes(found.biscuit.to_bytes()) == wire.decode(original)
    assert found.revocation_ids == reference.revocation_ids
    assert (found.token_id, found.kind, found.expires_at) == (
        reference.token_id,
        reference.kind,
        reference.expires_at,
    )


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_a_changed_payload_byte_with_a_recomputed_checksum_is_refused(
    data: st.DataObject,
) -> None:
    original = data.draw(st.sampled_from([cached_token("deploy"), cached_child()]), label="token")
    raw = wire.decode(original)
    position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1), label="position")
    flip = data.draw(st.integers(min_value=1, max_value=255), label="xor")
    tampered = bytearray(raw)
    tampered[position] ^= flip
    _assert_refused_or_same_token(bytes(tampered), original)


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_a_changed_payload_character_with_a_recomputed_checksum_is_refused(
    data: st.DataObject,
) -> None:
    original = data.draw(st.sampled_from([cached_token("session"), cached_child()]), label="token")
    payload = original[len(wire.PREFIX) : original.rindex("_")]
    index = data.draw(st.integers(min_value=0, max_value=len(payload) - 1), label="index")
    char = data.draw(st.sampled_from(B64URL).filter(lambda c: c != payload[index]), label="char")
    changed = payload[:index] + char + payload[index + 1 :]
    tampered_raw = base64.urlsafe_b64decode(changed + "=" * (-len(changed) % 4))
    # The last character's low bits can be padding: then the bytes, and the token, are unchanged.
    assume(tampered_raw != wire.decode(original))
    _assert_refused_or_same_token(tampered_raw, original)


def test_no_single_byte_edit_is_accepted_as_a_token() -> None:
    verifier = new_verifier()
    raw = wire.decode(cached_token("deploy"))
    accepted = []
    for position in range(len(raw)):
        for flip in (0x01, 0x10, 0x80, 0xFF):
            tampered = bytearray(raw)
            tampered[position] ^= flip
            if isinstance(verifier.verify(wire.encode(bytes(tampered))), VerifiedToken):
                accepted.append((position, flip))
    assert accepted == []


@pytest.mark.parametrize("key_id", [1, 7])
def test_a_token_signed_by_another_platform_is_an_invalid_signature(key_id: int) -> None:
    foreign_root = RootKey(KeyPair(), key_id=key_id)
    foreign = mint(foreign_root, Scope("org", org_id=kit().org_id), new_id("tok")).token
    decision = refused(new_verifier(), foreign)
    assert decision.reason == "invalid_signature"
    assert decision.status == 401


def test_a_token_signed_by_another_platform_is_refused() -> None:
    foreign_root = RootKey(KeyPair())
    foreign = mint(foreign_root, Scope("org", org_id=kit().org_id), new_id("tok")).token
    decision = refused(new_verifier(), foreign)
    assert decision.reason in REFUSED_AS_BAD_CREDENTIAL and decision.status == 401


def test_a_valid_checksum_around_garbage_is_malformed() -> None:
    decision = refused(new_verifier(), wire.encode(b"\x00 not a biscuit at all"))
    assert decision.reason == "malformed"


# -- attenuation ---------------------------------------------------------------------------------

PARENTS = ("org", "deploy", "session")
PROBE_ACTIONS = tuple(sorted(ORG_ACTIONS))


@settings(max_examples=25, deadline=None)
@given(
    parent_kind=st.sampled_from(PARENTS),
    actions=st.sets(st.sampled_from(sorted(ALL_ACTIONS))),
    apps=st.sets(st.sampled_from(APP_NAMES)),
    by_id=st.booleans(),
    role=st.sampled_from(["admin", "member"]),
)
def test_attenuation_only_ever_narrows(
    parent_kind: str, actions: set[str], apps: set[str], by_id: bool, role: str
) -> None:
    k = kit()
    parent = cached_token(parent_kind)
    app_refs = sorted(k.apps[a] for a in apps) if by_id else sorted(apps)
    child = attenuate(
        parent,
        k.root.public,
        apps=app_refs or None,
        actions=sorted(actions) or None,
        expiry=None if actions or apps else timedelta(days=1),
    )
    verifier = new_verifier()
    parent_vt, child_vt = verified(verifier, parent), verified(verifier, child)
    user = UserContext(role=role)
    for action in PROBE_ACTIONS:
        for app in (None, *APP_NAMES):
            request = req(action, app)
            parent_allows = verifier.authorize(parent_vt, request, user).allowed
            child_allows = verifier.authorize(child_vt, request, user).allowed
            assert not (child_allows and not parent_allows), (action, app)
            # And it narrows by exactly what was asked, no more: minting needs an unattenuated
            # session token, so `tokens.create` is the one thing a child always loses.
            expected = (
                parent_allows
                and (not actions or action in actions)
                and (not apps or app in apps)
                and action != "tokens.create"
            )
            assert child_allows is expected, (action, app)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.sets(st.sampled_from(sorted(ORG_ACTIONS)), min_size=1), min_size=2, max_size=4))
def test_a_chain_of_attenuations_allows_the_intersection(steps: list[set[str]]) -> None:
    verifier = new_verifier()
    token = cached_token("org")
    allowed = set(CAPABILITY_KINDS["org"])
    for step in steps:
        token = attenuate(token, kit().root.public, actions=sorted(step))
        allowed &= step
    vt = verified(verifier, token)
    assert vt.blocks == len(steps) + 1
    for action in PROBE_ACTIONS:
        assert verifier.authorize(vt, req(action, "web")).allowed is (action in allowed), action


def test_attenuation_by_id_refuses_other_apps_by_id_with_reason() -> None:
    k = kit()
    verifier = new_verifier()
    child = attenuate(cached_token("org"), k.root.public, apps=[k.apps["api"]])
    vt = verified(verifier, child)
    assert verifier.authorize(vt, req("apps.read", "api")).allowed
    decision = verifier.authorize(vt, req("apps.read", "web"))
    assert decision.reason == "wrong_app"
    assert "attenuated in block 1" in decision.message


def test_attenuation_by_org_slug() -> None:
    k = kit()
    verifier = new_verifier()
    vt = verified(verifier, attenuate(cached_token("session"), k.root.public, orgs=["acme"]))
    admin = UserContext(role="admin")
    assert verifier.authorize(vt, req("apps.read", "web"), admin).allowed
    other = req("apps.read", org_id=k.other_org_id)
    assert verifier.authorize(vt, other, admin).reason == "wrong_org"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "nothing to restrict"),
        ({"apps": ["web", new_id("app")]}, "not mixed"),
        ({"orgs": ["acme", new_id("org")]}, "not mixed"),
        ({"actions": ["apps.read", "apps.fly"]}, "unknown action"),
    ],
)
def test_attenuate_refuses_unclear_requests(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        attenuate(cached_token("org"), kit().root.public, **kwargs)


def test_attenuate_checks_the_token_against_the_public_key() -> None:
    other_key = parse_public_key(str(KeyPair().public_key))
    with pytest.raises(InvalidInput) as wrong_key:
        attenuate(cached_token("org"), other_key, actions=["apps.read"])
    assert wrong_key.value.code == "invalid_signature"
    token = cached_token("org")
    with pytest.raises(InvalidInput) as cut:
        attenuate(token[:-10], kit().root.public, actions=["apps.read"])
    assert cut.value.code == "malformed"
    with pytest.raises(InvalidInput, match="public key"):
        parse_public_key("ed25519/not-hex")


def test_inspect_shows_every_block_without_a_key() -> None:
    k = kit()
    now = datetime.now(UTC)
    parent = mint(
        k.root, Scope("deploy", org_id=k.org_id, app_id=k.apps["web"]), "tok_inspect", now=now
    )
    child = attenuate(
        parent.token,
        k.root.public,
        apps=["web"],
        actions=["apps.read"],
        expiry=timedelta(hours=1),
        now=now,
    )
    info = inspect(child)
    vt = verified(new_verifier(), child)
    assert (info.token_id, info.kind, info.user_id, info.root_key_id) == (
        "tok_inspect",
        "deploy",
        None,
        k.root.key_id,
    )
    assert [b.revocation_id for b in info.blocks] == list(vt.revocation_ids)
    assert info.blocks[0].revocation_id == parent.revocation_id
    assert info.blocks[0].restrictions["app"] == [k.apps["web"]]
    assert info.blocks[1].restrictions == {
        "app_name": ["web"],
        "actions": ["apps.read"],
        "expires_at": (now + timedelta(hours=1)).replace(microsecond=0).isoformat(),
    }
    assert info.expires_at == (now + timedelta(hours=1)).replace(microsecond=0)
    as_json = json.loads(json.dumps(info.to_dict()))  # what `aero tokens inspect --json` prints
    assert as_json["blocks"][1]["index"] == 1
    assert as_json["expires_at"] == info.expires_at.isoformat()


def test_inspect_refuses_what_is_not_a_token() -> None:
    with pytest.raises(InvalidInput) as cut:
        inspect(cached_token("org")[:40])
    assert cut.value.code == "malformed"
    with pytest.raises(InvalidInput) as garbage:
        inspect(wire.encode(b"garbage"))
    assert garbage.value.code == "malformed"


# -- revocation and expiry -----------------------------------------------------------------------


def test_revoking_the_childs_block_leaves_the_parent_valid() -> None:
    verifier = new_verifier()
    parent, child = cached_token("deploy"), cached_child()
    child_block = verified(verifier, child).revocation_ids[-1]
    verifier.add_revoked([child_block])
    decision = refused(verifier, child)
    assert decision.reason == "revoked" and decision.status == 401
    assert "attenuated block" in decision.message
    assert verifier.authorize(verified(verifier, parent), req("apps.deploy", "web")).allowed


def test_revoking_the_parent_kills_every_child() -> None:
    verifier = new_verifier()
    parent, child = cached_token("deploy"), cached_child()
    verifier.add_revoked([verified(verifier, parent).revocation_ids[0]])
    assert refused(verifier, parent).reason == "revoked"
    assert refused(verifier, child).reason == "revoked"


@settings(max_examples=12, deadline=None)
@given(depth=st.integers(min_value=1, max_value=4), data=st.data())
def test_revoking_block_i_kills_exactly_the_tokens_that_carry_it(
    depth: int, data: st.DataObject
) -> None:
    chain = [cached_token("org")]
    for _ in range(depth):
        chain.append(attenuate(chain[-1], kit().root.public, actions=sorted(ORG_ACTIONS)))
    verifier = new_verifier()
    block_ids = verified(verifier, chain[-1]).revocation_ids
    revoked_block = data.draw(st.integers(min_value=0, max_value=depth), label="block")
    verifier.add_revoked([block_ids[revoked_block]])
    for level, token in enumerate(chain):
        found = verifier.verify(token)
        if level >= revoked_block:
            assert isinstance(found, Decision) and found.reason == "revoked", level
        else:
            assert isinstance(found, VerifiedToken), level


def test_a_token_minted_in_the_past_is_expired() -> None:
    long_ago = datetime.now(UTC) - timedelta(days=40)
    token = mint_kind("deploy", now=long_ago, expiry=timedelta(days=7))
    decision = refused(new_verifier(), token)
    assert decision.reason == "expired" and decision.status == 401
    assert "expired at" in decision.message


def test_expiry_is_inclusive_to_the_second() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    token = mint_kind("org", now=now, expiry=timedelta(hours=1))
    verifier = new_verifier()
    vt = verified(verifier, token, now=now + timedelta(hours=1))
    assert verifier.authorize(vt, req("apps.read"), now=now + timedelta(hours=1)).allowed
    assert refused(verifier, token, now=now + timedelta(hours=1, seconds=1)).reason == "expired"


def test_attenuated_expiry_can_shorten_but_never_extend() -> None:
    now = datetime.now(UTC)
    verifier = new_verifier()
    parent = mint_kind("deploy", now=now)  # 7 days
    shorter = attenuate(parent, kit().root.public, expiry=timedelta(hours=1), now=now)
    longer = attenuate(parent, kit().root.public, expiry=timedelta(days=300), now=now)
    in_two_hours, in_eight_days = now + timedelta(hours=2), now + timedelta(days=8)
    assert refused(verifier, shorter, now=in_two_hours).reason == "expired"
    assert isinstance(verifier.verify(parent, now=in_two_hours), VerifiedToken)
    assert refused(verifier, longer, now=in_eight_days).reason == "expired"
    # Even asking the authorizer directly (no verify) at that time refuses.
    vt = verified(verifier, longer, now=now)
    late = verifier.authorize(vt, req("apps.read", "web"), now=in_eight_days)
    assert not late.allowed and late.reason == "expired"


# -- authorizer limits ---------------------------------------------------------------------------


class SpyAuthorizerBuilder:
    """Wraps biscuit's AuthorizerBuilder to see the limits set and count authorizer runs."""

    limits_set: list[Any] = []  # reset per test by the fixture
    runs = 0

    def __init__(self, *args: Any) -> None:
        self._inner = AuthorizerBuilder(*args)
        type(self).runs += 1

    def limits(self) -> Any:
        return self._inner.limits()  # type: ignore[attr-defined]  # missing from the stub

    def set_limits(self, limits: Any) -> None:
        type(self).limits_set.append(limits)
        self._inner.set_limits(limits)  # type: ignore[attr-defined]

    def build(self, biscuit: Biscuit) -> Any:
        return self._inner.build(biscuit)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[SpyAuthorizerBuilder]]:
    SpyAuthorizerBuilder.limits_set = []
    SpyAuthorizerBuilder.runs = 0
    monkeypatch.setattr(verify_module, "AuthorizerBuilder", SpyAuthorizerBuilder)
    yield SpyAuthorizerBuilder


def test_authorizer_limits_are_explicit_and_above_the_library_default(
    spy: type[SpyAuthorizerBuilder],
) -> None:
    default = AuthorizerBuilder("").limits()  # type: ignore[attr-defined]
    assert default.max_time == timedelta(milliseconds=1)  # what the constants are raised from
    assert default.max_time < MAX_TIME
    assert default.max_facts <= MAX_FACTS
    assert default.max_iterations <= MAX_ITERATIONS
    verifier = new_verifier()
    assert verifier.authorize(verified(verifier, cached_token("org")), req("apps.read")).allowed
    assert len(spy.limits_set) == 1
    applied = spy.limits_set[0]
    assert (applied.max_time, applied.max_facts, applied.max_iterations) == (
        MAX_TIME,
        MAX_FACTS,
        MAX_ITERATIONS,
    )


def test_a_deep_attenuation_chain_is_still_evaluated() -> None:
    token = cached_token("org")
    for _ in range(24):
        token = attenuate(token, kit().root.public, actions=["apps.read", "apps.deploy"])
    verifier = new_verifier()
    vt = verified(verifier, token)
    assert vt.blocks == 25
    assert verifier.authorize(vt, req("apps.read", "web")).allowed
    assert verifier.authorize(vt, req("secrets.read", "web")).reason == "action_not_allowed"


def test_a_hostile_token_is_refused_as_too_complex() -> None:
    verifier = new_verifier()
    base = verified(verifier, cached_token("org")).biscuit
    # 40 facts and a rule that squares them: 1600 facts, past MAX_FACTS.
    source = "\n".join(f"n({i});" for i in range(40)) + "\npair($x, $y) <- n($x), n($y);"
    hostile = wire.encode(bytes(base.append(BlockBuilder(source)).to_bytes()))
    decision = verifier.authorize(verified(verifier, hostile), req("apps.read"))
    assert (decision.allowed, decision.reason) == (False, "too_complex")


# -- the cache -----------------------------------------------------------------------------------


class CountingBiscuit:
    """Stands in for `Biscuit` inside aerodrome.tokens.verify, counting signature checks."""

    calls = 0

    @classmethod
    def from_bytes(cls, raw: bytes, key: Any) -> Biscuit:
        cls.calls += 1
        return Biscuit.from_bytes(raw, key)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> type[CountingBiscuit]:
    CountingBiscuit.calls = 0
    monkeypatch.setattr(verify_module, "Biscuit", CountingBiscuit)
    return CountingBiscuit


def test_a_second_verify_does_not_check_signatures_again(counting: type[CountingBiscuit]) -> None:
    verifier = new_verifier()
    token = mint_kind("deploy")
    first = verified(verifier, token)
    assert counting.calls == 1
    again = verified(verifier, token)
    assert counting.calls == 1
    assert again is first
    verified(verifier, mint_kind("deploy"))  # a different token is checked
    assert counting.calls == 2


def test_revocation_after_caching_still_takes_effect(counting: type[CountingBiscuit]) -> None:
    verifier = new_verifier()
    token = mint_kind("deploy")
    vt = verified(verifier, token)
    assert verifier.authorize(vt, req("apps.deploy", "web")).allowed
    verifier.add_revoked([vt.revocation_ids[0]])
    assert refused(verifier, token).reason == "revoked"
    assert counting.calls == 1


def test_expiry_after_caching_still_takes_effect(counting: type[CountingBiscuit]) -> None:
    verifier = new_verifier()
    now = datetime.now(UTC)
    token = mint_kind("deploy", now=now, expiry=timedelta(hours=1))
    vt = verified(verifier, token, now=now)
    assert verifier.authorize(vt, req("apps.deploy", "web"), now=now).allowed
    assert refused(verifier, token, now=now + timedelta(hours=2)).reason == "expired"
    assert counting.calls == 1


def test_garbage_does_not_push_genuine_tokens_out_of_the_cache(
    counting: type[CountingBiscuit],
) -> None:
    verifier = Verifier(kit().root.public_keys(), cache_size=16)
    token = mint_kind("deploy")
    verified(verifier, token)
    for i in range(100):
        assert refused(verifier, wire.encode(bytes([i]) * 8)).reason == "malformed"
    calls = counting.calls
    verified(verifier, token)
    assert counting.calls == calls  # still cached


def test_an_allowed_decision_is_cached_per_request(spy: type[SpyAuthorizerBuilder]) -> None:
    verifier = new_verifier()
    vt = verified(verifier, mint_kind("deploy"))
    assert verifier.authorize(vt, req("apps.deploy", "web")).allowed
    assert verifier.authorize(vt, req("apps.deploy", "web")).allowed
    assert spy.runs == 1
    assert verifier.authorize(vt, req("apps.deploy", "api")).reason == "wrong_app"
    assert verifier.authorize(vt, req("apps.deploy", "api")).reason == "wrong_app"
    assert spy.runs == 3  # refusals are not cached


def test_a_cached_allow_for_a_parent_does_not_leak_to_its_child() -> None:
    verifier = new_verifier()
    parent, child = verified(verifier, cached_token("deploy")), verified(verifier, cached_child())
    assert verifier.authorize(parent, req("apps.deploy", "web")).allowed
    assert verifier.authorize(child, req("apps.deploy", "web")).reason == "action_not_allowed"


def test_a_token_with_other_time_checks_is_decided_afresh_each_time(
    spy: type[SpyAuthorizerBuilder],
) -> None:
    """A `not before` check is not an expiry: a cached allow would outlive it."""
    verifier = new_verifier()
    start = datetime(2032, 1, 1, tzinfo=UTC)
    base = verified(verifier, mint_kind("org", now=start - timedelta(days=1))).biscuit
    block = BlockBuilder("check if time($t), $t >= {start};", {"start": start})
    token = wire.encode(bytes(base.append(block).to_bytes()))
    vt = verified(verifier, token, now=start)
    assert not vt.cacheable
    early, late = start - timedelta(hours=1), start + timedelta(hours=1)
    assert not verifier.authorize(vt, req("apps.read"), now=early).allowed
    assert verifier.authorize(vt, req("apps.read"), now=late).allowed
    assert not verifier.authorize(vt, req("apps.read"), now=early).allowed
    assert spy.runs == 3


def test_the_cache_stays_bounded_and_keeps_the_recent_tokens(
    counting: type[CountingBiscuit],
) -> None:
    verifier = Verifier(kit().root.public_keys(), cache_size=16)
    tokens = [mint_kind("readonly") for _ in range(40)]
    for token in tokens:
        verified(verifier, token)
    assert counting.calls == 40
    verified(verifier, tokens[-1])
    assert counting.calls == 40  # the most recent is still cached
    verified(verifier, tokens[0])
    assert counting.calls == 41  # the oldest was dropped, and is simply checked again


# -- session tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["admin", "member"])
@pytest.mark.parametrize("action", sorted(ORG_ACTIONS))
def test_session_token_is_granted_what_the_membership_role_allows(role: str, action: str) -> None:
    verifier = new_verifier()
    vt = verified(verifier, cached_token("session"))
    decision = verifier.authorize(vt, req(action, "web"), UserContext(role=role))
    assert decision.allowed is (action in ROLE_ACTIONS[role])
    if not decision.allowed:
        assert decision.reason == "action_not_allowed" and role in decision.message


def test_session_token_outside_the_users_orgs_is_wrong_org() -> None:
    verifier = new_verifier()
    vt = verified(verifier, cached_token("session"))
    decision = verifier.authorize(vt, req("apps.read", org_id=kit().other_org_id), UserContext())
    assert decision.reason == "wrong_org" and "globex" in decision.message


def test_session_decisions_follow_the_role_even_after_caching() -> None:
    verifier = new_verifier()
    vt = verified(verifier, cached_token("session"))
    request = req("members.write")
    assert verifier.authorize(vt, request, UserContext(role="admin")).allowed
    demoted = verifier.authorize(vt, request, UserContext(role="member"))
    assert demoted.reason == "action_not_allowed"
    removed = verifier.authorize(vt, request, UserContext(role=None))
    assert removed.reason == "wrong_org"


@pytest.mark.parametrize(
    ("action", "user", "allowed"),
    [
        ("orgs.create", UserContext(), True),
        ("auth.whoami", UserContext(), True),
        ("platform.audit.read", UserContext(), False),
        ("platform.audit.read", UserContext(platform_admin=True), True),
        ("platform.watch", UserContext(role="admin"), False),
    ],
)
def test_session_global_actions(action: str, user: UserContext, allowed: bool) -> None:
    verifier = new_verifier()
    vt = verified(verifier, cached_token("session"))
    assert verifier.authorize(vt, Request(action), user).allowed is allowed


def test_only_an_unattenuated_session_token_mints() -> None:
    verifier = new_verifier()
    admin = UserContext(role="admin")
    session = verified(verifier, cached_token("session"))
    assert verifier.authorize(session, req("tokens.create"), admin).allowed
    narrowed = attenuate(cached_token("session"), kit().root.public, actions=["tokens.create"])
    decision = verifier.authorize(verified(verifier, narrowed), req("tokens.create"), admin)
    assert (decision.allowed, decision.reason) == (False, "action_not_allowed")
    assert "attenuated" in decision.message
    org_token = verified(verifier, cached_token("org"))
    assert verifier.authorize(org_token, req("tokens.create"), admin).reason == (
        "action_not_allowed"
    )


def test_attenuated_session_token_keeps_its_narrowing() -> None:
    verifier = new_verifier()
    narrowed = attenuate(cached_token("session"), kit().root.public, actions=["apps.read"])
    vt = verified(verifier, narrowed)
    admin = UserContext(role="admin")
    assert verifier.authorize(vt, req("apps.read", "web"), admin).allowed
    assert verifier.authorize(vt, req("apps.deploy", "web"), admin).reason == "action_not_allowed"
