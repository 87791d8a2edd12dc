"""`aerodrome.toml`: an app's configuration, validated whole before anything happens.

fly.toml's names wherever the meaning is the same (`app`, `primary_region`, `[env]`,
`[processes]`, `[http_service]` with `internal_port`, `force_https`, `[http_service.concurrency]`,
`[[http_service.checks]]`, `[deploy]`), plus aerodrome's own `[http_service.cors]`. Parsing is
the standard library's `tomllib`; every problem is reported with the file, the line and the
key (`aerodrome.toml:12: http_service.internal_port must be 1-65535`), unknown keys with a
did-you-mean, all problems at once.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aerodrome.errors import InvalidInput
from aerodrome.platform.http_policy import HttpService, parse_http_service
from aerodrome.platform.names import RESERVED_APP_NAMES

DEFAULT_FILE = "aerodrome.toml"
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
RESERVED_ENV = ("PORT",)  # set by the platform; AERO_* too
KILL_SIGNALS = ("SIGINT", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL")
MAX_MACHINES = 16  # per app and region, on one host

KEYS: dict[str, set[str]] = {
    "": {
        "app",
        "primary_region",
        "kill_signal",
        "kill_timeout",
        "env",
        "processes",
        "http_service",
        "deploy",
    },
    "http_service": {
        "internal_port",
        "force_https",
        "concurrency",
        "checks",
        "cors",
        "hsts",
        "websocket_idle_timeout",
    },
    "http_service.concurrency": {"type", "soft_limit", "hard_limit"},
    "http_service.checks": {"interval", "timeout", "grace_period", "method", "path"},
    "http_service.cors": {"origins", "methods", "headers", "credentials", "max_age"},
    "http_service.hsts": {"max_age", "include_subdomains"},
    "deploy": {"strategy", "machines"},
}


class ConfigError(InvalidInput):
    code = "invalid_config"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            problems[0]
            if len(problems) == 1
            else f"{len(problems)} problems:\n" + "\n".join(problems),
            hint="fix aerodrome.toml and run `aero config validate`",
        )


@dataclass(frozen=True)
class Check:
    interval: float = 10.0
    timeout: float = 2.0
    grace_period: float = 5.0
    method: str = "GET"
    path: str = "/"


@dataclass(frozen=True)
class HttpServiceConfig:
    internal_port: int
    service: HttpService
    checks: tuple[Check, ...] = ()


@dataclass(frozen=True)
class AppConfig:
    app: str
    primary_region: str = "local"
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, str] = field(default_factory=dict)
    http_service: HttpServiceConfig | None = None
    strategy: str = "rolling"
    machines: int = 1  # aerodrome's own `[deploy] machines`: how many run the release
    kill_signal: str = "SIGINT"  # fly.toml's default
    kill_timeout: float = 5.0

    @property
    def command(self) -> str:
        """The command of the `app` process group (the one the edge routes to)."""
        return self.processes.get("app") or next(iter(self.processes.values()))


def parse_duration(value: Any) -> float | None:
    """`10s`, `500ms`, `1m`, `1.5s`, or a number of milliseconds (fly.toml's convention)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value / 1000.0 if value >= 0 else None
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match:
            return float(match.group(1)) * _UNIT[match.group(2)]
    return None


class _Locator:
    """Finds the line a key is written on, for error messages (tomllib keeps no positions)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def line_of(self, table: str, key: str | None = None, index: int = 0) -> int | None:
        current, seen = "", -1
        header = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")
        for number, line in enumerate(self.lines, start=1):
            if match := header.match(line):
                current = match.group(1).replace(" ", "")
                if current == table:
                    seen += 1
                    if key is None and seen == index:
                        return number
                continue
            if key is None:
                continue
            in_table = current == table and seen == index
            dotted = f"{table}.{key}" if table else key
            if (in_table and re.match(rf"^\s*{re.escape(key)}\s*=", line)) or (
                current == "" and re.match(rf"^\s*{re.escape(dotted)}\s*=", line)
            ):
                return number
        return None


class _Checker:
    def __init__(self, filename: str, text: str) -> None:
        self.filename = filename
        self.locate = _Locator(text)
        self.problems: list[str] = []

    def fail(self, table: str, key: str | None, message: str, index: int = 0) -> None:
        line = self.locate.line_of(table, key, index) or self.locate.line_of(table, None, index)
        where = f"{self.filename}:{line}" if line else self.filename
        name = ".".join(p for p in (table, key) if p)
        self.problems.append(f"{where}: {name} {message}" if name else f"{where}: {message}")

    def unknown_keys(self, table: str, data: dict[str, Any], index: int = 0) -> None:
        allowed = KEYS[table]
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.fail(table, key, f"is not a known key{hint}", index)


def _table(checker: _Checker, data: dict[str, Any], name: str, parent: str = "") -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        checker.fail(parent, name, "must be a table")
        return {}
    return value


def load_config(text: str, filename: str = DEFAULT_FILE) -> AppConfig:
    """Parse and validate; raises `ConfigError` listing every problem with its line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{filename}: not valid TOML: {exc}"]) from None
    checker = _Checker(filename, text)
    checker.unknown_keys("", data)

    app = data.get("app")
    if not isinstance(app, str) or not _NAME.fullmatch(app) or len(app) < 2:
        checker.fail("", "app", "must be the app's name: 2-63 lower-case letters, digits, dashes")
    elif app in RESERVED_APP_NAMES:
        checker.fail("", "app", f"{app!r} is reserved")
    region = data.get("primary_region", "local")
    if not isinstance(region, str) or not _NAME.fullmatch(region):
        checker.fail("", "primary_region", 'must be a region name such as "local"')

    env: dict[str, str] = {}
    for key, value in _table(checker, data, "env").items():
        if not _ENV_NAME.fullmatch(key):
            checker.fail("env", key, "is not a valid environment variable name")
        elif key in RESERVED_ENV or key.startswith("AERO_"):
            checker.fail("env", key, "is set by the platform and cannot be configured")
        elif isinstance(value, bool):
            env[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            env[key] = str(value)
        else:
            checker.fail("env", key, "must be a string, number or boolean")

    processes: dict[str, str] = {}
    for key, value in _table(checker, data, "processes").items():
        if not _NAME.fullmatch(key.lower()) or key != key.lower():
            checker.fail("processes", key, "is not a valid process group name")
        elif not isinstance(value, str) or not value.strip():
            checker.fail("processes", key, "must be the command to run, as a string")
        else:
            processes[key] = value.strip()
    if not processes:
        checker.fail(
            "",
            "processes",
            "is required: the command that runs the app "
            '(for example app = "python -m http.server $PORT")',
        )

    http = _http_service(checker, data)
    deploy = _table(checker, data, "deploy")
    checker.unknown_keys("deploy", deploy)
    strategy = deploy.get("strategy", "rolling")
    if strategy not in ("rolling", "immediate"):
        checker.fail("deploy", "strategy", 'must be "rolling" or "immediate"')
    machines = deploy.get("machines", 1)
    if (
        isinstance(machines, bool)
        or not isinstance(machines, int)
        or not 1 <= machines <= MAX_MACHINES
    ):
        checker.fail("deploy", "machines", f"must be a whole number 1-{MAX_MACHINES}")
        machines = 1
    kill_signal = data.get("kill_signal", "SIGINT")
    if kill_signal not in KILL_SIGNALS:
        checker.fail("", "kill_signal", f"must be one of {', '.join(KILL_SIGNALS)}")
    raw_timeout = data.get("kill_timeout", "5s")
    if isinstance(raw_timeout, int | float) and not isinstance(raw_timeout, bool):
        kill_timeout: float | None = float(raw_timeout)  # fly.toml's plain number is seconds
    else:
        kill_timeout = parse_duration(raw_timeout)
    if kill_timeout is None or not 0 <= kill_timeout <= 300:
        checker.fail("", "kill_timeout", 'must be a duration up to 300s, such as "5s"')
        kill_timeout = 5.0

    if checker.problems:
        raise ConfigError(checker.problems)
    return AppConfig(
        str(app), str(region), env, processes, http, str(strategy), machines,
        str(kill_signal), kill_timeout,
    )  # fmt: skip


def _http_service(checker: _Checker, data: dict[str, Any]) -> HttpServiceConfig | None:
    if "http_service" not in data:
        return None
    section = _table(checker, data, "http_service")
    checker.unknown_keys("http_service", section)
    port = section.get("internal_port", 8080)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        checker.fail("http_service", "internal_port", "must be 1-65535")
    for sub in ("concurrency", "cors", "hsts"):
        if sub in section:
            part = _table(checker, section, sub, "http_service")
            checker.unknown_keys(f"http_service.{sub}", part)
    checks: list[Check] = []
    raw_checks = section.get("checks", [])
    if not isinstance(raw_checks, list):
        checker.fail(
            "http_service", "checks", "must be an array of tables ([[http_service.checks]])"
        )
        raw_checks = []
    for index, raw in enumerate(raw_checks):
        if not isinstance(raw, dict):
            checker.fail("http_service", "checks", "must be an array of tables")
            continue
        checker.unknown_keys("http_service.checks", raw, index)
        values: dict[str, Any] = {}
        for key in ("interval", "timeout", "grace_period"):
            if key in raw:
                seconds = parse_duration(raw[key])
                if seconds is None or seconds > 3600:
                    checker.fail(
                        "http_service.checks",
                        key,
                        'must be a duration such as "10s" or "500ms"',
                        index,
                    )
                else:
                    values[key] = seconds
        method = raw.get("method", "GET")
        if method not in ("GET", "HEAD"):
            checker.fail("http_service.checks", "method", 'must be "GET" or "HEAD"', index)
        path = raw.get("path", "/")
        if not isinstance(path, str) or not path.startswith("/"):
            checker.fail("http_service.checks", "path", 'must be a path such as "/healthz"', index)
        checks.append(Check(method=str(method), path=str(path), **values))
    settings = {
        k: section[k]
        for k in ("force_https", "concurrency", "cors", "hsts", "websocket_idle_timeout")
        if k in section
    }
    for sub in ("concurrency", "cors", "hsts"):  # unknown keys were reported above
        if isinstance(settings.get(sub), dict):
            allowed = KEYS[f"http_service.{sub}"]
            settings[sub] = {k: v for k, v in settings[sub].items() if k in allowed}
    try:
        service = parse_http_service(settings)
    except InvalidInput as error:
        key = error.message.split(":", 1)[0].removeprefix("http_service.")
        table, _, leaf = f"http_service.{key}".rpartition(".")
        checker.fail(table, leaf, error.message.split(": ", 1)[-1])
        service = HttpService()
    return HttpServiceConfig(int(port) if isinstance(port, int) else 8080, service, tuple(checks))


def load_config_file(path: Path) -> AppConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidInput(
            f"cannot read {path}: {exc.strerror}",
            hint="run from the app's directory or pass -c PATH/aerodrome.toml",
            code="invalid_config",
        ) from None
    return load_config(text, path.name)
