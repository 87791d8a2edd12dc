"""Human durations as flyctl takes them: `48h`, `30d`, `90m`, `1h30m`."""

from __future__ import annotations

import re
from datetime import timedelta

from aerodrome.errors import InvalidInput

_PART = re.compile(r"(\d+)(w|d|h|m|s)")
_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """Parse `48h`, `7d`, `1h30m`. Anything else is a clear error."""
    cleaned = text.strip().lower()
    pos, seconds = 0, 0
    for match in _PART.finditer(cleaned):
        if match.start() != pos:
            break
        seconds += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not cleaned or pos != len(cleaned):
        raise InvalidInput(
            f"invalid duration {text!r}",
            hint="use a number and a unit: 90m, 48h, 30d, 2w (units can be combined: 1h30m)",
        )
    if seconds <= 0:
        raise InvalidInput(f"duration {text!r} must be positive", hint="for example 48h or 7d")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out) or "0s"
