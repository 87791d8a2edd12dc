"""`aerodrome.toml` as a user writes it: fly.toml's names, every problem with its line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aerodrome.runtime.config import ConfigError, load_config, parse_duration

GOOD = """\
app = "web"
primary_region = "local"

[env]
GREETING = "hello"
WORKERS = 4
DEBUG = false

[processes]
app = "python -m http.server $PORT"

[http_service]
internal_port = 8080
force_https = true

[http_service.concurrency]
type = "requests"
soft_limit = 20
hard_limit = 25

[[http_service.checks]]
interval = "10s"
timeout = "2s"
grace_period = "5s"
method = "GET"
path = "/healthz"

[[http_service.checks]]
path = "/ready"
interval = 500

[http_service.cors]
origins = ["https://ui.example.com"]
credentials = true

[deploy]
strategy = "rolling"
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as error:
        load_config(text)
    return error.value.problems


def test_a_fly_style_config_is_read_whole() -> None:
    config = load_config(GOOD)
    assert config.app == "web" and config.primary_region == "local"
    assert config.env == {"GREETING": "hello", "WORKERS": "4", "DEBUG": "false"}
    assert config.command == "python -m http.server $PORT"
    assert config.http_service is not None
    assert config.http_service.internal_port == 8080
    first, second = config.http_service.checks
    assert (first.interval, first.timeout, first.grace_period, first.path) == (10, 2, 5, "/healthz")
    assert second.interval == 0.5  # fly.toml's bare numbers are milliseconds
    service = config.http_service.service
    assert service.force_https and (service.soft_limit, service.hard_limit) == (20, 25)
    assert service.cors.origins == ("https://ui.example.com",) and service.cors.credentials
    assert config.strategy == "rolling"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("internal_port = 8080", "internal_port = 70000"),
            "aerodrome.toml:13: http_service.internal_port must be 1-65535",
        ),
        (
            ('strategy = "rolling"', 'strategy = "canary"'),
            'aerodrome.toml:37: deploy.strategy must be "rolling" or "immediate"',
        ),
        (
            ("soft_limit = 20", "soft_limt = 20"),
            "aerodrome.toml:18: http_service.concurrency.soft_limt is not a known key "
            "(did you mean 'soft_limit'?)",
        ),
        (
            ('path = "/ready"', 'path = "ready"'),
            'aerodrome.toml:29: http_service.checks.path must be a path such as "/healthz"',
        ),
        (
            ('interval = "10s"', 'interval = "ten seconds"'),
            'aerodrome.toml:22: http_service.checks.interval must be a duration such as "10s" or '
            '"500ms"',
        ),
        (
            ('GREETING = "hello"', 'PORT = "9"'),
            "aerodrome.toml:5: env.PORT is set by the platform and cannot be configured",
        ),
        (
            ('app = "web"', 'app = "Web App"'),
            "aerodrome.toml:1: app must be the app's name: 2-63 lower-case letters, digits, dashes",
        ),
        (
            ("[deploy]", "[deploi]"),
            "aerodrome.toml: deploi is not a known key (did you mean 'deploy'?)",
        ),
        (
            ('origins = ["https://ui.example.com"]', 'origins = ["ui.example.com"]'),
            "http_service.cors.origins 'ui.example.com' is not an origin",
        ),
    ],
)
def test_each_problem_names_the_line_and_the_key(change: tuple[str, str], expected: str) -> None:
    found = problems(GOOD.replace(*change))
    assert any(expected in p for p in found), found


def test_all_problems_are_reported_at_once() -> None:
    text = GOOD.replace("internal_port = 8080", "internal_port = 0").replace(
        'strategy = "rolling"', 'strategy = "x"'
    )
    assert len(problems(text)) == 2


def test_missing_processes_and_bad_toml_are_clear() -> None:
    assert any("processes is required" in p for p in problems('app = "web"\n'))
    assert any("not valid TOML" in p for p in problems('app = "web\n'))


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("10s", 10),
        ("500ms", 0.5),
        ("1m", 60),
        ("1.5s", 1.5),
        (2000, 2.0),
        ("soon", None),
        (True, None),
        (-5, None),
    ],
)
def test_durations(value: object, seconds: float | None) -> None:
    assert parse_duration(value) == seconds


def test_aero_config_validate(tmp_path: Path) -> None:
    good, bad = tmp_path / "aerodrome.toml", tmp_path / "bad.toml"
    good.write_text(GOOD)
    bad.write_text(GOOD.replace("internal_port = 8080", "internal_port = 70000"))
    aero = [sys.executable, "-m", "aerodrome.cli.main", "config", "validate"]
    ok = subprocess.run([*aero, "-c", str(good)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "valid" in ok.stdout
    failed = subprocess.run([*aero, "-c", str(bad)], capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1
    assert "bad.toml:13: http_service.internal_port must be 1-65535" in failed.stderr
    missing = subprocess.run(
        [*aero, "-c", str(tmp_path / "nope.toml")], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 1 and "cannot read" in missing.stderr


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("5", 5.0), ("1.5", 1.5), ('"750ms"', 0.75), ('"2s"', 2.0)],
)
def test_kill_timeout_numbers_are_seconds(written: str, seconds: float) -> None:
    assert load_config(f"kill_timeout = {written}\n" + GOOD).kill_timeout == seconds


@pytest.mark.parametrize("written", ["true", "-1", "301", '"soon"'])
def test_a_bad_kill_timeout_is_refused(written: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(f"kill_timeout = {written}\n" + GOOD)
    assert any("kill_timeout" in problem for problem in error.value.problems)
