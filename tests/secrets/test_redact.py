"""The redactor: every encoded form of a value is masked, in one piece or split into chunks.

The forms checked here are computed in this file, from the standard library, not taken from
`aerodrome.secrets.redact.encodings`: the test says what a program may print, the redactor
must catch it.
"""

from __future__ import annotations

import base64
import binascii
import json
from urllib.parse import quote, quote_plus

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from aerodrome.secrets.redact import MASK, MIN_LENGTH, Redactor, encodings
from aerodrome.secrets.values import SecretValue

PROPERTIES = settings(max_examples=60, deadline=None)

utf8_values = st.text(min_size=1, max_size=24).map(str.encode).filter(lambda b: len(b) >= 4)
binary_values = st.binary(min_size=4, max_size=48)
secret_values = st.one_of(binary_values, utf8_values)
text_values = st.text(min_size=4, max_size=24)
noise = st.binary(max_size=64)


def b64_window(stream: bytes, start: int, length: int, urlsafe: bool) -> bytes:
    """The base64 characters of `stream` made only of the bits of stream[start:start+length]:
    what an observer can decode back to the value from inside a longer base64 run."""
    encoded = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(stream)
    first = -(-(8 * start) // 6)  # the first 6-bit group that begins at or after the value
    last = (8 * (start + length)) // 6  # one past the last group that ends within it
    return encoded[first:last]


def plain_forms(value: bytes) -> set[bytes]:
    """Forms a value takes when printed on its own (any context)."""
    forms = {
        value,
        binascii.hexlify(value),
        binascii.hexlify(value).upper(),
        base64.b64encode(value),
        base64.urlsafe_b64encode(value),
        quote(value, safe="").encode(),
        quote_plus(value).encode(),
    }
    return {f for f in forms if len(f) >= MIN_LENGTH}


def overlaps_mask(form: bytes, mask: bytes = MASK) -> bool:
    """Could `form` show up in masked output only because it overlaps a mask? (Then finding
    it there proves nothing.)"""
    if form in mask or mask in form:
        return True
    return any(
        form[:k] == mask[-k:] or form[-k:] == mask[:k] for k in range(1, min(len(form), len(mask)))
    )


def assert_masked(out: bytes, forms: set[bytes]) -> None:
    for form in forms:
        if not overlaps_mask(form):
            assert form not in out, (form, out)


# -- every form, in one piece -----------------------------------------------------------------


@PROPERTIES
@given(value=secret_values, before=noise, after=noise)
def test_raw_hex_and_whole_base64_are_masked(value: bytes, before: bytes, after: bytes) -> None:
    redactor = Redactor([value])
    for form in plain_forms(value):
        text = before + form + after
        out = redactor.redact(text)
        assert MASK in out
        assert_masked(out, {form, value})


@PROPERTIES
@given(
    value=secret_values,
    offset=st.sampled_from([0, 1, 2]),
    whole_groups=st.integers(min_value=0, max_value=4),
    tail=st.binary(max_size=16),
    urlsafe=st.booleans(),
    data=st.data(),
)
def test_base64_inside_a_longer_run_is_masked_at_every_alignment(
    value: bytes,
    offset: int,
    whole_groups: int,
    tail: bytes,
    urlsafe: bool,
    data: st.DataObject,
) -> None:
    """A value inside a larger binary blob that is base64-encoded as a whole: the characters
    that depend only on the value must not survive, at byte offsets 0, 1 and 2."""
    head = data.draw(
        st.binary(min_size=3 * whole_groups + offset, max_size=3 * whole_groups + offset)
    )
    stream = head + value + tail
    encoded = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(stream)
    window = b64_window(stream, len(head), len(value), urlsafe)
    assert len(window) >= MIN_LENGTH  # 4 bytes always leave at least 4 whole characters
    out = Redactor([value]).redact(b"blob=" + encoded + b";")
    assert_masked(out, {window})


@PROPERTIES
@given(value=secret_values, other=st.binary(max_size=8))
def test_url_encoded_forms_are_masked(value: bytes, other: bytes) -> None:
    redactor = Redactor([value])
    for encoded in (quote(value, safe=""), quote_plus(value)):
        url = f"https://example.test/cb?x={quote_plus(other)}&token={encoded}&y=1".encode()
        assert_masked(redactor.redact(url), {encoded.encode()})


@PROPERTIES
@given(a=st.text(min_size=2, max_size=10), b=st.text(min_size=2, max_size=10))
@example(a="wJalrXUtnFEMI", b="K7MDENG+bPxRfiCYEXAMPLEKEY")  # an AWS-style secret key
def test_url_encoded_with_default_safe_characters_is_masked(a: str, b: str) -> None:
    value = f"{a}/{b}".encode()
    encoded = quote(value).encode()  # the default: safe="/"
    out = Redactor([value]).redact(b"GET /callback?secret=" + encoded + b" HTTP/1.1")
    assert_masked(out, {encoded})


@PROPERTIES
@given(text=text_values, ensure_ascii=st.booleans(), neighbour=st.text(max_size=8))
def test_json_escaped_forms_are_masked(text: str, ensure_ascii: bool, neighbour: str) -> None:
    value = text.encode()
    assume(len(value) >= MIN_LENGTH)
    escaped = json.dumps(text, ensure_ascii=ensure_ascii)[1:-1].encode()
    document = json.dumps({"a": neighbour, "password": text, "z": 1}, ensure_ascii=ensure_ascii)
    assert escaped in document.encode()
    out = Redactor([value]).redact(document.encode())
    assert_masked(out, {escaped})


@PROPERTIES
@given(
    lines=st.lists(
        st.text(
            alphabet=st.characters(codec="utf-8", exclude_characters="\n\r"),
            min_size=0,
            max_size=16,
        ),
        min_size=2,
        max_size=5,
    ),
    which=st.integers(min_value=0, max_value=4),
)
def test_each_line_of_a_multi_line_value_is_masked(lines: list[str], which: int) -> None:
    value = "\n".join(lines).encode()
    line = lines[which % len(lines)].encode().strip()
    assume(len(line) >= MIN_LENGTH)
    redactor = Redactor([value])
    # A program printing one line of a PEM key, a certificate, a .env file...
    for form in plain_forms(line):
        out = redactor.redact(b"line: " + form + b"\n")
        assert_masked(out, {form})


@PROPERTIES
@given(value=st.binary(min_size=1, max_size=3), before=noise, after=noise)
def test_values_shorter_than_the_minimum_are_not_masked(
    value: bytes, before: bytes, after: bytes
) -> None:
    redactor = Redactor([value])
    assert not redactor.active and encodings(value) == set()
    text = before + value + after + binascii.hexlify(value)
    assert redactor.redact(text) == text
    stream = redactor.stream()
    assert stream.feed(text[:3]) + stream.feed(text[3:]) + stream.flush() == text


@PROPERTIES
@given(values=st.lists(secret_values, min_size=1, max_size=3), text=st.binary(max_size=300))
def test_text_without_secrets_passes_through_byte_identical(
    values: list[bytes], text: bytes
) -> None:
    forms = set().union(*(plain_forms(v) | encodings(v) for v in values))
    assume(not any(form in text for form in forms))
    redactor = Redactor(values)
    assert redactor.active
    assert redactor.redact(text) == text
    assert redactor.redact_text(text.decode("utf-8", "surrogateescape")) == text.decode(
        "utf-8", "surrogateescape"
    )
    stream = redactor.stream()
    assert (
        b"".join(stream.feed(text[i : i + 7]) for i in range(0, len(text), 7)) + (stream.flush())
        == text
    )


def test_values_may_be_given_as_bytes_text_or_secret_values() -> None:
    text = "user=admin password=correct horse battery staple; hex=" + b"ok".hex()
    expected = Redactor([b"correct horse battery staple"]).redact_text(text)
    assert expected == "user=admin password=[REDACTED]; hex=6f6b"
    assert Redactor(["correct horse battery staple"]).redact_text(text) == expected
    secret = SecretValue(b"correct horse battery staple")
    assert Redactor([secret]).redact_text(text) == expected
    assert "correct" not in repr(Redactor([secret]))


# -- chunked ----------------------------------------------------------------------------------

DOUBLED = b"pw=hunter22" + binascii.hexlify(b"hunter22") + b" (and as hex)\n"


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, bytes, list[bytes]]:
    """(value, text holding several forms of it between noise, the text cut into chunks)."""
    value = draw(secret_values)
    forms = sorted(plain_forms(value))
    pieces = [draw(noise)]
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        pieces += [draw(st.sampled_from(forms)), draw(noise)]
    text = b"".join(pieces)
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(text)), max_size=12)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    return value, text, chunks


