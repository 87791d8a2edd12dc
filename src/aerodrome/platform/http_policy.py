"""An app's HTTP service policy as the edge applies it: parsed and validated whole, with no
store behind it (the CLI and `aerodrome.toml` validation import it without a database).

The settings use fly.toml's names where the meaning is the same (`force_https`,
`concurrency.soft_limit`, `concurrency.hard_limit`) plus aerodrome's own `cors` and `hsts`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from aerodrome.errors import InvalidInput

ONE_YEAR = 31_536_000
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name
CORS_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@dataclass(frozen=True)
class Cors:
    origins: tuple[str, ...] = ()
    methods: tuple[str, ...] = ("GET", "HEAD", "POST")
    headers: tuple[str, ...] = ()
    credentials: bool = False
    max_age: int = 600


@dataclass(frozen=True)
class HttpService:
    force_https: bool = True
    hsts_max_age: int = ONE_YEAR
    hsts_include_subdomains: bool = False
    soft_limit: int = 25
    hard_limit: int = 0  # 0 = no limit
    websocket_idle_timeout: float = 0.0  # 0 = none: upgraded connections stay open
    cors: Cors = field(default_factory=Cors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "force_https": self.force_https,
            "hsts": {
                "max_age": self.hsts_max_age,
                "include_subdomains": self.hsts_include_subdomains,
            },
            "concurrency": {
                "type": "requests",
                "soft_limit": self.soft_limit,
                "hard_limit": self.hard_limit,
            },
            "websocket_idle_timeout": self.websocket_idle_timeout,
            "cors": {
                "origins": list(self.cors.origins),
                "methods": list(self.cors.methods),
                "headers": list(self.cors.headers),
                "credentials": self.cors.credentials,
                "max_age": self.cors.max_age,
            },
        }


def _fail(key: str, message: str) -> InvalidInput:
    return InvalidInput(f"http_service.{key}: {message}")


def _check_keys(where: str, data: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidInput(
            f"http_service{where}: unknown key {unknown[0]!r}",
            hint=f"known keys: {', '.join(sorted(allowed))}",
        )


def _table(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(key, "must be a table of settings")
    return value


def _strings(key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(key, "must be a list of strings")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, "must be true or false")
    return value


def _int(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(key, f"must be an integer from {low} to {high}")
    return value


def _origin(value: Any) -> str:
    if value == "*":
        return value
    if not isinstance(value, str) or not value.startswith(("https://", "http://")):
        raise _fail("cors.origins", f"{value!r} is not an origin like https://example.com")
    if value.rstrip("/").count("/") > 2:
        raise _fail("cors.origins", f"{value!r}: an origin has no path")
    return value.rstrip("/").lower()


def parse_http_service(data: dict[str, Any]) -> HttpService:
    """Validate a whole settings document; errors name the key."""
    if not isinstance(data, dict):
        raise InvalidInput("http_service must be an object")
    _check_keys("", data, {"force_https", "hsts", "concurrency", "cors", "websocket_idle_timeout"})
    force_https = data.get("force_https", True)
    if not isinstance(force_https, bool):
        raise _fail("force_https", "must be true or false")
    hsts = _table("hsts", data.get("hsts", {}))
    _check_keys(".hsts", hsts, {"max_age", "include_subdomains"})
    max_age = _int("hsts.max_age", hsts.get("max_age", ONE_YEAR), 0, 2 * ONE_YEAR)
    if 0 < max_age < ONE_YEAR:
        raise _fail("hsts.max_age", "must be at least one year (31536000), or 0 to disable")
    concurrency = _table("concurrency", data.get("concurrency", {}))
    _check_keys(".concurrency", concurrency, {"type", "soft_limit", "hard_limit"})
    if concurrency.get("type", "requests") != "requests":
        raise _fail("concurrency.type", 'only "requests" is supported')
    soft = _int("concurrency.soft_limit", concurrency.get("soft_limit", 25), 1, 100_000)
    hard = _int("concurrency.hard_limit", concurrency.get("hard_limit", 0), 0, 100_000)
    if hard and hard < soft:
        raise _fail("concurrency.hard_limit", "must be at least soft_limit (or 0 for none)")
    idle = data.get("websocket_idle_timeout", 0)
    if isinstance(idle, bool) or not isinstance(idle, (int, float)) or not 0 <= idle <= 86_400:
        raise _fail("websocket_idle_timeout", "must be seconds from 0 (none) to 86400")
    cors_data = _table("cors", data.get("cors", {}))
    _check_keys(".cors", cors_data, {"origins", "methods", "headers", "credentials", "max_age"})
    origins = tuple(_origin(o) for o in _strings("cors.origins", cors_data.get("origins", [])))
    methods = tuple(
        m.upper()
        for m in _strings("cors.methods", cors_data.get("methods", ["GET", "HEAD", "POST"]))
    )
    bad = [m for m in methods if m not in CORS_METHODS]
    if bad:
        raise _fail("cors.methods", f"unknown method {bad[0]!r}")
    headers = tuple(h.lower() for h in _strings("cors.headers", cors_data.get("headers", [])))
    bad_header = next((h for h in headers if not _TOKEN.fullmatch(h)), None)
    if bad_header is not None:  # these are written into response headers: no CR, LF, colon
        raise _fail("cors.headers", f"{bad_header[:40]!r} is not a header name")
    credentials = cors_data.get("credentials", False)
    if not isinstance(credentials, bool):
        raise _fail("cors.credentials", "must be true or false")
    if credentials and "*" in origins:
        raise _fail("cors.origins", '"*" cannot be combined with credentials = true')
    cors = Cors(
        origins,
        methods,
        headers,
        credentials,
        _int("cors.max_age", cors_data.get("max_age", 600), 0, 86_400),
    )
    return HttpService(
        force_https,
        max_age,
        _bool("hsts.include_subdomains", hsts.get("include_subdomains", False)),
        soft,
        hard,
        float(idle),
        cors,
    )


def parse_address(text: str) -> tuple[str, int]:
    """`IP:PORT` (IPv6 in brackets). Names are refused: the edge never resolves DNS per request."""
    host, sep, port_text = text.strip().rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError:
        raise InvalidInput(
            f"invalid upstream address {text!r}", hint="give IP:PORT, e.g. 127.0.0.1:8080"
        ) from None
    if not sep or not 1 <= port <= 65535:
        raise InvalidInput(f"invalid upstream port in {text!r}", hint="a port is 1-65535")
    return host, port
