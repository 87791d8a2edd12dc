"""Envelope encryption: round trips, context binding, tamper detection, and the keyring.

The pure properties run against a keyring built in memory; rotation and retirement run
through `platform.secrets` on a real store (SQLite and PostgreSQL) and compare the stored
columns before and after.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import logging
import os
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from aerodrome.errors import Conflict, InvalidInput
from aerodrome.keyfiles import RootSecret
from aerodrome.platform import apps as app_rules
from aerodrome.platform import orgs as org_rules
from aerodrome.platform import secrets as secret_rules
from aerodrome.secrets import seal as seal_internals  # private helpers, to move a data key
from aerodrome.secrets.keyring import Keyring, KeyringError, WrappedKek, wrap_new_kek
from aerodrome.secrets.seal import Context, Sealed, SealError, seal, unseal
from aerodrome.secrets.values import SecretValue
from aerodrome.services import Services
from aerodrome.store.models import App, KeyVersion, SecretVersion

PROPERTIES = settings(max_examples=60, deadline=None)

ROOT = RootSecret(os.urandom(32))
ROWS = [WrappedKek(1, wrap_new_kek(ROOT, 1), False), WrappedKek(2, wrap_new_kek(ROOT, 2), False)]
KEYRING = Keyring(ROOT, ROWS)  # active v2, v1 still usable

ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=28)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,40}", fullmatch=True)
versions = st.integers(min_value=1, max_value=10_000)
contexts = st.builds(Context, org_id=ids, app_id=ids, name=names, version=versions)
values = st.binary(max_size=2048)
FIELDS = ("org_id", "app_id", "name", "version")


def body_of(stored: str) -> bytes:
    """The decoded blob after the last `:` of a stored column."""
    return base64.b64decode(stored.rpartition(":")[2])


def with_body(stored: str, blob: bytes) -> str:
    prefix, _, _ = stored.rpartition(":")
    return f"{prefix}:{base64.b64encode(blob).decode()}"


def kek_version(wrapped_key: str) -> int:
    """The `k<N>` of `aero:v1:k<N>:<b64>`, read here without the module's parser."""
    parts = wrapped_key.split(":")
    assert parts[:2] == ["aero", "v1"] and parts[2].startswith("k"), wrapped_key
    return int(parts[2][1:])


def moved(context: Context, field: str, data: st.DataObject) -> Context:
    """`context` with `field` changed to a different value."""
    strategy = {"org_id": ids, "app_id": ids, "name": names, "version": versions}[field]
    old = getattr(context, field)
    new = data.draw(strategy.filter(lambda v: v != old), label=f"new {field}")
    changed: dict[str, Any] = {field: new}
    return dataclasses.replace(context, **changed)


# -- round trip and binding -------------------------------------------------------------------


@PROPERTIES
@given(context=contexts, value=values)
def test_seal_then_unseal_returns_the_value(context: Context, value: bytes) -> None:
    sealed = seal(KEYRING, context, value)
    assert kek_version(sealed.wrapped_key) == KEYRING.active_version == 2
    assert sealed.key_version == 2
    opened = unseal(KEYRING, context, sealed)
    assert isinstance(opened, SecretValue)
    assert opened.reveal() == value
    if len(value) >= 8:  # nothing of the value is stored in the clear
        assert value not in body_of(sealed.ciphertext)
        assert value not in body_of(sealed.wrapped_key)


@PROPERTIES
@given(context=contexts, value=values, field=st.sampled_from(FIELDS), data=st.data())
def test_a_ciphertext_moved_to_another_context_does_not_open(
    context: Context, value: bytes, field: str, data: st.DataObject
) -> None:
    sealed = seal(KEYRING, context, value)
    elsewhere = moved(context, field, data)
    with pytest.raises(SealError):
        unseal(KEYRING, elsewhere, sealed)


@PROPERTIES
@given(context=contexts, value=values, field=st.sampled_from(FIELDS), data=st.data())
def test_halves_of_two_sealed_values_do_not_combine(
    context: Context, value: bytes, field: str, data: st.DataObject
) -> None:
    """A ciphertext paired with the wrapped key of another context fails in either context:
    each half only opens in its own."""
    other_context = moved(context, field, data)
    mine = seal(KEYRING, context, value)
    theirs = seal(KEYRING, other_context, data.draw(values, label="other value"))
    with pytest.raises(SealError):  # my ciphertext, their (foreign) data key
        unseal(KEYRING, context, Sealed(mine.ciphertext, theirs.wrapped_key))
    with pytest.raises(SealError):  # their data key opens, my ciphertext does not
        unseal(KEYRING, other_context, Sealed(mine.ciphertext, theirs.wrapped_key))
    with pytest.raises(SealError):
        unseal(KEYRING, other_context, Sealed(theirs.ciphertext, mine.wrapped_key))


