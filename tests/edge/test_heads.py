"""`header_lines`, which reads the header lines to relay from an upstream response head's raw
bytes: the Python function and its C twin (`_heads.c`, built with the compiled edge) agree
with what the head says, for any spelling of the names that matter."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aerodrome.edge.native import compiled_dir
from aerodrome.edge.upstream import LEFT_OUT, READ_HEADER_LINES, header_lines

Reader = Callable[[bytes, int, tuple[bytes, ...]], tuple[int, list[bytes], bool, bool]]
NAMES = (
    *LEFT_OUT,
    b"content-length",
    b"content-type",
    b"server",
    b"x-te",
    b"connections",
    b"t",
    b"set-cookie",
)
VALUE_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


@st.composite
def heads(draw: st.DrawFn) -> tuple[bytes, int, list[tuple[bytes, bytes]], int]:
    """(raw, start, [(name, line)], where the next message begins): a head the parser would
    accept, after some bytes that are not part of it and followed by some body."""
    lines = []
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=12)):
        flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
        spelled = bytes(
            c ^ 0x20 if flip and chr(c).isalpha() else c
            for c, flip in zip(name, flips, strict=True)
        )
        value = draw(
            st.one_of(
                st.sampled_from(["chunked", "gzip, Chunked", "5"]),
                st.text(VALUE_CHARS, max_size=20),
            )
        )
        space = draw(st.sampled_from([b"", b" ", b"\t "]))
        lines.append((name, spelled + b":" + space + value.encode() + b"\r\n"))
    before = draw(st.binary(max_size=16))
    head = draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"])) + b"HTTP/1.1 200 OK\r\n"
    head += b"".join(line for _, line in lines) + b"\r\n"
    raw = before + head + draw(st.binary(max_size=40))
    return raw, len(before), lines, len(before) + len(head)


def check(read: Reader, raw: bytes, start: int, lines: list[tuple[bytes, bytes]], end: int) -> None:
    after, pieces, has_length, chunked = read(raw, start, LEFT_OUT)
    assert after == end
    assert b"".join(pieces) == b"".join(line for name, line in lines if name not in LEFT_OUT)
    assert all(piece.endswith(b"\r\n") for piece in pieces)  # whole lines only
    assert has_length == any(name == b"content-length" for name, _ in lines)
    codings = [line for name, line in lines if name == b"transfer-encoding"]
    assert chunked == (bool(codings) and b"chunked" in codings[-1].lower())


def built() -> Reader:
    if compiled_dir() is None:
        pytest.skip("no compiled build matches the sources: run `python -m aerodrome.edge.build`")
    assert READ_HEADER_LINES is not header_lines  # the build's C function is the one used
    return READ_HEADER_LINES


@given(heads())
def test_the_python_reading_keeps_every_line_but_the_hop_by_hop_ones(
    head: tuple[bytes, int, list[tuple[bytes, bytes]], int],
) -> None:
    check(header_lines, *head)


def test_the_c_reading_agrees() -> None:
    read = built()

    @given(heads())
    def agrees(head: tuple[bytes, int, list[tuple[bytes, bytes]], int]) -> None:
        check(read, *head)
        assert read(head[0], head[1], LEFT_OUT) == header_lines(head[0], head[1], LEFT_OUT)

    agrees()


@pytest.mark.parametrize("c", [False, True], ids=["python", "c"])
def test_a_head_that_is_not_whole_is_refused(c: bool) -> None:
    read = built() if c else header_lines
    for raw in (
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 200 OK\r\nX-A: b",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
    ):
        with pytest.raises(ValueError):
            read(raw, 0, LEFT_OUT)


@pytest.mark.parametrize("c", [False, True], ids=["python", "c"])
def test_the_last_transfer_encoding_says_whether_the_body_is_chunked(c: bool) -> None:
    read = built() if c else header_lines
    for codings, chunked in (((b"Chunked", b"gzip"), False), ((b"gzip", b"x, CHUNKED"), True)):
        raw = b"HTTP/1.1 200 OK\r\n" + b"".join(
            b"transfer-Encoding: %b\r\n" % coding for coding in codings
        )
        assert read(raw + b"X-A: b\r\n\r\n", 0, LEFT_OUT) == (
            len(raw) + 10,
            [b"X-A: b\r\n"],
            False,
            chunked,
        )


def test_the_c_reading_agrees_on_any_bytes() -> None:
    """Whatever the bytes (the parser would refuse most of these), the C function returns
    what the Python one does, or raises ValueError as it does: it never reads outside them."""
    read = built()
    pieces = st.sampled_from(
        [b"\r\n", b"\n", b"\r", b":", b"HTTP/1.1 200 OK", b"Connection", b"te:"]
    )
    raws = st.lists(st.one_of(pieces, st.binary(max_size=8)), max_size=20).map(b"".join)

    @given(raws, st.integers(min_value=0, max_value=60))
    def agrees(raw: bytes, start: int) -> None:
        try:
            expected: object = header_lines(raw, start, LEFT_OUT)
        except ValueError:
            expected = ValueError
        try:
            got: object = read(raw, start, LEFT_OUT)
        except ValueError:
            got = ValueError
        assert got == expected

    agrees()
