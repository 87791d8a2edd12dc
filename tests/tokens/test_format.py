"""The wire format `aero1_<base64url>_<checksum>`: round trips, and telling a token that was cut
short on paste apart from one that is not ours at all, before any signature is checked."""

from __future__ import annotations

import base64
import string
import zlib
from functools import cache

import pytest
from biscuit_auth import KeyPair
from hypothesis import given, settings
from hypothesis import strategies as st

from aerodrome.ids import new_id
from aerodrome.tokens import format as wire
from aerodrome.tokens.attenuate import attenuate
from aerodrome.tokens.mint import RootKey, Scope, mint
from aerodrome.tokens.verify import Decision, Verifier

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def spec_checksum(body: str) -> str:
    """The checksum as the module docstring specifies it, written independently: CRC-32 of
    everything before it, in base62, 6 characters, most significant digit first."""
    value = zlib.crc32(body.encode("ascii"))
    digits = ""
    for _ in range(6):
        value, digit = divmod(value, 62)
        digits = BASE62[digit] + digits
    return digits


@cache
def _root() -> RootKey:
    return RootKey(KeyPair())


@cache
def real_tokens() -> tuple[str, ...]:
    """A session token, a deploy token and a two-block attenuated deploy token."""
    root = _root()
    session = mint(root, Scope("session", user_id=new_id("usr")), new_id("tok")).token
    deploy = mint(
        root, Scope("deploy", org_id=new_id("org"), app_id=new_id("app")), new_id("tok")
    ).token
    child = attenuate(deploy, root.public, actions=["apps.read"])
    return session, deploy, child


def test_encode_matches_the_documented_layout() -> None:
    raw = b"\x00\x01biscuit bytes\xff\xfe"
    token = wire.encode(raw)
    body, _, checksum = token.rpartition("_")
    assert token.startswith("aero1_")
    assert body == "aero1_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert checksum == spec_checksum(body)
    assert "=" not in token


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_round_trip(raw: bytes) -> None:
    token = wire.encode(raw)
    assert wire.decode(token) == raw
    assert set(token) <= set(string.ascii_letters + string.digits + "-_")
    checksum = token.rsplit("_", 1)[1]
    assert len(checksum) == wire.CHECKSUM_LEN and set(checksum) <= set(BASE62)


@pytest.mark.parametrize("wrap", ["{}", "  {}\n", "Bearer {}", "bearer   {} ", "BEARER {}"])
def test_bearer_prefix_and_surrounding_whitespace_are_accepted(wrap: str) -> None:
    raw = b"some biscuit"
    assert wire.decode(wrap.format(wire.encode(raw))) == raw


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_any_truncation_of_a_real_token_is_flagged_truncated(data: st.DataObject) -> None:
    token = data.draw(st.sampled_from(real_tokens()), label="token")
    cut = data.draw(st.integers(min_value=0, max_value=len(token) - 1), label="cut")
    with pytest.raises(wire.TokenFormatError) as caught:
        wire.decode(token[:cut])
    assert caught.value.truncated, f"prefix of length {cut} not flagged as truncated"


def test_every_prefix_of_an_attenuated_token_is_flagged_truncated() -> None:
    token = real_tokens()[2]
    for cut in range(len(token)):
        with pytest.raises(wire.TokenFormatError) as caught:
            wire.decode(token[:cut])
        assert caught.value.truncated, cut
    assert wire.decode(token)  # the whole thing is fine


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_a_changed_checksum_character_is_flagged(data: st.DataObject) -> None:
    token = data.draw(st.sampled_from(real_tokens()), label="token")
    first = len(token) - wire.CHECKSUM_LEN
    index = data.draw(st.integers(min_value=first, max_value=len(token) - 1), label="index")
    replacement = data.draw(st.sampled_from(BASE62).filter(lambda c: c != token[index]))
    altered = token[:index] + replacement + token[index + 1 :]
    with pytest.raises(wire.TokenFormatError) as caught:
        wire.decode(altered)
    assert caught.value.truncated


@pytest.mark.parametrize(
    "text",
    [
        "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln",  # a JWT
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a",  # someone else's token format
        "aero2_AAAA_000000",  # a future version of ours
        "AERO1_AAAA_000000",
    ],
)
def test_text_that_is_not_an_aerodrome_token_is_not_called_truncated(text: str) -> None:
    with pytest.raises(wire.TokenFormatError) as caught:
        wire.decode(text)
    assert not caught.value.truncated
    assert "aero1_" in str(caught.value)


def test_an_over_long_token_is_refused_before_any_work_and_not_called_truncated() -> None:
    token = wire.encode(b"x" * (wire.MAX_TOKEN_LEN))
    assert len(token) > wire.MAX_TOKEN_LEN
    with pytest.raises(wire.TokenFormatError) as caught:
        wire.decode(token)
    assert not caught.value.truncated
    assert str(wire.MAX_TOKEN_LEN) in str(caught.value)


def test_a_payload_that_is_not_base64url_is_refused_and_not_called_truncated() -> None:
    body = "aero1_" + "A" * 5  # 5 characters: no base64 input has that length
    with pytest.raises(wire.TokenFormatError) as caught:
        wire.decode(f"{body}_{spec_checksum(body)}")
    assert not caught.value.truncated
    assert "base64" in str(caught.value)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80))
def test_arbitrary_ascii_text_is_a_format_error_never_a_crash(tail: str) -> None:
    for text in (tail, "aero1_" + tail, "Bearer aero1_" + tail):
        try:
            wire.decode(text)
        except wire.TokenFormatError:
            continue
        # The only text that decodes is a well-formed token with a matching checksum.
        body = text.removeprefix("Bearer ").strip().rpartition("_")[0]
        assert text.strip().endswith(spec_checksum(body))


@pytest.mark.parametrize("text", ["aero1_é_abcdef", "Bearer aero1_AAAA\u00a0_000000"])
def test_non_ascii_text_is_a_malformed_token_not_a_crash(text: str) -> None:
    with pytest.raises(wire.TokenFormatError):
        wire.decode(text)
    verdict = Verifier(_root().public_keys()).verify(text)
    assert isinstance(verdict, Decision) and verdict.reason == "malformed"
