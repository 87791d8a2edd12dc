"""The audit log's hash chain and signed checkpoints: a clean log verifies, and every kind of
tampering is reported with the first event that can no longer be trusted.

The pure `verify()` tests build chains in memory; the store tests write events through
`Store.write()` on SQLite and PostgreSQL, then tamper with the database behind its back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, delete, insert, select, update

from aerodrome.audit.chain import (
    CHECKPOINT_EVERY,
    EVENT_FIELDS,
    GENESIS,
    AuditSigner,
    Checkpoint,
    VerifyReport,
    append_checkpoint_file,
    key_id_of,
    next_hash,
    read_checkpoint_file,
    verify,
)
from aerodrome.audit.store import audit_public_key, verify_store
from aerodrome.services import Services
from aerodrome.store.db import Audit
from aerodrome.store.models import AuditCheckpoint, AuditEvent, StoreHead

Event = dict[str, Any]
SIGNER = AuditSigner(Ed25519PrivateKey.generate())
ATTACKER = AuditSigner(Ed25519PrivateKey.generate())
TEXT_FIELDS = tuple(name for name in EVENT_FIELDS if name != "seq")


def build_chain(count: int, signer: AuditSigner = SIGNER) -> tuple[list[Event], list[Checkpoint]]:
    """What `Tx.audit` writes, in memory: events with their hashes, a checkpoint every 16."""
    events: list[Event] = []
    checkpoints: list[Checkpoint] = []
    prev = GENESIS
    for seq in range(1, count + 1):
        event: Event = {
            "seq": seq,
            "at": f"2030-01-01T00:{seq // 60:02d}:{seq % 60:02d}.000000+00:00",
            "actor": f"usr_{seq % 3}",
            "action": "apps.create",
            "target": f"app-{seq}",
            "outcome": "ok" if seq % 5 else "denied",
            "reason": "" if seq % 5 else "wrong_app",
            "org_id": "org_x",
            "request_id": f"req_{seq}",
            "client_ip": "10.0.0.1",
            "detail": f'{{"n":{seq}}}',
        }
        event["hash"] = prev = next_hash(prev, event)
        events.append(event)
        if seq % CHECKPOINT_EVERY == 0:
            checkpoints.append(signer.checkpoint(seq, event["hash"], event["at"]))
    return events, checkpoints


def rehash_from(events: list[Event], seq: int) -> None:
    """What an attacker with database access does after editing event `seq`."""
    prev = events[seq - 2]["hash"] if seq > 1 else GENESIS
    for event in events[seq - 1 :]:
        event["hash"] = prev = next_hash(prev, event)


def forged(seq: int, chain_hash: str, at: str, key_id: str = SIGNER.key_id) -> Checkpoint:
    """A checkpoint made with the attacker's key but claiming the real key's id."""
    return replace(ATTACKER.checkpoint(seq, chain_hash, at), key_id=key_id)


# -- pure verify() -------------------------------------------------------------------------------


def test_a_clean_chain_verifies() -> None:
    events, checkpoints = build_chain(40)
    report = verify(events, checkpoints, SIGNER.public_key, head_seq=40)
    assert report == VerifyReport(ok=True, events=40, checkpoints=2)


def test_an_empty_log_verifies() -> None:
    assert verify([], [], SIGNER.public_key, head_seq=0).ok


def _new_value(field: str, old: Any) -> st.SearchStrategy[Any]:
    if field == "seq":
        return st.integers(min_value=-5, max_value=200).filter(lambda v: v != old)
    return st.text(max_size=20).filter(lambda v: v != old)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_single_modified_field_is_detected_at_that_event(data: st.DataObject) -> None:
    count = data.draw(st.integers(min_value=1, max_value=40), label="events")
    events, checkpoints = build_chain(count)
    seq = data.draw(st.integers(min_value=1, max_value=count), label="seq")
    field = data.draw(st.sampled_from([*EVENT_FIELDS, "hash"]), label="field")
    events[seq - 1][field] = data.draw(_new_value(field, events[seq - 1][field]), label="value")
    report = verify(events, checkpoints, SIGNER.public_key, head_seq=count)
    assert not report.ok
    assert report.first_bad_seq == seq
    assert report.events == count


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_deleted_event_is_detected_at_its_seq(data: st.DataObject) -> None:
    count = data.draw(st.integers(min_value=2, max_value=40), label="events")
    events, checkpoints = build_chain(count)
    seq = data.draw(st.integers(min_value=1, max_value=count), label="deleted")
    del events[seq - 1]
    report = verify(events, checkpoints, SIGNER.public_key, head_seq=count)
    assert (report.ok, report.first_bad_seq) == (False, seq)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_two_reordered_events_are_detected_at_the_first(data: st.DataObject) -> None:
    count = data.draw(st.integers(min_value=2, max_value=40), label="events")
    events, checkpoints = build_chain(count)
    i = data.draw(st.integers(min_value=0, max_value=count - 2), label="i")
    j = data.draw(st.integers(min_value=i + 1, max_value=count - 1), label="j")
    events[i], events[j] = events[j], events[i]
    report = verify(events, checkpoints, SIGNER.public_key, head_seq=count)
    assert (report.ok, report.first_bad_seq) == (False, i + 1)


def test_a_rewritten_chain_is_caught_by_the_next_checkpoint() -> None:
    events, checkpoints = build_chain(40)
    events[19]["actor"] = "usr_innocent"
    rehash_from(events, 20)  # every hash is consistent again
    report = verify(events, checkpoints, SIGNER.public_key, head_seq=40)
    # Checkpoint 16 still vouches for events 1-16; checkpoint 32 no longer matches, so the
    # first event that cannot be trusted is 17.
    assert (report.ok, report.first_bad_seq) == (False, 17)
    assert any("checkpoint 32" in p and "rewritten after event 16" in p for p in report.problems)


def test_a_cut_tail_is_caught_by_a_checkpoint_beyond_it() -> None:
    events, checkpoints = build_chain(40)
    report = verify(events[:20], checkpoints, SIGNER.public_key, head_seq=20)
    assert (report.ok, report.first_bad_seq) == (False, 21)
    assert any("tail cut" in p for p in report.problems)


def test_a_cut_tail_is_caught_by_the_head() -> None:
    events, checkpoints = build_chain(40)
    report = verify(events[:35], checkpoints, SIGNER.public_key, head_seq=40)
    assert (report.ok, report.first_bad_seq) == (False, 36)


def test_a_checkpoint_by_another_key_is_refused() -> None:
    events, checkpoints = build_chain(40)
    other = ATTACKER.checkpoint(16, events[15]["hash"], events[15]["at"])
    report = verify(events, [other, checkpoints[1]], SIGNER.public_key, head_seq=40)
    assert not report.ok
    assert any("unknown key" in p for p in report.problems)


def test_a_forged_checkpoint_signature_is_refused() -> None:
    events, checkpoints = build_chain(40)
    fake = forged(32, events[31]["hash"], events[31]["at"])
    report = verify(events, [checkpoints[0], fake], SIGNER.public_key, head_seq=40)
    assert not report.ok
    assert report.first_bad_seq is None  # every event is intact; the checkpoint is not
    assert any("checkpoint 32" in p and "bad signature" in p for p in report.problems)


def test_a_forged_checkpoint_cannot_vouch_for_a_rewritten_chain() -> None:
    events, checkpoints = build_chain(40)
    events[19]["actor"] = "usr_innocent"
    rehash_from(events, 20)
    fake = forged(24, events[23]["hash"], events[23]["at"])
    report = verify(events, [*checkpoints, fake], SIGNER.public_key, head_seq=40)
    assert not report.ok
    assert report.first_bad_seq == 17  # reported: 25, after the edited event 20


def test_a_forged_copy_does_not_hide_the_genuine_checkpoint() -> None:
    events, checkpoints = build_chain(40)
    events[19]["actor"] = "usr_innocent"
    rehash_from(events, 20)
    fake = forged(32, events[31]["hash"], events[31]["at"])
    # verify_store passes the database's checkpoints first, then the file's.
    report = verify(events, [checkpoints[0], fake, *checkpoints], SIGNER.public_key, head_seq=40)
    assert not report.ok
    assert report.first_bad_seq == 17  # reported: None


# -- the store, on SQLite and PostgreSQL ---------------------------------------------------------

COUNT = 40  # checkpoints at 16 and 32; events 33-40 are covered by the hash chain only


def write_events(services: Services, count: int = COUNT, first_seq: int = 1) -> None:
    """Events `first_seq`..`count` (event n is `app-n`), in transactions of five, so
    checkpoints also fall inside a transaction."""
    for first in range(first_seq, count + 1, 5):
        ctx = Audit(actor=f"usr_{first % 3}", request_id=f"req_{first}", client_ip="10.0.0.1")
        with services.store.write(ctx) as tx:
            for n in range(first, min(first + 5, count + 1)):
                outcome = "ok" if n % 7 else "denied"
                tx.audit(
                    "apps.create",
                    f"app-{n}",
                    outcome=outcome,
                    reason="" if n % 7 else "wrong_app",
                    org_id="org_x",
                    detail={"n": n},
                )


def check(services: Services) -> VerifyReport:
    return verify_store(
        services.store,
        audit_public_key(services.settings.keys_dir),
        services.settings.checkpoint_file,
    )


def real_key_id(services: Services) -> str:
    return key_id_of(audit_public_key(services.settings.keys_dir))


def tamper(services: Services, change: Callable[[Connection], Any]) -> None:
    with services.store.engine.begin() as conn:
        change(conn)


def rows(conn: Connection) -> list[Event]:
    result = conn.execute(select(AuditEvent.__table__).order_by(AuditEvent.seq))
    return [dict(row._mapping) for row in result]


def rewrite_and_rehash(conn: Connection, seq: int, **values: Any) -> list[Event]:
    """Edit event `seq`, then recompute its hash and every later one, and the head."""
    events = rows(conn)
    events[seq - 1].update(values)
    rehash_from(events, seq)
    for event in events[seq - 1 :]:
        conn.execute(
            update(AuditEvent)
            .where(AuditEvent.seq == event["seq"])
            .values(hash=event["hash"], **{k: event[k] for k in values})
        )
    conn.execute(update(StoreHead).values(audit_hash=events[-1]["hash"]))
    return events


@pytest.fixture
def logged(services: Services) -> Services:
    base = check(services)
    assert base.ok and base.events == 1, "a fresh platform's log holds the keyring's creation"
    write_events(services, COUNT, first_seq=base.events + 1)
    return services


def test_a_clean_store_verifies(logged: Services) -> None:
    report = check(logged)
    assert report == VerifyReport(ok=True, events=COUNT, checkpoints=2)
    on_file = read_checkpoint_file(logged.settings.checkpoint_file)
    assert [cp.seq for cp in on_file] == [16, 32]
    with logged.store.read() as session:
        in_db = session.execute(select(AuditCheckpoint.seq).order_by(AuditCheckpoint.seq))
        assert list(in_db.scalars()) == [16, 32]
        head = session.execute(select(StoreHead)).scalar_one()
        assert head.audit_seq == COUNT


@pytest.mark.parametrize(
    ("seq", "field", "value"),
    [(7, "actor", "usr_innocent"), (14, "outcome", "ok"), (36, "detail", '{"n":0}')],
)
def test_a_modified_row_is_reported_at_its_seq(
    logged: Services, seq: int, field: str, value: str
) -> None:
    tamper(
        logged,
        lambda c: c.execute(update(AuditEvent).where(AuditEvent.seq == seq).values({field: value})),
    )
    report = check(logged)
    assert (report.ok, report.first_bad_seq) == (False, seq)
    assert any(f"event {seq}" in p and "modified" in p for p in report.problems)


def test_a_deleted_row_is_reported_at_its_seq(logged: Services) -> None:
    tamper(logged, lambda c: c.execute(delete(AuditEvent).where(AuditEvent.seq == 10)))
    report = check(logged)
    assert (report.ok, report.first_bad_seq) == (False, 10)
    assert any("event 10: missing" in p for p in report.problems)


def test_two_swapped_rows_are_reported_at_the_first(logged: Services) -> None:
    def swap(conn: Connection) -> None:
        events = rows(conn)
        fields = (*TEXT_FIELDS, "hash")
        for here, there in ((5, 9), (9, 5)):
            source = events[there - 1]
            conn.execute(
                update(AuditEvent)
                .where(AuditEvent.seq == here)
                .values({name: source[name] for name in fields})
            )

    tamper(logged, swap)
    assert [e["target"] for e in _stored(logged)[4:9]] == [
        "app-9",
        "app-6",
        "app-7",
        "app-8",
        "app-5",
    ]
    report = check(logged)
    assert (report.ok, report.first_bad_seq) == (False, 5)


def _stored(services: Services) -> list[Event]:
    with services.store.engine.connect() as conn:
        return rows(conn)


def test_a_tail_cut_after_the_last_checkpoint_is_caught_by_the_head(logged: Services) -> None:
    tamper(logged, lambda c: c.execute(delete(AuditEvent).where(AuditEvent.seq > 32)))
    report = check(logged)
    assert (report.ok, report.first_bad_seq) == (False, 33)
    assert any("store head says 40" in p for p in report.problems)


def test_a_tail_cut_hidden_in_the_database_is_caught_by_the_checkpoint_file(
    logged: Services,
) -> None:
    def cut(conn: Connection) -> None:
        tip = rows(conn)[15]
        conn.execute(delete(AuditEvent).where(AuditEvent.seq > 16))
        conn.execute(delete(AuditCheckpoint).where(AuditCheckpoint.seq > 16))
        conn.execute(update(StoreHead).values(audit_seq=16, audit_hash=tip["hash"]))

    tamper(logged, cut)
    report = check(logged)
    assert (report.ok, report.first_bad_seq) == (False, 17)
    assert any("checkpoint 32 exists: tail cut" in p for p in report.problems)


@pytest.mark.parametrize("also_drop_db_checkpoints", [False, True])
def test_a_rewritten_row_with_every_later_hash_recomputed_is_caught_by_a_checkpoint(
    logged: Services, also_drop_db_checkpoints: bool
) -> None:
    def rewrite(conn: Connection) -> None:
        rewrite_and_rehash(conn, 20, actor="usr_innocent")
        if also_drop_db_checkpoints:  # the file copy is still there
            conn.execute(delete(AuditCheckpoint))

    tamper(logged, rewrite)
    report = check(logged)
    assert not report.ok
    # Events 1-16 are still vouched for by checkpoint 16; 17 is the first that is not.
    assert report.first_bad_seq == 17
    assert any("rewritten after event 16" in p for p in report.problems)


def test_a_forged_checkpoint_signature_is_reported(logged: Services) -> None:
    def forge(conn: Connection) -> None:
        signature = conn.execute(
            select(AuditCheckpoint.signature).where(AuditCheckpoint.seq == 16)
        ).scalar_one()
        flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
        conn.execute(
            update(AuditCheckpoint).where(AuditCheckpoint.seq == 16).values(signature=flipped)
        )

    tamper(logged, forge)
    report = check(logged)
    assert not report.ok
    assert report.first_bad_seq is None  # the events are intact
    assert any("checkpoint 16: bad signature" in p for p in report.problems)


def test_a_forged_checkpoint_in_the_file_is_reported(logged: Services) -> None:
    events = _stored(logged)
    append_checkpoint_file(
        logged.settings.checkpoint_file,
        forged(40, events[39]["hash"], events[39]["at"], real_key_id(logged)),
    )
    report = check(logged)
    assert not report.ok
    assert any("checkpoint 40: bad signature" in p for p in report.problems), report


def test_a_rewrite_covered_by_a_forged_db_checkpoint_is_located_by_the_file(
    logged: Services,
) -> None:
    def rewrite_and_forge(conn: Connection) -> None:
        events = rewrite_and_rehash(conn, 20, actor="usr_innocent")
        fake = forged(32, events[31]["hash"], events[31]["at"], real_key_id(logged))
        conn.execute(delete(AuditCheckpoint).where(AuditCheckpoint.seq == 32))
        conn.execute(insert(AuditCheckpoint).values(**fake.__dict__))

    tamper(logged, rewrite_and_forge)
    report = check(logged)
    assert not report.ok
    assert report.first_bad_seq == 17
