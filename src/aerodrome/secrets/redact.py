"""The redactor: masks an app's secret values, in every common encoding, in text streams.

For each value it precomputes the forms a program is likely to print: the raw bytes, base64
and base64url (at all three byte alignments, so the value is caught inside a longer base64
run), hex (both cases), URL encoding and JSON string escaping, and each line of a multi-line
value. One Aho-Corasick automaton finds all of them in a single pass. Values shorter than
`MIN_LENGTH` bytes are not masked: they would match everywhere.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

from ahocorasick_rs import BytesAhoCorasick, Implementation

from aerodrome.secrets.values import SecretValue

MIN_LENGTH = 4
MASK = b"[REDACTED]"
MAX_CARRY = 1 << 20  # a value repeated without end is masked in pieces of this size


def _base64_forms(value: bytes) -> set[bytes]:
    """The base64 characters that depend on `value` alone, at byte offsets 0, 1 and 2 of an
    enclosing stream, in both alphabets, plus the whole padded encoding."""
    forms = {base64.b64encode(value), base64.urlsafe_b64encode(value)}
    n = len(value)
    for offset in range(3):
        start = -(-8 * offset // 6)  # first character made only of the value's bits
        end = (8 * (offset + n)) // 6  # one past the last such character
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * offset + value).rstrip(b"=")
            forms.add(text[start:end])
    return forms


def encodings(value: bytes) -> set[bytes]:
    """Every form of `value` the redactor masks (those of at least MIN_LENGTH bytes)."""
    if len(value) < MIN_LENGTH:
        return set()
    forms = {value, binascii.hexlify(value), binascii.hexlify(value).upper()}
    forms |= _base64_forms(value)
    forms.add(quote(value, safe="").encode())
    forms.add(quote(value).encode())  # the default keeps "/" as is
    forms.add(quote_plus(value, safe="").encode())
    text = value.decode("utf-8", errors="surrogateescape")
    for ensure_ascii in (True, False):
        escaped = json.dumps(text, ensure_ascii=ensure_ascii)[1:-1]
        forms.add(escaped.encode("utf-8", errors="surrogateescape"))
    if b"\n" in value:
        for line in value.splitlines():
            if len(line.strip()) >= MIN_LENGTH:
                forms |= encodings(line.strip())
    return {form for form in forms if len(form) >= MIN_LENGTH}


def _as_bytes(value: bytes | str | SecretValue) -> bytes:
    if isinstance(value, SecretValue):
        return value.reveal()
    return value.encode("utf-8") if isinstance(value, str) else value


class Redactor:
    """Masks a fixed set of values. Build one per app per set of values; it is immutable."""

    def __init__(self, values: Iterable[bytes | str | SecretValue], mask: bytes = MASK) -> None:
        patterns: set[bytes] = set()
        for value in values:
            patterns |= encodings(_as_bytes(value))
        self._patterns = sorted(patterns)
        # A contiguous NFA builds in time linear in the patterns; the library's automatic
        # choice can pick a DFA whose construction explodes on long repetitive values.
        self._automaton = (
            BytesAhoCorasick(self._patterns, implementation=Implementation.ContiguousNFA)
            if self._patterns
            else None
        )
        self.longest = max((len(p) for p in self._patterns), default=0)
        self.mask = mask

    def __repr__(self) -> str:
        return f"Redactor({len(self._patterns)} patterns)"

    @property
    def active(self) -> bool:
        return self._automaton is not None

    def spans(self, data: bytes) -> list[tuple[int, int]]:
        """Merged [start, end) ranges of every occurrence of any form, overlaps included."""
        if self._automaton is None:
            return []
        found = self._automaton.find_matches_as_indexes(data, overlapping=True)
        if not found:
            return []
        merged: list[tuple[int, int]] = []
        for _, start, end in sorted(found, key=lambda m: m[1]):
            if merged and start <= merged[-1][1]:
                if end > merged[-1][1]:
                    merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        return merged

    def _apply(self, data: bytes, spans: list[tuple[int, int]]) -> bytes:
        if not spans:
            return data
        out, pos = [], 0
        for start, end in spans:
            out.append(data[pos:start])
            out.append(self.mask)
            pos = end
        out.append(data[pos:])
        return b"".join(out)

    def redact(self, data: bytes) -> bytes:
        return self._apply(data, self.spans(data))

    def redact_text(self, text: str) -> str:
        raw = text.encode("utf-8", errors="surrogateescape")
        return self.redact(raw).decode("utf-8", errors="surrogateescape")

    def stream(self) -> StreamRedactor:
        return StreamRedactor(self)


class StreamRedactor:
    """Redacts a byte stream chunk by chunk, catching values split across chunks: it holds
    back the last `longest - 1` bytes of each chunk until it knows they end no match."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._carry = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self._redactor.active:
            return chunk
        buf = self._carry + chunk
        spans = self._redactor.spans(buf)
        cut = len(buf) - (self._redactor.longest - 1)
        if cut <= 0:
            self._carry = buf
            return b""
        for start, end in spans:
            if start < cut <= end:
                # A match reaching the cut may go on in the next chunk (a repeated value):
                # hold it back whole, so it is masked once, as one span.
                cut = start
                break
        if cut <= 0 and len(buf) > MAX_CARRY:
            cut = len(buf) - (self._redactor.longest - 1)  # bound memory: mask what we have
        if cut <= 0:
            self._carry = buf
            return b""
        self._carry = buf[cut:]
        # Clipped at the cut: only the forced case above can leave a match straddling it.
        return self._redactor._apply(buf[:cut], [(s, min(e, cut)) for s, e in spans if s < cut])

    def flush(self) -> bytes:
        out, self._carry = self._redactor.redact(self._carry), b""
        return out
