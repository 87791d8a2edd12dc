"""Deploy artifacts: what gets packaged (never secrets), determinism, limits, safe unpacking."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aerodrome.errors import InvalidInput
from aerodrome.runtime.artifact import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_FILES,
    Artifact,
    ArtifactTooLarge,
    DigestMismatch,
    UnsafeArtifact,
    build_artifact,
    store_artifact,
    unpack_artifact,
)

Tree = dict[str, bytes]


def make_tree(root: Path, tree: Tree, executable: tuple[str, ...] = ()) -> Path:
    """Write `tree` (relative path -> content; a path ending in "/" is an empty dir)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in tree.items():
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(0o755 if rel in executable else 0o644)
    return root


def members(artifact: Artifact) -> list[str]:
    with tarfile.open(artifact.path, "r:gz") as tar:
        return tar.getnames()


def files_in(artifact: Artifact) -> set[str]:
    with tarfile.open(artifact.path, "r:gz") as tar:
        return {m.name for m in tar.getmembers() if not m.isdir()}


@pytest.fixture(autouse=True)
def private_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Builds write their temporary file here, so a test can see that nothing was left."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    yield scratch


@pytest.fixture
def built() -> Iterator[list[Artifact]]:
    """Collects artifacts so their temporary files are removed after the test."""
    artifacts: list[Artifact] = []
    yield artifacts
    for artifact in artifacts:
        artifact.discard()


def build(built: list[Artifact], source: Path, **kwargs: object) -> Artifact:
    artifact = build_artifact(source, **kwargs)  # type: ignore[arg-type]
    built.append(artifact)
    return artifact


APP: Tree = {
    "app.py": b"print('hello')\n",
    "run.sh": b"#!/bin/sh\nexec python app.py\n",
    "static/style.css": b"body{}\n",
    "static/img/logo.svg": b"<svg/>\n",
    "empty/": b"",
}


# Determinism


def test_same_tree_same_bytes_and_digest(tmp_path: Path, built: list[Artifact]) -> None:
    source = make_tree(tmp_path / "app", APP, executable=("run.sh",))
    first = build(built, source)
    second = build(built, source)
    assert first == second
    assert first.path != second.path
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.digest == "sha256:" + hashlib.sha256(first.path.read_bytes()).hexdigest()
    assert first.size == first.path.stat().st_size
    assert first.files == len(members(first)) == 7  # 5 files and dirs + static/img, empty
    assert first.unpacked_bytes == sum(len(v) for v in APP.values())


def test_mtimes_permissions_and_creation_order_do_not_change_the_digest(
    tmp_path: Path, built: list[Artifact]
) -> None:
    one = make_tree(tmp_path / "one", APP, executable=("run.sh",))
    two = make_tree(tmp_path / "two", dict(reversed(list(APP.items()))), executable=("run.sh",))
    for path in two.rglob("*"):
        os.utime(path, (1_000_000_000, 1_234_567_890), follow_symlinks=False)
    (two / "app.py").chmod(0o600)  # not executable: still packaged as 0o644
    (two / "run.sh").chmod(0o700)  # executable: still 0o755
    assert build(built, one).digest == build(built, two).digest


def test_content_and_executable_bit_change_the_digest(
    tmp_path: Path, built: list[Artifact]
) -> None:
    source = make_tree(tmp_path / "app", APP, executable=("run.sh",))
    before = build(built, source).digest
    (source / "app.py").chmod(0o755)
    after_chmod = build(built, source).digest
    (source / "static/style.css").write_bytes(b"body{color:red}\n")
    after_edit = build(built, source).digest
    assert len({before, after_chmod, after_edit}) == 3


def test_metadata_is_normalized(tmp_path: Path, built: list[Artifact]) -> None:
    source = make_tree(tmp_path / "app", APP, executable=("run.sh",))
    artifact = build(built, source)
    raw = artifact.path.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert raw[3] & 0x08 == 0, "no file name in the gzip header"
    assert raw[4:8] == b"\0\0\0\0", "gzip mtime is 0"
    with tarfile.open(artifact.path, "r:gz") as tar:
        got = tar.getmembers()
    assert [m.name for m in got] == sorted(m.name for m in got)
    for m in got:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert m.type in (tarfile.DIRTYPE, tarfile.REGTYPE)
    modes = {m.name: m.mode for m in got}
    assert modes["app.py"] == 0o644
    assert modes["run.sh"] == 0o755
    assert modes["static"] == 0o755


