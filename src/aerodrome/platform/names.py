"""Validation of names people choose: org slugs, app names, emails, token names."""

from __future__ import annotations

import re

from aerodrome.errors import InvalidInput

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[A-Za-z0-9.-]{1,253}$")
# App names become hostnames next to the platform's own.
RESERVED_APP_NAMES = frozenset({"api", "www", "admin", "auth", "oidc", "edge", "metrics", "status"})
ENVIRONMENTS = ("production", "test")


def validate_slug(kind: str, value: str) -> str:
    if not isinstance(value, str) or len(value) < 2 or not _LABEL.match(value):
        raise InvalidInput(
            f"invalid {kind} {value!r}",
            hint=f"a {kind} is 2-63 characters: lower-case letters, digits and dashes, "
            "not starting or ending with a dash",
        )
    return value


def validate_app_name(value: str) -> str:
    validate_slug("app name", value)
    if value in RESERVED_APP_NAMES:
        raise InvalidInput(f"app name {value!r} is reserved", hint="choose another name")
    return value


def validate_email(value: str) -> str:
    value = value.strip()
    if not _EMAIL.match(value):
        raise InvalidInput(f"invalid email {value!r}", hint="for example alice@example.com")
    return value.lower()


def validate_environment(value: str) -> str:
    if value not in ENVIRONMENTS:
        raise InvalidInput(
            f"invalid environment {value!r}", hint=f"one of: {', '.join(ENVIRONMENTS)}"
        )
    return value


def validate_label(kind: str, value: str, max_len: int = 200) -> str:
    value = value.strip()
    if not value or len(value) > max_len or any(ord(c) < 32 for c in value):
        raise InvalidInput(f"invalid {kind}", hint=f"1-{max_len} printable characters")
    return value
