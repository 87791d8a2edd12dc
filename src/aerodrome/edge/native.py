"""The edge's request path, compiled with mypyc.

The modules in `MODULES` are plain, fully typed Python. mypyc (it comes with mypy) compiles
them to C extension modules: attribute access and calls between them become C, which takes
about a third off the edge's own work per request (`bench/edge.py`; docs/decisions/0008).

`./dev` builds them into the virtualenv (`python -m aerodrome.edge.build`), never into the
source tree. `aerodrome.edge` puts the build in front of its own modules only while the
build's manifest names the very sources on disk (SHA-256 of each) and this interpreter's
extension suffix: an edited module runs as the Python it now is, never as a stale build.
Without a build (no C compiler, or `AERO_EDGE_NATIVE=0`) the same modules run as Python.

The modules in `C_MODULES` are written in C and built alongside: each does one loop over bytes
that compiled Python cannot make fast, and has a Python twin the edge uses without a build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
MODULES = ("cors", "routes", "tlsstream", "upstream", "proxy", "worker")
# Written in C, built alongside (each is a `<name>.c` here): the request path's few loops
# over bytes that compiled Python cannot make fast (see each one's Python twin).
C_MODULES = ("_heads",)
# What the compiled modules import from the rest of aerodrome: mypyc builds in the types it
# declares, so a build is stale when any of these changes too.
DEPENDENCIES = ("edge/tls.py", "platform/http_service.py", "platform/http_policy.py", "ids.py")
GROUP = "aerodrome.edge._compiled"  # the shared runtime: aerodrome/edge/_compiled__mypyc.*.so
MANIFEST = "manifest.json"


def build_root() -> Path:
    """Where the build lives: `$AERO_EDGE_NATIVE_DIR`, or beside this interpreter's
    packages (`<venv>/aerodrome-native`)."""
    configured = os.environ.get("AERO_EDGE_NATIVE_DIR")
    return Path(configured) if configured else Path(sys.prefix) / "aerodrome-native"


def fingerprint() -> dict[str, object]:
    """What a build must match to be used: every compiled source and what they import from
    aerodrome, byte for byte, and the interpreter's ABI (its extension suffix)."""
    files = [f"edge/{name}.py" for name in MODULES] + [f"edge/{name}.c" for name in C_MODULES]
    files += list(DEPENDENCIES)
    root = PACKAGE_DIR.parent
    sources = {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in files}
    return {"ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"), "sources": sources}


def compiled_dir() -> Path | None:
    """The directory holding a build that matches the sources, or None."""
    if os.environ.get("AERO_EDGE_NATIVE", "1") == "0":
        return None
    directory = build_root() / "aerodrome" / "edge"
    try:
        manifest = json.loads((build_root() / MANIFEST).read_text())
        current = fingerprint()
    except (OSError, ValueError):
        return None
    if manifest != current:
        return None
    # All or nothing: a compiled module next to a Python one of the same group would break.
    suffix = str(current["ext_suffix"])
    names = (*MODULES, *C_MODULES, GROUP.rsplit(".", 1)[1] + "__mypyc")
    return directory if all((directory / f"{n}{suffix}").is_file() for n in names) else None


def is_compiled() -> bool:
    """Whether the request path in this process runs compiled."""
    from aerodrome.edge import proxy

    return not proxy.__file__.endswith(".py")


def build(root: Path, *, quiet: bool = True) -> None:
    """Compile `MODULES` into `root` and write its manifest last (a build cut short is never
    used). Raises `RuntimeError` with the compiler's output when compiling fails."""
    if root.exists() and any(root.iterdir()) and not (root / MANIFEST).exists():
        raise RuntimeError(f"{root} holds something other than a build: not replacing it")
    wanted = fingerprint()
    with tempfile.TemporaryDirectory(prefix="aero-native-") as tmp:
        work = Path(tmp)
        script = work / "setup.py"
        sources = [str(PACKAGE_DIR / f"{name}.py") for name in MODULES]
        c_modules = [
            (f"aerodrome.edge.{name}", str(PACKAGE_DIR / f"{name}.c")) for name in C_MODULES
        ]
        script.write_text(
            "import sys\n"
            "from setuptools import Extension, setup\n"
            "from mypyc.build import mypycify\n"
            f"c_modules = [Extension(name, [source], extra_compile_args=['-O2'])"
            f" for name, source in {c_modules!r}]\n"
            f"setup(name='aerodrome-edge-native', ext_modules=mypycify({sources!r}, "
            f"opt_level='3', group_name={GROUP!r}, target_dir={str(work / 'c')!r}) + c_modules, "
            f"script_args=['build_ext', '--build-lib', {str(work / 'lib')!r}, "
            f"'--build-temp', {str(work / 'tmp')!r}])\n"
        )
        # mypyc type-checks the modules first, with the project's mypy settings.
        project = PACKAGE_DIR.parent.parent.parent
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=project if (project / "pyproject.toml").exists() else work,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError((done.stdout + done.stderr).strip()[-4000:])
        built = sorted((work / "lib" / "aerodrome" / "edge").glob("*.so"))
        if len(built) != len(MODULES) + len(C_MODULES) + 1:  # and the group's shared runtime
            raise RuntimeError(f"built {[p.name for p in built]}, not {MODULES + C_MODULES}")
        if fingerprint() != wanted:
            raise RuntimeError("the sources changed while compiling; run the build again")
        staging = root.with_name(root.name + ".new")
        old = root.with_name(root.name + ".old")
        for leftover in (staging, old):
            shutil.rmtree(leftover, ignore_errors=True)
        target = staging / "aerodrome" / "edge"
        target.mkdir(parents=True)
        for path in built:
            shutil.copy2(path, target / path.name)
        (staging / MANIFEST).write_text(json.dumps(wanted, indent=2) + "\n")
        if root.exists():
            root.rename(old)  # a process starting now finds no build and runs as Python
        staging.rename(root)
        shutil.rmtree(old, ignore_errors=True)
    if not quiet:
        print(f"compiled the edge's request path into {root}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aerodrome.edge.build",
        description="Compile the edge's request path with mypyc (a no-op when up to date).",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument(
        "--required",
        action="store_true",
        help="exit 1 when compiling fails (by default the edge then runs as Python)",
    )
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    args = parser.parse_args(argv)
    root = build_root()
    outcome: dict[str, object] = {"directory": str(root)}
    if not args.force and compiled_dir() is not None:
        outcome["status"] = "up to date"
    else:
        if not args.json:
            print("compiling the edge's request path with mypyc (about 30 s)…", file=sys.stderr)
        started = time.monotonic()
        try:
            build(root)
        except (RuntimeError, OSError) as exc:
            outcome.update(status="failed", error=str(exc))
        else:
            outcome.update(status="built", seconds=round(time.monotonic() - started, 1))
    if args.json:
        print(json.dumps(outcome))
    elif outcome["status"] == "failed":
        print(
            f"{outcome['error']}\n\ncould not compile the edge's request path; it runs as "
            "Python (slower). Install a C compiler and Python's headers (Debian: "
            "apt install gcc python3-dev) and run `python -m aerodrome.edge.build` again.",
            file=sys.stderr,
        )
    elif outcome["status"] == "built":
        print(f"compiled in {outcome['seconds']} s into {root}", file=sys.stderr)
    return 1 if outcome["status"] == "failed" and args.required else 0


if __name__ == "__main__":
    sys.exit(main())