def run_stream(redactor: Redactor, chunks: list[bytes]) -> bytes:
    stream = redactor.stream()
    return b"".join(stream.feed(chunk) for chunk in chunks) + stream.flush()


@PROPERTIES
@given(case=streams())
def test_a_stream_never_emits_the_value_however_it_is_cut(
    case: tuple[bytes, bytes, list[bytes]],
) -> None:
    value, text, chunks = case
    redactor = Redactor([value])
    out = run_stream(redactor, chunks)
    assert MASK in out
    assert_masked(out, plain_forms(value))
    for index in range(len(chunks) + 1):  # the same text fed as two chunks at every cut
        cut = sum(len(c) for c in chunks[:index])
        assert_masked(run_stream(redactor, [text[:cut], text[cut:]]), plain_forms(value))


@PROPERTIES
@given(case=streams())
def test_a_stream_matches_redact_when_no_two_matches_touch(
    case: tuple[bytes, bytes, list[bytes]],
) -> None:
    """Same output as `redact()` on the whole text, whenever each masked span of the whole
    text is one occurrence of one form (matches neither overlap nor touch)."""
    value, text, chunks = case
    redactor = Redactor([value])
    known = encodings(value)
    assume(all(text[start:end] in known for start, end in redactor.spans(text)))
    assert run_stream(redactor, chunks) == redactor.redact(text)


@PROPERTIES
@given(case=streams())
@example(case=(b"xyxyxyxy", b"xy" * 12, [b"xy" * 10, b"xy" * 2]))  # leaks b"xyxy"
@example(case=(b"hunter22", DOUBLED, [DOUBLED[:22], DOUBLED[22:]]))  # two masks, not one
def test_a_stream_matches_redact_however_it_is_cut(
    case: tuple[bytes, bytes, list[bytes]],
) -> None:
    value, text, chunks = case
    redactor = Redactor([value])
    assert run_stream(redactor, chunks) == redactor.redact(text)
