"""Hash chain and signed checkpoints.

`h_n = SHA-256(h_{n-1} || canonical(event_n))`, with `h_0` 32 zero bytes. Every
`CHECKPOINT_EVERY` events the chain tip is signed with the audit key; checkpoints go to
the database and to a file in the data directory, so rewriting the database alone (even
recomputing every hash) is caught by a signature that no longer matches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

GENESIS = "0" * 64
CHECKPOINT_EVERY = 16
EVENT_FIELDS = (
    "seq",
    "at",
    "actor",
    "action",
    "target",
    "outcome",
    "reason",
    "org_id",
    "request_id",
    "client_ip",
    "detail",
)


def canonical(event: Mapping[str, Any]) -> bytes:
    """The bytes that are hashed: the event's fields only, sorted, compact, UTF-8."""
    body = {name: event[name] for name in EVENT_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def next_hash(prev_hash: str, event: Mapping[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical(event)).hexdigest()


def checkpoint_message(seq: int, chain_hash: str, at: str) -> bytes:
    return f"aerodrome-audit-checkpoint\n{seq}\n{chain_hash}\n{at}\n".encode()


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    at: str
    key_id: str
    signature: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True, separators=(",", ":"))


class AuditSigner:
    """Holds the audit signing key; only `sign` leaves this object."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id_of(self.public_key)

    def __repr__(self) -> str:
        return f"AuditSigner(key_id={self.key_id!r})"

    def public_bytes(self) -> bytes:
        return self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)

    def checkpoint(self, seq: int, chain_hash: str, at: str) -> Checkpoint:
        signature = self._key.sign(checkpoint_message(seq, chain_hash, at)).hex()
        return Checkpoint(seq, chain_hash, at, self.key_id, signature)


def read_checkpoint_file(path: Path) -> list[Checkpoint]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(Checkpoint(**json.loads(line)))
    return out


def append_checkpoint_file(path: Path, checkpoint: Checkpoint) -> None:
    with path.open("a") as fh:
        fh.write(checkpoint.to_json() + "\n")


@dataclass
class VerifyReport:
    ok: bool
    events: int
    checkpoints: int
    first_bad_seq: int | None = None
    problems: list[str] = field(default_factory=list)

    def fail(self, seq: int | None, problem: str) -> None:
        self.ok = False
        if seq is not None and (self.first_bad_seq is None or seq < self.first_bad_seq):
            self.first_bad_seq = seq
        self.problems.append(problem)


def verify(
    events: Iterable[Mapping[str, Any]],
    checkpoints: Iterable[Checkpoint],
    public_key: Ed25519PublicKey,
    head_seq: int | None = None,
    head_hash: str | None = None,
) -> VerifyReport:
    """Recompute the chain and check it against every checkpoint.

    Reports the first bad event: a modified row (hash mismatch), a deleted or reordered row
    (sequence gap), a rewritten chain (checkpoint mismatch) or a cut tail (a checkpoint or the
    head beyond the last event).
    """
    key_id = key_id_of(public_key)
    report = VerifyReport(ok=True, events=0, checkpoints=0)
    hashes: dict[int, str] = {}
    prev = GENESIS
    expected_seq = 1
    broken = False
    for event in events:
        seq = int(event["seq"])
        report.events += 1
        if broken:
            continue
        if seq != expected_seq:
            what = "missing" if seq > expected_seq else "out of order"
            report.fail(expected_seq, f"event {expected_seq}: {what} (next row is seq {seq})")
            broken = True
            continue
        computed = next_hash(prev, event)
        if computed != event["hash"]:
            report.fail(seq, f"event {seq}: content does not match its hash (modified)")
            broken = True
            continue
        hashes[seq] = computed
        prev = computed
        expected_seq += 1
    last_seq = expected_seq - 1

    # Check every distinct checkpoint (the database's and the file's may differ if one was
    # forged); only those with a valid signature are trusted to judge the chain.
    trusted: dict[int, str] = {}
    distinct = {(cp.seq, cp.hash, cp.at, cp.key_id, cp.signature): cp for cp in checkpoints}
    for cp in sorted(distinct.values(), key=lambda c: c.seq):
        report.checkpoints += 1
        if cp.key_id != key_id:
            report.fail(None, f"checkpoint {cp.seq}: signed by unknown key {cp.key_id}")
            continue
        try:
            message = checkpoint_message(cp.seq, cp.hash, cp.at)
            public_key.verify(bytes.fromhex(cp.signature), message)
        except (InvalidSignature, ValueError):
            report.fail(None, f"checkpoint {cp.seq}: bad signature (forged checkpoint)")
            continue
        trusted[cp.seq] = cp.hash

    def last_good_before(seq: int) -> int:
        return max((s for s, h in trusted.items() if s < seq and hashes.get(s) == h), default=0)

    for seq in sorted(trusted):
        if seq in hashes:
            if hashes[seq] != trusted[seq]:
                first = last_good_before(seq)
                report.fail(first + 1, f"checkpoint {seq}: chain was rewritten after event {first}")
        elif not broken and seq > last_seq:
            report.fail(
                last_seq + 1, f"log ends at event {last_seq} but checkpoint {seq} exists: tail cut"
            )
    if head_seq is not None and not broken:
        if head_seq > last_seq:
            report.fail(
                last_seq + 1,
                f"log ends at event {last_seq} but the store head says {head_seq}: tail cut",
            )
        elif (
            head_hash is not None
            and head_seq == last_seq
            and hashes.get(last_seq, GENESIS) != head_hash
        ):
            first = last_good_before(last_seq + 1)
            report.fail(
                first + 1,
                f"the store head's chain tip does not match event {last_seq}: "
                f"events after {first} were rewritten",
            )
    return report