# What is packaged


def test_aeroignore_rules(tmp_path: Path, built: list[Artifact]) -> None:
    source = make_tree(
        tmp_path / "app",
        {
            **APP,
            ".aeroignore": b"# comment\n*.log\nnode_modules/\n/docs\nbuild/*\n!build/keep.txt\n"
            b"!important.log\n",
            "debug.log": b"x",
            "important.log": b"keep",
            "sub/trace.log": b"x",
            "node_modules/pkg/index.js": b"x",
            "docs/readme.md": b"x",
            "sub/docs/page.md": b"anchored /docs leaves this one",
            "build/out.bin": b"x",
            "build/keep.txt": b"keep",
        },
    )
    got = files_in(build(built, source))
    assert got == {
        ".aeroignore",
        "app.py",
        "run.sh",
        "static/style.css",
        "static/img/logo.svg",
        "important.log",
        "sub/docs/page.md",
        "build/keep.txt",
    }


def test_file_under_an_excluded_directory_cannot_be_reincluded(
    tmp_path: Path, built: list[Artifact]
) -> None:
    """As in git: the directory is pruned, so `!build/keep.txt` after `build/` has no effect."""
    source = make_tree(
        tmp_path / "app",
        {"app.py": b"", ".aeroignore": b"build/\n!build/keep.txt\n", "build/keep.txt": b""},
    )
    assert "build/keep.txt" not in files_in(build(built, source))


def test_dockerignore_is_used_without_aeroignore(tmp_path: Path, built: list[Artifact]) -> None:
    source = make_tree(
        tmp_path / "app", {**APP, ".dockerignore": b"static/\n*.sh\n", "tests/t.py": b""}
    )
    assert files_in(build(built, source)) == {".dockerignore", "app.py", "tests/t.py"}


def test_aeroignore_wins_over_dockerignore(tmp_path: Path, built: list[Artifact]) -> None:
    source = make_tree(
        tmp_path / "app",
        {**APP, ".dockerignore": b"static/\n", ".aeroignore": b"tests/\n", "tests/t.py": b""},
    )
    got = files_in(build(built, source))
    assert "static/style.css" in got
    assert "tests/t.py" not in got


def test_invalid_pattern_names_the_line(tmp_path: Path) -> None:
    source = make_tree(tmp_path / "app", {"app.py": b"", ".aeroignore": b"*.log\n!\n"})
    with pytest.raises(InvalidInput, match=r"\.aeroignore:2"):
        build_artifact(source)


ENV_FILES: Tree = {
    ".env": b"SECRET=top-level",
    ".env.production": b"SECRET=prod",
    ".env.local": b"SECRET=local",
    "sub/.env": b"SECRET=nested",
    "sub/deeper/.env.test": b"SECRET=nested-test",
    ".env.example": b"SECRET=example",
    "svc/.env/bin/python": b"SECRET in a virtualenv called .env",
}


@pytest.mark.parametrize(
    "ignore",
    [
        None,
        b"",
        b"!.env\n!.env.*\n!**/.env\n!**/.env.*\n!*\n",
        b"*\n!*\n!.env\n",
    ],
    ids=["no-ignore-file", "empty", "negations", "ignore-all-then-negate"],
)
def test_env_files_are_never_packaged(
    tmp_path: Path, built: list[Artifact], ignore: bytes | None
) -> None:
    tree = {**APP, **ENV_FILES}
    if ignore is not None:
        tree[".aeroignore"] = ignore
    source = make_tree(tmp_path / "app", tree)
    artifact = build(built, source)
    names = members(artifact)
    assert not [n for n in names if any(p == ".env" or p.startswith(".env.") for p in n.split("/"))]
    assert b"SECRET" not in gzip.decompress(artifact.path.read_bytes())


