"""Deploys as a user lives them, against a real `aero up`: `aero deploy` waits until the release
serves on its machines, a broken deploy fails with the machine's last (scrubbed) log lines while
the previous release keeps serving, rollback, machines on request, the deployed config, and a
test-environment app kept away from production."""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx

from aerodrome.config import Settings
from aerodrome.platform.apps import MACHINE_UIDS
from tests.cli.conftest import Platform
from tests.cli.test_deploy import poll_app

SERVER = """\
import http.server, json, os, socket, sys
for target in filter(None, os.environ.get("PROBE", "").split(",")):  # can it reach these?
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        print("probe", target, "connected", flush=True)
    except OSError as error:
        print("probe", target, "refused", type(error).__name__, flush=True)
if os.environ.get("BREAK"):
    print("boom: cannot start without DATABASE_URL; token", os.environ["API_KEY"], flush=True)
    sys.exit(1)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"version": os.environ["VERSION"],
                           "release": os.environ["AERO_RELEASE"]}).encode()
        self.send_response(200); self.send_header("content-length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""
CANARY = "canary-rollout-7f3e9c1d"


def source(
    tmp_path: Path, app: str, version: str, *, broken: bool = False, probe: str = ""
) -> Path:
    directory = tmp_path / f"{app}-{version}{'-broken' if broken else ''}"
    directory.mkdir()
    (directory / "server.py").write_text(SERVER)
    (directory / "aerodrome.toml").write_text(
        f'app = "{app}"\n'
        f'kill_timeout = "2s"\n'
        f"[env]\n"
        f'VERSION = "{version}"\nPROBE = "{probe}"\n'
        + ('BREAK = "1"\n' if broken else "")
        + "[processes]\n"
        'app = "python3 server.py"\n'
        "[deploy]\n"
        "machines = 2\n"
        "[http_service]\n"
        "[[http_service.checks]]\n"
        'path = "/"\n'
        'grace_period = "1s"\n'
        'timeout = "1s"\n'
    )
    return directory / "aerodrome.toml"


def test_deploy_waits_for_its_machines_and_a_broken_one_rolls_back(
    platform: Platform, tmp_path: Path
) -> None:
    platform.aero("orgs", "create", "roll-org")
    platform.aero("apps", "create", "roll-web", "--org", "roll-org")
    platform.aero("secrets", "set", "-a", "roll-web", "API_KEY=-", "--stage", stdin=CANARY)

    done = platform.aero_json("deploy", "-c", str(source(tmp_path, "roll-web", "one")))
    assert done["release"]["status"] == "complete" and len(done["release"]["machines"]) == 2
    assert done["artifact"]["digest"] == done["release"]["artifact"]  # what was packaged
    assert done["url"] == f"https://roll-web.localhost:{platform.https_port}/"
    machines = platform.aero_json("machines", "list", "-a", "roll-web")
    assert [(m["state"], m["health"], m["release"]) for m in machines] == [
        ("started", "passing", 1),
        ("started", "passing", 1),
    ]
    assert json.loads(poll_app(platform, "roll-web.localhost", lambda b: "one" in b)) == {
        "version": "one",
        "release": "1",
    }

    broken = platform.aero("deploy", "-c", str(source(tmp_path, "roll-web", "two", broken=True)),
                           check=False)  # fmt: skip
    assert broken.returncode == 1
    assert "release 2 of roll-web failed" in broken.stderr
    assert "exited with code 1 before its check passed" in broken.stderr
    assert "the previous release keeps serving" in broken.stderr
    assert "boom: cannot start without DATABASE_URL" in broken.stderr  # its last log lines
    assert CANARY not in broken.stdout + broken.stderr and "[REDACTED]" in broken.stderr
    # A token that may deploy but not read logs or machines still follows the rollout, and
    # says why no log lines are shown rather than leaving them out silently.
    deploy = platform.aero("tokens", "create", "deploy", "-a", "roll-web").stdout.strip()
    narrowed = platform.aero(
        "tokens", "attenuate", "--actions", "apps.read,apps.deploy,secrets.read",
        stdin=deploy,
    ).stdout.strip()  # fmt: skip
    blind = platform.aero("deploy", "-c", str(source(tmp_path, "roll-web", "2b", broken=True)),
                          token=narrowed, check=False)  # fmt: skip
    assert blind.returncode == 1 and "release 3 of roll-web failed" in blind.stderr
    assert "its log lines are not shown: this token may not read logs" in blind.stderr
    releases = platform.aero_json("releases", "-a", "roll-web")
    assert [(r["number"], r["status"]) for r in releases] == [
        (3, "failed"),
        (2, "failed"),
        (1, "complete"),
    ]
    assert [m["release"] for m in platform.aero_json("machines", "list", "-a", "roll-web")] == [
        1,
        1,
    ]
    assert '"one"' in poll_app(platform, "roll-web.localhost", lambda b: "one" in b)

    with Watch(platform, "roll-web.localhost") as watch:  # every request answered, throughout
        platform.aero("deploy", "-c", str(source(tmp_path, "roll-web", "three")))
    assert watch.answers and watch.failures == [], watch.failures
    assert {"one", "three"} >= set(watch.answers) and "three" in watch.answers
    back = platform.aero_json("releases", "rollback", "1", "-a", "roll-web")
    assert back["release"]["number"] == 5 and back["release"]["status"] == "complete"
    served = json.loads(poll_app(platform, "roll-web.localhost", lambda b: '"5"' in b))
    assert served == {"version": "one", "release": "5"}  # release 1's code, as release 5
    shown = platform.aero_json("config", "show", "-a", "roll-web")
    assert shown["release"] == 5 and 'VERSION = "one"' in shown["text"]
    assert shown["machines"] == 2 and shown["kill_timeout"] == 2.0


def test_machines_stop_and_start_on_request(platform: Platform, tmp_path: Path) -> None:
    platform.aero("orgs", "create", "mach-org")
    platform.aero("apps", "create", "mach-web", "--org", "mach-org")
    platform.aero("deploy", "-c", str(source(tmp_path, "mach-web", "one")))
    first, second = platform.aero_json("machines", "list", "-a", "mach-web")
    stopped = platform.aero_json("machines", "stop", first["id"], "-a", "mach-web")
    assert stopped["desired"] == "stopped"
    assert wait_state(platform, "mach-web", first["id"], "stopped")
    upstreams = platform.aero_json("upstreams", "list", "-a", "mach-web")
    assert [u["address"] for u in upstreams] == [second["address"]]  # drained: not routed
    assert '"one"' in poll_app(platform, "mach-web.localhost", lambda b: "one" in b)
    platform.aero("machines", "start", first["id"], "-a", "mach-web")
    assert wait_state(platform, "mach-web", first["id"], "started")
    bad = platform.aero("machines", "stop", "mch_nope", "-a", "mach-web", check=False)
    assert bad.returncode == 1 and "invalid machine id" in bad.stderr
    unknown = platform.aero("deploy", "-c", str(source(tmp_path, "mach-web", "x")), "-a",
                            "no-such-app", check=False)  # fmt: skip
    assert unknown.returncode == 1 and "app 'no-such-app' not found" in unknown.stderr


def wait_state(platform: Platform, app: str, machine: str, state: str) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = {m["id"]: m for m in platform.aero_json("machines", "list", "-a", app)}
        if rows[machine]["state"] == state and (state != "started" or rows[machine]["address"]):
            return True
        time.sleep(0.3)
    return False


def test_a_test_environment_token_cannot_reach_production(
    platform: Platform, tmp_path: Path
) -> None:
    platform.aero("orgs", "create", "env-org")
    platform.aero("apps", "create", "env-prod", "--org", "env-org")
    platform.aero("apps", "create", "env-qa", "--org", "env-org", "--env", "test")
    platform.aero("secrets", "set", "-a", "env-prod", "API_KEY=-", "--stage", stdin=CANARY)
    platform.aero("deploy", "-c", str(source(tmp_path, "env-prod", "prod")))
    qa_token = platform.aero("tokens", "create", "deploy", "-a", "env-qa").stdout.strip()

    prod = source(tmp_path, "env-prod", "hijack")
    refusals = {
        "deploy": platform.aero("deploy", "-c", str(prod), token=qa_token, check=False),
        "secrets": platform.aero("secrets", "list", "-a", "env-prod", token=qa_token, check=False),
        "set": platform.aero(
            "secrets", "set", "-a", "env-prod", "X=-", stdin="y", token=qa_token, check=False
        ),
        "logs": platform.aero("logs", "-a", "env-prod", token=qa_token, check=False),
        "machines": platform.aero(
            "machines", "list", "-a", "env-prod", token=qa_token, check=False
        ),
        "route": platform.aero(
            "upstreams", "add", "127.0.0.1:9", "-a", "env-prod", token=qa_token, check=False
        ),
        "rollback": platform.aero(
            "releases", "rollback", "1", "-a", "env-prod", token=qa_token, check=False
        ),
    }
    for what, result in refusals.items():
        assert result.returncode == 1 and "wrong_app" in result.stderr, (what, result.stderr)
    assert [r["number"] for r in platform.aero_json("releases", "-a", "env-prod")] == [1]

    # Its own app deploys with it, on machines of the test environment's uid, which have no
    # route to this host: not to a production machine, not to the API.
    [prod_machine] = platform.aero_json("machines", "list", "-a", "env-prod")[:1]
    targets = [prod_machine["address"], f"127.0.0.1:{platform.port}"]
    qa = source(tmp_path, "env-qa", "qa", probe=",".join(targets))
    platform.aero("deploy", "-c", str(qa), token=qa_token)
    logged = platform.aero("logs", "-a", "env-qa", "--json", token=qa_token).stdout
    probes = [
        line["message"]
        for line in map(json.loads, logged.splitlines())
        if line["message"].startswith("probe")
    ]
    assert set(probes) == {f"probe {t} refused ConnectionRefusedError" for t in targets}
    for target in targets:  # both listen: anyone else (this test) connects
        host, port = target.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=3).close()
    assert '"qa"' in poll_app(platform, "env-qa.localhost", lambda b: "qa" in b)  # still served
    uids = {
        app: {uid_of(platform, m["id"]) for m in platform.aero_json("machines", "list", "-a", app)}
        for app in ("env-prod", "env-qa")
    }
    assigned = {app: platform.aero_json("apps", "show", app)["machine_uid"] for app in uids}
    assert uids == {app: {uid} for app, uid in assigned.items()}  # each app its own uid
    assert assigned["env-prod"] in MACHINE_UIDS["production"]
    assert assigned["env-qa"] in MACHINE_UIDS["test"]  # the range the firewall rule matches


class Watch:
    """GETs an app through the edge every 20 ms in a thread; records versions and failures."""

    def __init__(self, platform: Platform, name: str) -> None:
        self.url = f"https://127.0.0.1:{platform.https_port}/"
        self.headers = {"host": f"{name}:{platform.https_port}"}
        self.sni = name
        self.trust = ssl.create_default_context(cafile=platform.env["AERO_CA_BUNDLE"])
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(verify=self.trust, timeout=5.0) as client:
            while not self._stop.is_set():
                try:
                    response = client.get(
                        self.url, headers=self.headers, extensions={"sni_hostname": self.sni}
                    )
                    if response.status_code == 200:
                        self.answers.append(response.json()["version"])
                    else:
                        self.failures.append(f"{response.status_code} {response.text[:80]}")
                except httpx.HTTPError as error:
                    self.failures.append(type(error).__name__)
                time.sleep(0.02)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def uid_of(platform: Platform, machine_id: str) -> int:
    """The uid of the process running in a machine's tree (read from /proc)."""
    tree = str(Settings.from_env(platform.data_dir).machines_dir / machine_id)
    for proc in Path("/proc").iterdir():
        try:
            if str((proc / "cwd").readlink()).startswith(tree):
                return os.stat(proc).st_uid
        except OSError:
            continue
    raise AssertionError(f"no process of {machine_id}")
