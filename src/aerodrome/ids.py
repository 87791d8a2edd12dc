"""Random, unguessable identifiers with a type prefix (`org_…`, `app_…`, `tok_…`)."""

from __future__ import annotations

import base64
import re
import secrets

PREFIXES = frozenset(
    {
        "usr",
        "org",
        "mem",
        "app",
        "tok",
        "mch",
        "req",
        "sec",
        "sev",
        "rel",
        "ups",
        "crt",
        "acc",
        "chl",
    }
)


def new_id(prefix: str) -> str:
    """120 random bits, base32 without padding, lower case: `app_3kq…` (24 characters)."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    body = base64.b32encode(secrets.token_bytes(15)).decode("ascii").lower()
    return f"{prefix}_{body}"


def has_prefix(value: str, prefix: str) -> bool:
    return value.startswith(prefix + "_") and len(value) == len(prefix) + 25


def id_pattern(prefix: str) -> re.Pattern[str]:
    """What `new_id(prefix)` makes, for checking input (`fullmatch`) or finding one (`search`)."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    return re.compile(rf"{prefix}_[a-z2-7]{{24}}")


MACHINE_ID = id_pattern("mch")
