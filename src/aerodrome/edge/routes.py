"""The route table: built from the store once per revision (`state.compile_routes`), or
from a static file, and swapped atomically.

Connections hold a reference to the table they started with only for the request at hand;
each new request reads the worker's current table. A swap never touches open connections.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final

from aerodrome.edge.cors import CorsPolicy
from aerodrome.platform.http_service import HttpService


def log_fragment(app_label: bytes) -> bytes:
    """The part of an access-log line around the app's name (the rest: `Worker.record`)."""
    return b'", "app": "%b", "method": "' % app_label


NO_APP_LOG: Final = log_fragment(b"-")  # for a request no route took


@dataclass(frozen=True)
class EdgeConfig:
    """Process-wide settings of the edge (from `aero up` flags)."""

    domain: str = "localhost"
    https_port: int = 8443
    http_port: int = 8080
    region: str = "local"
    api_upstream: tuple[str, int] | None = None
    trusted_proxies: frozenset[str] = frozenset()
    header_timeout: float = 10.0
    idle_timeout: float = 75.0
    upstream_timeout: float = 60.0
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 100 * 1024 * 1024
    queue_timeout: float = 10.0
    default_hostname: str | None = None

    def origin(self, hostname: str) -> str:
        port = "" if self.https_port == 443 else f":{self.https_port}"
        return f"https://{hostname}{port}"


@dataclass(frozen=True, eq=False)
class Route:
    hostname: str
    app: str
    app_id: str
    upstreams: tuple[tuple[str, int], ...]
    service: HttpService
    cors: CorsPolicy
    https_location: bytes  # b"https://host[:port]", the prefix of redirects
    # The whole `strict-transport-security` line, ready to append to a response head over
    # TLS (empty when HSTS is off): compiled once per revision, not per response.
    hsts_line: bytes = b""
    # The app's name as it goes into the access log's JSON string (escaped once, here), and
    # the part of a log line around it.
    app_label: bytes = b""
    log_app: bytes = NO_APP_LOG
    hard_limit: int = 0  # `service.hard_limit`, read per request: a field of this native class


@dataclass(frozen=True, eq=False)
class RouteTable:
    revision: int
    routes: dict[str, Route]
    http01: dict[str, bytes] = field(default_factory=dict)


def build_route(
    config: EdgeConfig,
    hostname: str,
    app: str,
    app_id: str,
    upstreams: tuple[tuple[str, int], ...],
    service: HttpService,
) -> Route:
    own = config.origin(hostname)
    hsts_line = b""
    if service.hsts_max_age:
        value = f"max-age={service.hsts_max_age}"
        if service.hsts_include_subdomains:
            value += "; includeSubDomains"
        hsts_line = f"strict-transport-security: {value}\r\n".encode()
    label = json.dumps(app)[1:-1].encode()
    return Route(
        hostname=hostname,
        app=app,
        app_id=app_id,
        upstreams=upstreams,
        service=service,
        cors=CorsPolicy(service.cors, (own,)),
        https_location=own.encode(),
        hsts_line=hsts_line,
        app_label=label,
        log_app=log_fragment(label),
        hard_limit=service.hard_limit,
    )
