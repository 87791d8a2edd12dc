"""The example app that `aero up` deploys on a fresh data directory.

Where it comes from: `examples/hello` of the repository checkout the package runs from, that
is `src/aerodrome/../../examples/hello` (an editable install, which `./dev up` makes). An
installed wheel has no `examples/`: `aero up` says so and carries on without it.

When: `aero up` leaves `DATA/example.pending` when its bootstrap creates the platform admin
(a fresh data directory). The start that gets the platform healthy deploys the example and
removes the file, so later starts never deploy it again; a start stopped before that point
deploys it next time, and one that fails to keeps the file and tries again at the next start.
`aero up --no-example` removes the file without deploying.

How: as the platform admin, through the API, the way a user would: create the org `personal`
and the app `hello` (an existing one is kept), set the secret `SESSION_KEY` to a random value
unless it is already set (staged: it goes out with the first release; the value is generated
here and sent in a request body, never in argv, never printed or logged), then package and
release `examples/hello` with the same `publish` as `aero deploy`. The agent rolls the release
out asynchronously; the app answers at `https://hello.DOMAIN` a few seconds later.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

from aerodrome.cli.client import Client
from aerodrome.cli.publish import publish
from aerodrome.errors import AeroError
from aerodrome.runtime.config import DEFAULT_FILE, load_config_file

ORG = "personal"
SECRET_NAME = "SESSION_KEY"  # noqa: S105 (a name; the value is random, made below)
PENDING = "example.pending"
REPO = Path(__file__).resolve().parents[2]  # src/aerodrome/example.py -> the checkout


def example_dir(repo: Path | None = None) -> Path:
    return (repo or REPO) / "examples" / "hello"


def mark_pending(data_dir: Path) -> None:
    (data_dir / PENDING).write_text("aero up deploys examples/hello at its next start\n")


def is_pending(data_dir: Path) -> bool:
    return (data_dir / PENDING).exists()


def clear_pending(data_dir: Path) -> None:
    (data_dir / PENDING).unlink(missing_ok=True)


@dataclass(frozen=True)
class Deployed:
    app: str
    org: str
    release: int
    url: str
    curl: str

    def view(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "org": self.org,
            "release": self.release,
            "url": self.url,
            "curl": self.curl,
        }


def deploy_example(
    api: Client,
    *,
    domain: str,
    https_port: int,
    edge_address: str,
    ca_bundle: Path | None,
    exclude_dirs: list[Path],
    source: Path | None = None,
) -> Deployed:
    """Deploy examples/hello (see the module doc). Raises `AeroError` with code
    `example_missing` when there is no checkout to deploy from, or what the API answered."""
    source = source or example_dir()
    config_file = source / DEFAULT_FILE
    if not config_file.is_file():
        raise AeroError(
            f"no example app at {source}",
            hint="it ships with a repository checkout (./dev up); `aero deploy` your own app",
            code="example_missing",
        )
    config = load_config_file(config_file)
    app = config.app
    _create_if_missing(api, "/v1/orgs", {"slug": ORG})
    _create_if_missing(api, f"/v1/orgs/{ORG}/apps", {"name": app})
    if not any(s["name"] == SECRET_NAME for s in api.get(f"/v1/apps/{app}/secrets")):
        api.post(
            f"/v1/apps/{app}/secrets",
            json={"values": {SECRET_NAME: token_urlsafe(32)}, "stage": True, "expect_version": 0},
        )
    published = publish(api, app, source, config_file.read_text(), exclude_dirs=exclude_dirs)
    host = f"{app}.{domain}"
    port = "" if https_port == 443 else f":{https_port}"
    url = f"https://{host}{port}/"
    curl = ["curl"]
    if ca_bundle is not None:
        curl += ["--cacert", str(ca_bundle)]
    if domain == "localhost" or domain.endswith(".localhost"):  # not every resolver knows it
        curl += ["--resolve", f"{host}:{https_port}:{edge_address}"]
    return Deployed(app, ORG, int(published.release["number"]), url, shlex.join([*curl, url]))


def _create_if_missing(api: Client, path: str, body: dict[str, str]) -> None:
    try:
        api.post(path, json=body)
    except AeroError as error:
        if error.code != "conflict":
            raise