@PROPERTIES
@given(context=contexts, value=values, field=st.sampled_from(FIELDS), data=st.data())
def test_a_ciphertext_is_bound_to_its_context_even_with_its_own_data_key(
    context: Context, value: bytes, field: str, data: st.DataObject
) -> None:
    """Someone who can re-wrap data keys (KEK access) moves a ciphertext together with its
    own data key, wrapped for the new place: the ciphertext still refuses to open there."""
    sealed = seal(KEYRING, context, value)
    elsewhere = moved(context, field, data)
    dek = seal_internals._unwrap(KEYRING, context, sealed.wrapped_key)
    rewrapped = seal_internals._wrap(KEYRING, elsewhere, dek, KEYRING.active_version)
    assert seal_internals._unwrap(KEYRING, elsewhere, rewrapped) == dek
    with pytest.raises(SealError):
        unseal(KEYRING, elsewhere, Sealed(sealed.ciphertext, rewrapped))


@PROPERTIES
@given(context=contexts, value=values)
def test_a_data_key_relabelled_with_another_kek_version_does_not_open(
    context: Context, value: bytes
) -> None:
    sealed = seal(KEYRING, context, value)
    relabelled = sealed.wrapped_key.replace("aero:v1:k2:", "aero:v1:k1:", 1)
    assert relabelled != sealed.wrapped_key
    with pytest.raises(SealError):
        unseal(KEYRING, context, Sealed(sealed.ciphertext, relabelled))


@PROPERTIES
@given(context=contexts, value=values)
def test_two_seals_of_the_same_value_differ(context: Context, value: bytes) -> None:
    first, second = seal(KEYRING, context, value), seal(KEYRING, context, value)
    assert first.ciphertext != second.ciphertext
    assert first.wrapped_key != second.wrapped_key
    assert body_of(first.ciphertext)[:12] != body_of(second.ciphertext)[:12]  # fresh nonces
    assert unseal(KEYRING, context, first) == unseal(KEYRING, context, second)


# -- tampering --------------------------------------------------------------------------------


@PROPERTIES
@given(
    context=contexts,
    value=values,
    half=st.sampled_from(["ciphertext", "wrapped_key"]),
    data=st.data(),
)
def test_flipping_any_byte_of_either_blob_is_detected(
    context: Context, value: bytes, half: str, data: st.DataObject
) -> None:
    sealed = seal(KEYRING, context, value)
    blob = bytearray(body_of(getattr(sealed, half)))
    index = data.draw(st.integers(min_value=0, max_value=len(blob) - 1), label="index")
    blob[index] ^= data.draw(st.integers(min_value=1, max_value=255), label="xor")
    tampered = dataclasses.replace(sealed, **{half: with_body(getattr(sealed, half), bytes(blob))})
    with pytest.raises(SealError):
        unseal(KEYRING, context, tampered)


def test_a_truncated_or_garbled_blob_fails_with_seal_error() -> None:
    context = Context("org", "app", "NAME", 1)
    sealed = seal(KEYRING, context, b"the value")
    problems = []
    for half in ("ciphertext", "wrapped_key"):
        stored: str = getattr(sealed, half)
        blob = body_of(stored)
        corruptions = {
            "empty": with_body(stored, b""),
            "7 bytes": with_body(stored, blob[:7]),
            "11 bytes": with_body(stored, blob[:11]),
            "not base64": stored.rpartition(":")[0] + ":not*base64",
        }
        for label, corrupt in corruptions.items():
            try:
                unseal(KEYRING, context, dataclasses.replace(sealed, **{half: corrupt}))
            except SealError:
                continue
            except Exception as exc:
                problems.append(f"{half} {label}: {type(exc).__name__}")
            else:
                problems.append(f"{half} {label}: opened")
    assert problems == []


# -- the keyring in memory --------------------------------------------------------------------


def test_a_keyring_with_another_root_secret_refuses() -> None:
    with pytest.raises(KeyringError) as caught:
        Keyring(RootSecret(os.urandom(32)), ROWS)
    assert caught.value.code == "keyring_error"


