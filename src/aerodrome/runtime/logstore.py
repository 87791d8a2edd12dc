"""Machine logs, per app, bounded in size and age.

Lines arrive already redacted (see `runtime/machine.py`). Each app has a directory of JSON-lines
segments; a segment is closed at `SEGMENT_BYTES`, and only the newest `MAX_SEGMENTS` segments
younger than `RETENTION` are kept, so an app that logs without end costs a fixed amount of disk.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aerodrome.ids import id_pattern
from aerodrome.runtime.machine import LogLine

SEGMENT_BYTES = 4 * 1024 * 1024
MAX_SEGMENTS = 8  # 32 MiB per app at most
RETENTION = 7 * 24 * 3600.0
# seq = segment number * STRIDE + the byte offset just past the line in its segment, so a
# follower reading on from a cursor seeks straight to it. A segment never nears STRIDE bytes.
STRIDE = 10_000_000
_SEGMENT = re.compile(r"(\d{8})\.jsonl")
_APP_ID = id_pattern("app")


@dataclass(frozen=True)
class StoredLine:
    seq: int  # position across segments: a cursor for "after" (opaque to readers)
    time: float
    machine_id: str
    region: str
    stream: str
    message: str

    def to_dict(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "time": self.time,
            "machine": self.machine_id,
            "region": self.region,
            "stream": self.stream,
            "message": self.message,
        }


@dataclass(frozen=True)
class Page:
    lines: list[StoredLine]
    next: int  # the cursor to read on from (as `after`)


class LogStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        # The writer's current segment per app and its size: appending a line costs one open
        # and one write, not a directory listing (the agent appends from its event loop).
        self._open_segment: dict[str, tuple[Path, int]] = {}

    def _dir(self, app_id: str) -> Path:
        if not _APP_ID.fullmatch(app_id):  # the id becomes a path: nothing else gets in
            raise ValueError("not an app id")
        return self.root / app_id

    def _segments(self, app_id: str) -> list[Path]:
        directory = self._dir(app_id)
        if not directory.exists():
            return []
        return sorted(p for p in directory.iterdir() if _SEGMENT.fullmatch(p.name))

    def append(self, app_id: str, line: LogLine, region: str) -> None:
        current, size = self._open_segment.get(app_id, (None, SEGMENT_BYTES))
        rolled = current is None or size >= SEGMENT_BYTES
        if rolled:
            current, size = self._segment_for_writing(app_id)
        assert current is not None
        record = json.dumps(
            {
                "t": line.time,
                "m": line.machine_id,
                "r": region,
                "s": line.stream,
                "msg": line.message,
            },
            ensure_ascii=False,
        )
        data = (record + "\n").encode()
        fd = os.open(current, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        self._open_segment[app_id] = (current, size + len(data))
        if rolled:
            self._prune(app_id)

    def _segment_for_writing(self, app_id: str) -> tuple[Path, int]:
        directory = self._dir(app_id)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        segments = self._segments(app_id)
        current = segments[-1] if segments else directory / f"{1:08d}.jsonl"
        size = current.stat().st_size if current.exists() else 0
        if size >= SEGMENT_BYTES:
            current, size = directory / f"{int(current.name[:8]) + 1:08d}.jsonl", 0
        return current, size

    def _prune(self, app_id: str, now: float | None = None) -> None:
        now = now or time.time()
        segments = self._segments(app_id)
        for path in segments[:-MAX_SEGMENTS]:
            path.unlink(missing_ok=True)
        for path in segments[-MAX_SEGMENTS:-1]:
            if now - path.stat().st_mtime > RETENTION:
                path.unlink(missing_ok=True)

    def read(
        self,
        app_id: str,
        *,
        machine_id: str | None = None,
        after: int | None = None,
        limit: int = 500,
    ) -> list[StoredLine]:
        """Lines after cursor `after` (None: the last `limit` lines), oldest first."""
        return self.page(app_id, machine_id=machine_id, after=after, limit=limit).lines

    def page(
        self,
        app_id: str,
        *,
        machine_id: str | None = None,
        after: int | None = None,
        limit: int = 500,
    ) -> Page:
        """At most `limit` lines (of `machine_id` only, if given), oldest first, and the cursor
        to pass as `after` next time.

        `after=None` gives the last `limit` lines; `after=0` starts at the oldest line kept;
        otherwise reading starts just past that cursor, and segments wholly behind it are not
        opened. A line still being written is not returned until it is whole."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if after is None:
            return self._tail(app_id, machine_id, limit)
        lines: list[StoredLine] = []
        scanned = after
        for path in self._segments(app_id):
            base = int(path.name[:8]) * STRIDE
            if after >= base + STRIDE:
                continue  # every line of this segment is at or behind the cursor
            for line in self._lines(path, start=max(0, after - base)):
                scanned = line.seq
                if machine_id is None or line.machine_id == machine_id:
                    lines.append(line)
                    if len(lines) == limit:
                        return Page(lines, line.seq)
        return Page(lines, scanned)

    def _tail(self, app_id: str, machine_id: str | None, limit: int) -> Page:
        found: list[StoredLine] = []
        end = 0
        for path in reversed(self._segments(app_id)):
            lines = list(self._lines(path))
            if lines and not end:
                end = lines[-1].seq
            matching = [x for x in lines if machine_id is None or x.machine_id == machine_id]
            found = matching[-(limit - len(found)) :] + found
            if len(found) >= limit:
                break
        return Page(found, end)

    @staticmethod
    def _lines(path: Path, start: int = 0) -> Iterator[StoredLine]:
        """The whole lines of a segment from byte offset `start` (a line's end) on."""
        base = int(path.name[:8]) * STRIDE
        try:
            fh = path.open("rb")
        except FileNotFoundError:  # pruned since it was listed
            return
        with fh:
            fh.seek(start)
            end = start
            for raw in fh:
                if not raw.endswith(b"\n"):
                    return  # being written: it is read whole next time
                end += len(raw)
                try:
                    data = json.loads(raw.decode("utf-8", errors="replace"))
                    line = StoredLine(
                        base + end, data["t"], data["m"], data["r"], data["s"], data["msg"]
                    )
                except (ValueError, KeyError, TypeError):
                    continue  # a damaged line: skipped, its position still counts
                yield line