def test_git_data_dir_caches_and_exclude_dirs_are_never_packaged(
    tmp_path: Path, built: list[Artifact]
) -> None:
    source = make_tree(
        tmp_path / "app",
        {
            **APP,
            ".aeroignore": b"!.git\n!.aerodrome/\n!*.pyc\n!__pycache__/\n",
            ".git/config": b"[core]",
            "vendor/lib/.git": b"gitdir: ../../.git/modules/lib",
            ".aerodrome/root.key": b"k" * 32,
            "sub/.aerodrome/x": b"",
            "pkg/__pycache__/mod.cpython-311.pyc": b"",
            "pkg/mod.py": b"",
            "pkg/old.pyc": b"",
            "platform-data/db.sqlite": b"data",
            "keep/platform-data/ok.txt": b"same name elsewhere is kept",
        },
    )
    # A different spelling of the same directory still matches (compared by inode).
    spelled = tmp_path / "app" / "pkg" / ".." / "platform-data"
    got = files_in(build(built, source, exclude_dirs=[spelled, tmp_path / "missing"]))
    assert got == {
        ".aeroignore",
        "app.py",
        "run.sh",
        "static/style.css",
        "static/img/logo.svg",
        "pkg/mod.py",
        "keep/platform-data/ok.txt",
    }


def test_source_that_is_the_data_dir_is_refused(tmp_path: Path) -> None:
    source = make_tree(tmp_path / "data", {"db.sqlite": b""})
    with pytest.raises(InvalidInput, match="data directory"):
        build_artifact(source, exclude_dirs=[source])


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        build_artifact(tmp_path / "nope")


# Symlinks and special files


def test_relative_symlinks_inside_are_stored_as_links(
    tmp_path: Path, built: list[Artifact]
) -> None:
    source = make_tree(tmp_path / "app", APP)
    (source / "current.css").symlink_to("static/style.css")
    (source / "static/img/up").symlink_to("../style.css")
    (source / "assets").symlink_to("static")
    (source / "dangling").symlink_to("nothing-here")
    with tarfile.open(build(built, source).path, "r:gz") as tar:
        links = {m.name: m.linkname for m in tar.getmembers() if m.issym()}
    assert links == {
        "current.css": "static/style.css",
        "static/img/up": "../style.css",
        "assets": "static",
        "dangling": "nothing-here",
    }


@pytest.mark.parametrize(
    "target",
    ["/etc/passwd", "../outside.txt", "static/../../outside.txt", "OUTSIDE_ABS"],
)
def test_symlink_leading_outside_is_refused(
    tmp_path: Path, private_tempdir: Path, target: str
) -> None:
    (tmp_path / "outside.txt").write_text("host file")
    source = make_tree(tmp_path / "app", APP)
    if target == "OUTSIDE_ABS":  # absolute, even when it points inside the app
        target = str(source / "app.py")
    (source / "link").symlink_to(target)
    with pytest.raises(UnsafeArtifact, match="symlink link points outside"):
        build_artifact(source)
    assert list(private_tempdir.iterdir()) == []


def test_symlink_through_symlinked_dir_that_escapes_is_refused(tmp_path: Path) -> None:
    """`a/b/d/../x` reads as `a/b/x`, but `a/b/d` leads to the app root, so on disk it is
    the `x` beside the app directory."""
    (tmp_path / "x").write_text("host file")
    source = make_tree(tmp_path / "app", {"a/b/": b""})
    (source / "a/b/d").symlink_to("../..")
    (source / "e").symlink_to("a/b/d/../x")
    with pytest.raises(UnsafeArtifact, match="symlink e points outside"):
        build_artifact(source)


def test_escaping_symlink_is_fine_when_ignored(tmp_path: Path, built: list[Artifact]) -> None:
    source = make_tree(tmp_path / "app", {**APP, ".aeroignore": b"link\n"})
    (source / "link").symlink_to("/etc")
    assert "link" not in members(build(built, source))


def test_fifo_is_refused_unless_ignored(tmp_path: Path, built: list[Artifact]) -> None:
    source = make_tree(tmp_path / "app", APP)
    os.mkfifo(source / "pipe")
    with pytest.raises(InvalidInput, match="pipe is not a regular file") as caught:
        build_artifact(source)
    assert caught.value.code == "unsupported_file"
    (source / ".aeroignore").write_text("pipe\n")
    assert "pipe" not in members(build(built, source))


