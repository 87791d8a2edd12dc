"""The access log's buffering, as an operator tailing or rotating the file sees it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aerodrome.edge.worker import ACCESS_LOG_BUFFER, AccessLog


def _line(n: int) -> bytes:
    return b'{"request_id": "req_%010d", "path": "/%s"}\n' % (n, b"x" * 100)


def test_lines_reach_the_file_once_a_buffer_is_full_not_only_each_second(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(path)
    lines = [_line(n) for n in range(2000)]  # about 250 KiB, four buffers' worth
    for line in lines:
        log.add(line)
        assert len(log.buffer) < ACCESS_LOG_BUFFER  # memory stays bounded between flushes
    written = path.read_bytes()
    assert len(written) >= 3 * ACCESS_LOG_BUFFER  # tail -f sees them before the timed flush
    log.flush()
    assert path.read_bytes() == b"".join(lines)  # every line once, in order
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_rotated_log_is_followed_after_the_timed_flush(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(path)
    log.add(_line(1))
    log.flush()
    path.rename(tmp_path / "access.log.1")  # logrotate moves the file away
    log.add(_line(2))
    log.flush()
    assert (tmp_path / "access.log.1").read_bytes() == _line(1)
    assert path.read_bytes() == _line(2)


def test_an_unwritable_log_drops_lines_says_so_once_and_keeps_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "missing-dir" / "access.log"
    log = AccessLog(path)
    for n in range(3000):
        log.add(_line(n))  # never raises into the request path
    log.flush()
    assert len(log.buffer) == 0  # nothing piles up in memory either
    out = capsys.readouterr().out
    assert out.count("access log lines dropped") == 1 and "No such file" in out
    os.mkdir(tmp_path / "missing-dir")
    log.add(_line(1))
    log.flush()
    assert path.read_bytes() == _line(1)  # writes resume once the directory is back