def test_a_keyring_refuses_retired_and_unknown_versions() -> None:
    context = Context("org", "app", "NAME", 1)
    under_v1 = seal(Keyring(ROOT, ROWS[:1]), context, b"sealed under v1")
    assert kek_version(under_v1.wrapped_key) == 1
    assert unseal(KEYRING, context, under_v1).reveal() == b"sealed under v1"  # v1 decrypts
    retired_v1 = Keyring(ROOT, [dataclasses.replace(ROWS[0], retired=True), ROWS[1]])
    assert retired_v1.active_version == 2
    for version in (1, 3):
        with pytest.raises(KeyringError) as caught:
            retired_v1.kek(version)
        assert caught.value.code == "key_retired"
    with pytest.raises(KeyringError) as caught:
        unseal(retired_v1, context, under_v1)
    assert caught.value.code == "key_retired"
    with pytest.raises(KeyringError):
        Keyring(ROOT, [])
    with pytest.raises(KeyringError):
        Keyring(ROOT, [dataclasses.replace(row, retired=True) for row in ROWS])


# -- SecretValue ------------------------------------------------------------------------------


@PROPERTIES
@given(value=st.binary(min_size=1, max_size=64) | st.text(min_size=1).map(str.encode))
def test_a_secret_value_never_shows_itself(value: bytes) -> None:
    secret = SecretValue(value)
    shown = "SecretValue(***)"
    assert repr(secret) == str(secret) == f"{secret}" == f"{secret!r}" == shown
    assert "%s|%r" % (secret, secret) == f"{shown}|{shown}"  # noqa: UP031  # logging's style
    assert "{}".format(secret) == shown  # noqa: UP032
    assert repr([secret]) == f"[{shown}]"
    assert repr({"k": secret}) == f"{{'k': {shown}}}"
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "value=%s", (secret,), None)
    assert record.getMessage() == f"value={shown}"
    assert secret.reveal() == value and len(secret) == len(value)


def test_a_secret_value_cannot_be_pickled_copied_or_hashed() -> None:
    secret = SecretValue(b"do not pickle me")
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError):
            pickle.dumps(secret, protocol=protocol)
    with pytest.raises(TypeError):
        copy.copy(secret)
    with pytest.raises(TypeError):
        hash(secret)
    assert SecretValue(b"same") == SecretValue(b"same") != SecretValue(b"other")


# -- the keyring in the store: rotation and retirement -----------------------------------------

Stored = dict[str, tuple[str | None, str | None]]  # secret_versions.id -> (ciphertext, wrapped)


@dataclasses.dataclass
class Seeded:
    services: Services
    values: dict[tuple[str, str, int], bytes]  # (app id, name, version) -> value
    org_id: str


def _with_secrets(services: Services) -> Seeded:
    """Two apps with several secrets: two versions of one, an unset, a binary value, and the
    same value in both apps."""
    values: dict[tuple[str, str, int], bytes] = {}
    with services.store.write() as tx:
        admin = org_rules.get_or_create_user(tx, "admin@keys.test")
        org = org_rules.create_org(tx, "keys", None, admin)
        apps = [app_rules.create_app(tx, org, n, "production", admin.id) for n in ("ka", "kb")]
    plan: list[tuple[App, str, bytes | None]] = [
        (apps[0], "DATABASE_URL", b"postgres://u:first@db/x"),
        (apps[0], "DATABASE_URL", b"postgres://u:second@db/x"),
        (apps[0], "GONE", b"to be unset"),
        (apps[0], "GONE", None),
        (apps[0], "BLOB", bytes(range(256)) * 4),
        (apps[1], "DATABASE_URL", b"postgres://u:first@db/x"),
    ]
    for app, name, value in plan:
        with services.store.write() as tx:
            if value is None:
                secret_rules.unset_secrets(tx, app, [name])
                continue
            keyring = services.keyring(tx.session)
            [result] = secret_rules.set_secrets(
                tx, keyring, services.digester, app, {name: SecretValue(value)}
            )
            values[(app.id, name, result.version)] = value
    return Seeded(services, values, org.id)


def _stored(services: Services) -> Stored:
    with services.store.read() as session:
        rows = session.execute(select(SecretVersion)).scalars()
        return {row.id: (row.ciphertext, row.wrapped_key) for row in rows}


def _assert_all_open(fixture: Seeded) -> None:
    """Every stored value opens, under the keyring as it is now, to what was set."""
    services = fixture.services
    opened = {}
    with services.store.read() as session:
        keyring = services.keyring(session)
        for row in session.execute(select(SecretVersion)).scalars():
            if row.ciphertext is None:
                assert row.wrapped_key is None and row.op == "unset"
                continue
            assert row.wrapped_key is not None
            context = Context(fixture.org_id, row.app_id, row.name, row.version)
            sealed = Sealed(row.ciphertext, row.wrapped_key)
            opened[(row.app_id, row.name, row.version)] = unseal(keyring, context, sealed).reveal()
    assert opened == fixture.values