def test_non_utf8_name_is_refused(tmp_path: Path) -> None:
    source = make_tree(tmp_path / "app", APP)
    fd = os.open(os.fsencode(source) + b"/bad-\xff.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)
    with pytest.raises(InvalidInput, match="not valid UTF-8") as caught:
        build_artifact(source)
    assert caught.value.code == "unsupported_file"


# Limits


def test_default_limits_are_the_documented_ones() -> None:
    assert DEFAULT_MAX_BYTES == 256 * 1024 * 1024
    assert DEFAULT_MAX_FILES == 20_000


def test_too_many_bytes_is_a_clear_error_and_writes_nothing(
    tmp_path: Path, private_tempdir: Path
) -> None:
    source = make_tree(tmp_path / "app", APP)
    with (source / "model.bin").open("wb") as fh:  # sparse: 300 MiB that cost no disk
        fh.truncate(300 * 1024 * 1024)
    with pytest.raises(ArtifactTooLarge) as caught:
        build_artifact(source)
    err = caught.value
    assert isinstance(err, InvalidInput)
    assert err.code == "artifact_too_large"
    assert "256 MiB" in err.message
    assert "300 MiB" in err.message
    assert ".aeroignore" in err.hint
    assert "model.bin" in err.hint  # the largest thing seen is named
    assert list(private_tempdir.iterdir()) == []


def test_too_many_files_is_a_clear_error(tmp_path: Path, private_tempdir: Path) -> None:
    source = make_tree(tmp_path / "app", {f"data/{i:03}.txt": b"x" for i in range(30)})
    with pytest.raises(ArtifactTooLarge, match=r"more than 20 files.*found 21") as caught:
        build_artifact(source, max_files=20)
    assert caught.value.to_dict()["error"]["code"] == "artifact_too_large"
    assert ".aeroignore" in caught.value.hint
    assert list(private_tempdir.iterdir()) == []


def test_hint_names_the_ignore_file_in_use(tmp_path: Path) -> None:
    source = make_tree(tmp_path / "app", {**APP, ".dockerignore": b"*.log\n"})
    with pytest.raises(ArtifactTooLarge) as caught:
        build_artifact(source, max_bytes=10)
    assert ".dockerignore" in caught.value.hint


def test_ignored_files_do_not_count_against_the_limits(
    tmp_path: Path, built: list[Artifact]
) -> None:
    source = make_tree(
        tmp_path / "app",
        {**APP, ".aeroignore": b"cache/\n", **{f"cache/{i}": b"x" * 100 for i in range(50)}},
    )
    artifact = build(built, source, max_files=10, max_bytes=200)
    assert artifact.files == 8


def test_progress_reports_bytes(tmp_path: Path, built: list[Artifact]) -> None:
    source = make_tree(tmp_path / "app", APP)
    calls: list[tuple[int, int]] = []
    artifact = build(built, source, progress=lambda done, total: calls.append((done, total)))
    total = artifact.unpacked_bytes
    assert calls[0] == (0, total)
    assert calls[-1] == (total, total)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


# Store


def test_store_is_content_addressed_private_and_idempotent(
    tmp_path: Path, built: list[Artifact]
) -> None:
    source = make_tree(tmp_path / "app", APP)
    artifact = build(built, source)
    store = tmp_path / "artifacts"
    path = store_artifact(artifact, store)
    assert path == store / "sha256" / f"{artifact.digest.removeprefix('sha256:')}.tar.gz"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == artifact.path.read_bytes()
    before = path.stat()

    again = build(built, source)
    assert store_artifact(again, store) == path
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p.name for p in (store / "sha256").iterdir()] == [path.name]


def test_store_replaces_a_corrupt_copy_and_refuses_a_tampered_build(
    tmp_path: Path, built: list[Artifact]
) -> None:
    artifact = build(built, make_tree(tmp_path / "app", APP))
    store = tmp_path / "artifacts"
    path = store_artifact(artifact, store)
    path.write_bytes(b"corrupt")
    assert store_artifact(artifact, store).read_bytes() == artifact.path.read_bytes()

    other = build(built, make_tree(tmp_path / "other", {"x": b"y"}))
    other.path.write_bytes(b"tampered after the build")
    with pytest.raises(DigestMismatch):
        store_artifact(other, store)
    assert sorted(p.name for p in (store / "sha256").iterdir()) == [path.name]


