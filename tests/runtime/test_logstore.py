"""Machine logs: per app, in order, filtered by machine, bounded in size."""

from __future__ import annotations

from pathlib import Path

import pytest

from aerodrome.ids import new_id
from aerodrome.runtime import logstore
from aerodrome.runtime.logstore import LogStore
from aerodrome.runtime.machine import LogLine


def line(n: int, machine: str = "mch_a", stream: str = "stdout") -> LogLine:
    return LogLine(1000.0 + n, machine, stream, f"message {n}")


def test_lines_come_back_in_order_per_app_and_machine(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    web, api = new_id("app"), new_id("app")
    for n in range(10):
        store.append(web, line(n, "mch_a" if n % 2 else "mch_b"), "local")
    store.append(api, line(99), "local")
    lines = store.read(web)
    assert [x.message for x in lines] == [f"message {n}" for n in range(10)]
    assert [x.message for x in store.read(web, machine_id="mch_b")] == [
        f"message {n}" for n in range(0, 10, 2)
    ]
    assert [x.message for x in store.read(api)] == ["message 99"]
    after = store.read(web, after=lines[5].seq)
    assert [x.message for x in after] == [f"message {n}" for n in range(6, 10)]
    assert store.read(web, limit=3)[0].message == "message 7"
    assert lines[0].to_dict()["region"] == "local"


def test_an_app_that_logs_without_end_uses_bounded_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logstore, "SEGMENT_BYTES", 2000)
    monkeypatch.setattr(logstore, "MAX_SEGMENTS", 3)
    store = LogStore(tmp_path)
    app = new_id("app")
    for n in range(2000):
        store.append(app, line(n), "local")
    files = list((tmp_path / app).iterdir())
    assert len(files) <= 3
    assert sum(f.stat().st_size for f in files) < 3 * 2000 + 500
    assert store.read(app)[-1].message == "message 1999"
    assert all(f.stat().st_mode & 0o077 == 0 for f in files)


def test_app_ids_are_the_only_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LogStore(tmp_path).append("../../etc", line(1), "local")


def test_pages_follow_a_cursor_without_gaps_or_repeats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logstore, "SEGMENT_BYTES", 2000)  # many segments, so cursors cross them
    monkeypatch.setattr(logstore, "MAX_SEGMENTS", 100)
    store = LogStore(tmp_path)
    app = new_id("app")
    assert store.page(app) == logstore.Page([], 0)
    assert store.page(app, after=0) == logstore.Page([], 0)
    for n in range(300):
        store.append(app, line(n, "mch_a" if n % 3 else "mch_b"), "local")
    assert len(list((tmp_path / app).iterdir())) > 2
    seen: list[str] = []
    cursor = 0
    while True:
        page = store.page(app, after=cursor, limit=7)
        seen += [x.message for x in page.lines]
        if not page.lines:
            break
        assert page.next == page.lines[-1].seq
        cursor = page.next
    assert seen == [f"message {n}" for n in range(300)]
    assert store.page(app, after=cursor) == logstore.Page([], cursor)
    # The tail's cursor is the last line, whatever the filter matched.
    tail = store.page(app, machine_id="mch_b", limit=2)
    assert [x.message for x in tail.lines] == ["message 294", "message 297"]
    assert tail.next == store.read(app, limit=1)[0].seq
    # A filtered read moves its cursor past lines of other machines too.
    last_b = store.page(app, machine_id="mch_b", after=tail.lines[-1].seq)
    assert last_b.lines == [] and last_b.next == tail.next
    store.append(app, line(300, "mch_b"), "local")
    assert [x.message for x in store.read(app, machine_id="mch_b", after=tail.next)] == [
        "message 300"
    ]


def test_a_line_being_written_is_not_read_until_whole(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    app = new_id("app")
    store.append(app, line(1), "local")
    segment = next((tmp_path / app).iterdir())
    with segment.open("a") as fh:
        fh.write('{"t": 1002.0, "m": "mch_a", "r": "local", "s": "stdout", "msg": "mess')
    page = store.page(app, after=0)
    assert [x.message for x in page.lines] == ["message 1"]
    with segment.open("a") as fh:
        fh.write('age 2"}\n{damaged\n')
    store.append(app, line(3), "local")
    later = store.page(app, after=page.next)
    assert [x.message for x in later.lines] == ["message 2", "message 3"]


def test_following_reads_only_what_came_after_the_cursor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LogStore(tmp_path)
    web = new_id("app")
    for n in range(5000):
        store.append(web, line(n), "local")
    cursor = store.page(web, limit=1).next  # the end, as `aero logs -f` starts
    store.append(web, line(5000), "local")
    read: list[int] = []
    real_open = Path.open

    def counting_open(self: Path, *args: object, **kw: object) -> object:
        handle = real_open(self, *args, **kw)  # type: ignore[call-overload]
        original = handle.seek

        def seek(offset: int, *rest: int) -> int:
            read.append(self.stat().st_size - offset)  # what is left to read from there
            return original(offset, *rest)

        handle.seek = seek
        return handle

    monkeypatch.setattr(Path, "open", counting_open)
    page = store.page(web, after=cursor)
    assert [x.message for x in page.lines] == ["message 5000"]
    assert read and max(read) < 200  # one line's bytes, not the 5000 before it