def _rotate(services: Services) -> tuple[int, int]:
    with services.store.write() as tx:
        return secret_rules.rotate_keys(tx, services.root_secret)


def _retire(services: Services, below: int) -> list[int]:
    with services.store.write() as tx:
        return secret_rules.retire_keys(tx, below)


def test_rotation_rewraps_every_data_key_and_reencrypts_no_value(services: Services) -> None:
    fixture = _with_secrets(services)
    before = _stored(services)
    sealed_rows = {i for i, (_, wrapped) in before.items() if wrapped is not None}
    assert len(sealed_rows) == len(fixture.values) == 5 and len(before) == 6
    assert {kek_version(before[i][1] or "") for i in sealed_rows} == {1}
    _assert_all_open(fixture)
    for expected_version in (2, 3):
        assert _rotate(services) == (expected_version, len(sealed_rows))
        after = _stored(services)
        assert set(after) == set(before)
        for row_id, (ciphertext, wrapped) in after.items():
            assert ciphertext == before[row_id][0], "a value was re-encrypted"
            if row_id in sealed_rows:
                assert wrapped is not None and wrapped != before[row_id][1]
                assert kek_version(wrapped) == expected_version
            else:
                assert wrapped is None
        _assert_all_open(fixture)
        before = after
    with services.store.read() as session:
        states = [
            (i.version, i.state, i.data_keys) for i in secret_rules.list_key_versions(session)
        ]
    assert states == [(1, "decrypt-only", 0), (2, "decrypt-only", 0), (3, "active", 5)]


def test_retire_is_refused_while_data_keys_remain_then_allowed_after_rotation(
    services: Services,
) -> None:
    fixture = _with_secrets(services)
    v1_sealed = _stored(services)
    with pytest.raises(InvalidInput):
        _retire(services, 2)  # v1 is the active version: nothing newer to fall back on
    # A newer key version that wraps nothing yet: every data key is still on v1.
    with services.store.write() as tx:
        tx.session.add(KeyVersion(version=2, wrapped=wrap_new_kek(services.root_secret, 2).hex()))
    revision = services.store.revision()
    with pytest.raises(Conflict) as caught:
        _retire(services, 2)
    assert "v1 still wraps 5 data key(s)" in caught.value.message
    assert services.store.revision() == revision
    assert _key_states(services) == [(1, "decrypt-only", 5), (2, "active", 0)]
    _assert_all_open(fixture)

    assert _rotate(services) == (3, 5)
    assert _retire(services, 3) == [1, 2]
    assert services.store.revision() == revision + 2
    assert _key_states(services) == [(1, "retired", 0), (2, "retired", 0), (3, "active", 5)]
    _assert_all_open(fixture)
    assert _retire(services, 3) == []  # nothing left to retire
    # A data key wrapped under a retired version (say, from a backup) is refused.
    with services.store.read() as session:
        keyring = services.keyring(session)
        rows = list(session.execute(select(SecretVersion)).scalars())
    for row in rows:
        ciphertext, wrapped = v1_sealed[row.id]
        if ciphertext is None or wrapped is None:
            continue
        assert kek_version(wrapped) == 1
        context = Context(fixture.org_id, row.app_id, row.name, row.version)
        with pytest.raises(KeyringError) as refused:
            unseal(keyring, context, Sealed(ciphertext, wrapped))
        assert refused.value.code == "key_retired"
    # Rotation goes on from the newest version, and retired versions stay retired.
    assert _rotate(services) == (4, 5)
    assert [state for _, state, _ in _key_states(services)] == [
        "retired",
        "retired",
        "decrypt-only",
        "active",
    ]
    _assert_all_open(fixture)


def _key_states(services: Services) -> list[tuple[int, str, int]]:
    with services.store.read() as session:
        infos = secret_rules.list_key_versions(session)
    return [(i.version, i.state, i.data_keys) for i in infos]


def test_a_keyring_loaded_with_another_root_secret_refuses(services: Services) -> None:
    fixture = _with_secrets(services)
    with services.store.read() as session, pytest.raises(KeyringError) as caught:
        secret_rules.load_keyring(session, RootSecret(os.urandom(32)))
    assert "does not open with this root key" in caught.value.message
    _assert_all_open(fixture)  # the right root still opens everything