def test_artifact_context_manager_removes_the_temporary_file(tmp_path: Path) -> None:
    with build_artifact(make_tree(tmp_path / "app", APP)) as artifact:
        assert artifact.path.exists()
    assert not artifact.path.exists()


# Round trip


def test_round_trip_reproduces_files_modes_and_links(tmp_path: Path, built: list[Artifact]) -> None:
    source = make_tree(tmp_path / "app", APP, executable=("run.sh",))
    (source / "current.css").symlink_to("static/style.css")
    artifact = build(built, source)
    stored = store_artifact(artifact, tmp_path / "artifacts")
    dest = tmp_path / "release"
    unpack_artifact(stored, dest, artifact.digest)

    for rel, content in APP.items():
        if rel.endswith("/"):
            assert (dest / rel).is_dir()
        else:
            assert (dest / rel).read_bytes() == content
    assert os.access(dest / "run.sh", os.X_OK)
    assert not os.access(dest / "app.py", os.X_OK)
    assert os.readlink(dest / "current.css") == "static/style.css"
    assert (dest / "current.css").read_bytes() == APP["static/style.css"]
    assert (dest / "app.py").stat().st_mtime > 0  # not dated 1970
    # Unpacked and rebuilt, the tree gives the same artifact.
    assert build(built, dest).digest == artifact.digest


def test_unpack_into_an_existing_empty_dir(tmp_path: Path, built: list[Artifact]) -> None:
    artifact = build(built, make_tree(tmp_path / "app", APP))
    dest = tmp_path / "release"
    dest.mkdir()
    unpack_artifact(artifact.path, dest, artifact.digest)
    assert (dest / "app.py").exists()


def test_unpack_refuses_a_non_empty_dest(tmp_path: Path, built: list[Artifact]) -> None:
    artifact = build(built, make_tree(tmp_path / "app", APP))
    dest = make_tree(tmp_path / "release", {"old.txt": b"old"})
    with pytest.raises(InvalidInput, match="not an empty directory"):
        unpack_artifact(artifact.path, dest, artifact.digest)
    assert [p.name for p in dest.iterdir()] == ["old.txt"]


def test_wrong_or_malformed_digest_is_refused_before_anything_is_written(
    tmp_path: Path, built: list[Artifact]
) -> None:
    artifact = build(built, make_tree(tmp_path / "app", APP))
    dest = tmp_path / "release"
    with pytest.raises(DigestMismatch):
        unpack_artifact(artifact.path, dest, "sha256:" + "0" * 64)
    for bad in ("", "sha256:abc", "md5:" + "0" * 64, artifact.digest.removeprefix("sha256:")):
        with pytest.raises(InvalidInput, match="sha256:<64 hex digits>"):
            unpack_artifact(artifact.path, dest, bad)
    assert not dest.exists()


# Hostile archives


def hostile(path: Path, build_members: list[tuple[tarfile.TarInfo, bytes | None]]) -> str:
    """Write a tar.gz with exactly these members and return its digest."""
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in build_members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o755 if kind in (tarfile.DIRTYPE, tarfile.SYMTYPE) else 0o644
    return info


def _abs_target(tmp_path: Path) -> str:
    return str(tmp_path / "abs-evil.txt")


HOSTILE = {
    "dotdot": lambda tmp: [(member("ok.txt"), b"ok"), (member("../evil.txt"), b"pwned")],
    "nested-dotdot": lambda tmp: [(member("a/../../evil.txt"), b"pwned")],
    "absolute": lambda tmp: [(member(_abs_target(tmp)), b"pwned")],
    "symlink-escape-then-write": lambda tmp: [
        (member("link", tarfile.SYMTYPE, ".."), None),
        (member("link/evil.txt"), b"pwned"),
    ],
    "symlink-absolute": lambda tmp: [(member("link", tarfile.SYMTYPE, str(tmp)), None)],
    "symlink-then-overwrite": lambda tmp: [
        (member("link", tarfile.SYMTYPE, "../evil.txt"), None),
        (member("link"), b"pwned"),
    ],
    "symlink-inside-then-dir-through-it": lambda tmp: [
        (member("real", tarfile.DIRTYPE), None),
        (member("link", tarfile.SYMTYPE, "real"), None),
        (member("link/evil.txt"), b"pwned"),
    ],
    "hardlink": lambda tmp: [(member("hard", tarfile.LNKTYPE, "/etc/passwd"), None)],
    "device": lambda tmp: [(member("dev", tarfile.CHRTYPE), None)],
    "fifo": lambda tmp: [(member("fifo", tarfile.FIFOTYPE), None)],
    "duplicate": lambda tmp: [(member("a.txt"), b"1"), (member("a.txt"), b"2")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_and_write_nothing(tmp_path: Path, case: str) -> None:
    archive = tmp_path / "hostile.tar.gz"
    digest = hostile(archive, HOSTILE[case](tmp_path))
    dest = tmp_path / "box" / "release"
    dest.parent.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UnsafeArtifact, match="nothing was unpacked"):
        unpack_artifact(archive, dest, digest)
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list(tmp_path.rglob("evil.txt")) == []
    assert not (tmp_path / "abs-evil.txt").exists()


def test_unpack_limits_guard_against_archive_bombs(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.tar.gz"
    digest = hostile(archive, [(member(f"f{i}"), b"0" * 1000) for i in range(5)])
    with pytest.raises(ArtifactTooLarge):
        unpack_artifact(archive, tmp_path / "a", digest, max_bytes=4000)
    with pytest.raises(ArtifactTooLarge):
        unpack_artifact(archive, tmp_path / "b", digest, max_files=4)
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()


def test_garbage_with_a_matching_digest_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "garbage.tar.gz"
    archive.write_bytes(b"not a tarball")
    digest = "sha256:" + hashlib.sha256(b"not a tarball").hexdigest()
    with pytest.raises(UnsafeArtifact, match=r"not a valid tar\.gz"):
        unpack_artifact(archive, tmp_path / "dest", digest)
    assert not (tmp_path / "dest").exists()


# Properties

_name = st.text(alphabet="abcdefgh-_.", min_size=1, max_size=6).filter(
    lambda s: s not in (".", "..") and not s.startswith(".env") and not s.endswith(".pyc")
)
_trees = st.dictionaries(
    st.lists(_name, min_size=1, max_size=3).map("/".join),
    st.tuples(st.binary(max_size=64), st.booleans()),
    max_size=8,
)


def _write_tree(root: Path, tree: dict[str, tuple[bytes, bool]]) -> dict[str, tuple[bytes, bool]]:
    """Write what can be written (a path cannot be both file and directory); return it."""
    written: dict[str, tuple[bytes, bool]] = {}
    root.mkdir()
    for rel, (content, executable) in sorted(tree.items()):
        path = root / rel
        if any(Path(rel).is_relative_to(w) or Path(w).is_relative_to(rel) for w in written):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(0o755 if executable else 0o644)
        written[rel] = (content, executable)
    return written


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(tree=_trees)
def test_property_random_trees_are_deterministic_and_round_trip(
    tree: dict[str, tuple[bytes, bool]],
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        written = _write_tree(base / "app", tree)
        with build_artifact(base / "app") as first, build_artifact(base / "app") as second:
            assert first.digest == second.digest
            assert first.unpacked_bytes == sum(len(c) for c, _ in written.values())
            unpack_artifact(first.path, base / "out", first.digest)
        for rel, (content, executable) in written.items():
            assert (base / "out" / rel).read_bytes() == content
            assert os.access(base / "out" / rel, os.X_OK) == executable
        unpacked = {
            str(p.relative_to(base / "out")) for p in (base / "out").rglob("*") if p.is_file()
        }
        assert unpacked == set(written)


@pytest.mark.parametrize("case", ["dotdot", "symlink-escape-then-write", "hardlink", "device"])
def test_data_filter_still_refuses_when_own_checks_are_bypassed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Defence in depth: with the member checks switched off, the `data` filter refuses, and
    an existing destination is emptied again."""
    monkeypatch.setattr("aerodrome.runtime.artifact._check_members", lambda *args: None)
    archive = tmp_path / "hostile.tar.gz"
    digest = hostile(archive, HOSTILE[case](tmp_path))
    dest = tmp_path / "box" / "release"
    dest.mkdir(parents=True)
    with pytest.raises(UnsafeArtifact, match="refused while unpacking"):
        unpack_artifact(archive, dest, digest)
    assert list(dest.iterdir()) == []
    assert list(tmp_path.rglob("evil.txt")) == []
