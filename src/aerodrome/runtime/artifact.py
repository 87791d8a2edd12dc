"""Deploy artifacts: an app directory packed into a deterministic, content-addressed `tar.gz`.

`aero deploy` ships what is in the app directory, so this module decides what leaves the
developer's machine. Its job is to make that set predictable and never to include secrets:

What is packaged
    Regular files, directories and symlinks that stay inside the app directory, after the
    ignore rules below. A symlink is stored *as a symlink* (its relative target text, never
    the content it points to); a symlink whose target is absolute or leads out of the app
    directory is refused, because after unpacking it would point at the host. Sockets,
    FIFOs and device files are refused too, unless an ignore pattern leaves them out.
    File names must be valid UTF-8.

Ignore rules
    `.aeroignore` if the app directory has one, else `.dockerignore` (never both), read with
    gitignore syntax via `pathspec.GitIgnoreSpec` (the maintained successor of
    `GitWildMatchPattern`). As in git, a file inside an excluded directory cannot be brought
    back by a later `!pattern`: to keep `build/keep.txt`, write `build/*` then
    `!build/keep.txt`. Note that a `.dockerignore` is read as gitignore, where `*.log`
    matches at any depth (Docker anchors patterns at the root).

Always excluded, whatever the ignore file says (a `!` pattern cannot bring these back)
    `.env` and `.env.*` at any depth (files or directories: secrets belong in `aero secrets`,
    and a virtualenv named `.env` is never wanted either); `.git` and `.aerodrome` (the
    default data directory) at any depth; `__pycache__` and `*.pyc`; and every directory
    passed as `exclude_dirs` (the platform's data directory when it lies inside the app),
    compared by device and inode so a differently spelled path still matches.

Limits (documented for users; both checked while walking, before anything is compressed)
    `DEFAULT_MAX_BYTES` = 256 MiB of file content (unpacked) and `DEFAULT_MAX_FILES` = 20,000
    entries (files, symlinks and directories all count). Exceeding one raises
    `ArtifactTooLarge` (code `artifact_too_large`), naming the limit and the size found, with
    a hint to add patterns to `.aeroignore` that lists the largest directories seen.

Determinism
    Entries are sorted by path, and every entry has mtime 0, uid/gid 0, empty user and group
    names, and mode 0o644 (files), 0o755 (executable files and directories) or 0o777
    (symlinks). The gzip header carries no file name and mtime 0. The same tree therefore
    always gives the same bytes and the same SHA-256 digest (for a given zlib; the digest is
    of the compressed bytes, which is what is stored and verified).

The artifact is written to a temporary file (mode 0600), never held in memory, so a tree at
the size limit costs disk, not RAM. `store_artifact` copies it into a content-addressed store;
`unpack_artifact` verifies the digest before reading a single entry and then extracts with
its own checks and the standard library's `data` filter.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import hmac
import io
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from pathspec import GitIgnoreSpec

from aerodrome.errors import InvalidInput

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
"""Largest total size of file content (unpacked) an artifact may hold: 256 MiB."""
DEFAULT_MAX_FILES = 20_000
"""Most entries (files, symlinks and directories) an artifact may hold."""

IGNORE_FILES = (".aeroignore", ".dockerignore")
"""Read in this order; only the first one present is used."""

ALWAYS_EXCLUDED_NAMES = frozenset({".env", ".git", ".aerodrome", "__pycache__"})
"""Names never packaged at any depth, plus `.env.*` and `*.pyc` (see `is_always_excluded`)."""

COMPRESS_LEVEL = 6
"""Fixed so the same tree gives the same bytes; 9 costs much more time for little gain."""

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_CHUNK = 1024 * 1024

ProgressCallback = Callable[[int, int], None]
"""Called as `progress(bytes_packed, bytes_total)` at the start and after each file."""


class ArtifactTooLarge(InvalidInput):
    """The app directory exceeds a documented limit; the hint says how to trim it."""

    code = "artifact_too_large"


class UnsafeArtifact(InvalidInput):
    """Something that could write or point outside its directory: refused, nothing written."""

    code = "unsafe_artifact"


class DigestMismatch(InvalidInput):
    """The artifact's bytes are not the ones asked for (corrupted, truncated or swapped)."""

    code = "artifact_digest_mismatch"


@dataclass(frozen=True)
class Artifact:
    """A built artifact: a `tar.gz` in a temporary file plus what it contains.

    Two builds of the same tree compare equal (the temporary path is left out of the
    comparison). The caller owns the temporary file: `store_artifact` copies it, then
    `discard()` (or `with build_artifact(...) as artifact:`) removes it.
    """

    digest: str
    """`sha256:<hex>` of the compressed bytes."""
    size: int
    """Compressed size in bytes."""
    files: int
    """Entries in the archive: files, symlinks and directories."""
    unpacked_bytes: int
    """Total size of the regular files' content."""
    path: Path = field(compare=False)
    """The temporary `tar.gz` file (mode 0600)."""

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")

    def discard(self) -> None:
        """Remove the temporary file (safe to call twice)."""
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()


@dataclass(frozen=True)
class _Entry:
    """One thing to pack, decided during the walk so the limits are known before writing."""

    name: str  # relative POSIX path, the tar member name
    kind: str  # "dir", "file" or "symlink"
    size: int = 0
    executable: bool = False
    target: str = ""  # symlink target text


def is_always_excluded(name: str) -> bool:
    """Whether a file or directory called `name` is left out whatever the ignore rules say."""
    return name in ALWAYS_EXCLUDED_NAMES or name.startswith(".env.") or name.endswith(".pyc")


def load_ignore_spec(source: Path) -> tuple[GitIgnoreSpec, str | None]:
    """The ignore patterns of `source` and the name of the file they came from (if any).

    Only the first of `IGNORE_FILES` present is read, so an app can keep a `.dockerignore`
    for other tools and say something different to aerodrome with an `.aeroignore`.
    """
    for name in IGNORE_FILES:
        path = source / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"{name} is not valid UTF-8",
                hint=f"save {name} as UTF-8",
                code="bad_ignore_file",
            ) from exc
        lines = text.splitlines()
        for number, line in enumerate(lines, start=1):
            try:
                GitIgnoreSpec.from_lines([line])
            except ValueError as exc:
                raise InvalidInput(
                    f"{name}:{number}: invalid pattern {line.strip()!r}",
                    hint="patterns use gitignore syntax: https://git-scm.com/docs/gitignore",
                    code="bad_ignore_file",
                ) from exc
        return GitIgnoreSpec.from_lines(lines), name
    return GitIgnoreSpec.from_lines([]), None


def _human(n: int) -> str:
    """Sizes for people: `256 MiB`, `300.5 MiB`, `12 KiB`, `512 bytes`."""
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f}".removesuffix(".0") + f" {unit}"
    raise AssertionError("unreachable")


class _Walker:
    """Walks the app directory once, deciding every entry and enforcing the limits."""

    def __init__(
        self,
        root: Path,
        spec: GitIgnoreSpec,
        excluded: set[tuple[int, int]],
        max_bytes: int,
        max_files: int,
        ignore_file: str | None,
    ) -> None:
        self.root = root
        self.spec = spec
        self.excluded = excluded
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.ignore_file = ignore_file or ".aeroignore"
        self.entries: list[_Entry] = []
        self.total_bytes = 0
        self.by_top: dict[str, int] = {}  # bytes per top-level entry, for the hint

    def walk(self) -> list[_Entry]:
        # An explicit stack rather than recursion: a deep tree must not hit the recursion
        # limit, and directories are pruned before they are ever opened.
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            with os.scandir(self.root / rel_dir if rel_dir else self.root) as it:
                children = sorted(it, key=lambda e: e.name)
            subdirs: list[str] = []
            for child in children:
                if is_always_excluded(child.name):
                    continue
                rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
                st = child.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) in self.excluded:
                        continue
                    if self.spec.match_file(rel + "/"):
                        continue
                    self._add(_Entry(self._checked_name(rel), "dir"))
                    subdirs.append(rel)
                    continue
                if self.spec.match_file(rel):
                    continue
                if stat.S_ISREG(st.st_mode):
                    executable = bool(st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
                    entry = _Entry(self._checked_name(rel), "file", st.st_size, executable)
                    self._add(entry)
                elif stat.S_ISLNK(st.st_mode):
                    self._add(_Entry(self._checked_name(rel), "symlink", target=self._link(rel)))
                else:
                    raise InvalidInput(
                        f"{rel} is not a regular file, directory or symlink "
                        "(a socket, FIFO or device) and cannot be deployed",
                        hint=f"add it to {self.ignore_file}",
                        code="unsupported_file",
                    )
            stack.extend(reversed(subdirs))
        return sorted(self.entries, key=lambda e: e.name)

    def _checked_name(self, rel: str) -> str:
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError as exc:
            shown = rel.encode("utf-8", "backslashreplace").decode("ascii", "replace")
            raise InvalidInput(
                f"{shown} has a name that is not valid UTF-8 and cannot be deployed",
                hint=f"rename it, or add it to {self.ignore_file}",
                code="unsupported_file",
            ) from exc
        return rel

    def _link(self, rel: str) -> str:
        """The target of the symlink at `rel`, refused if it leads out of the app directory.

        Checked both as text (what the link will mean after unpacking elsewhere) and on disk
        (through any symlinked directories it passes), and an absolute target is refused
        even when it points inside, because it would not after unpacking."""
        target = os.readlink(self.root / rel)
        lexical = os.path.normpath(os.path.join(os.path.dirname(rel), target))
        resolved = os.path.realpath(self.root / rel)
        inside = os.path.commonpath([str(self.root), resolved]) == str(self.root)
        if os.path.isabs(target) or lexical == ".." or lexical.startswith("../") or not inside:
            raise UnsafeArtifact(
                f"symlink {rel} points outside the app directory (or is absolute)",
                hint=(
                    f"replace it with a copy of what it points to, or add it to "
                    f"{self.ignore_file}; only relative links that stay inside the app are "
                    "deployed"
                ),
            )
        return target

    def _add(self, entry: _Entry) -> None:
        self.entries.append(entry)
        top = entry.name.split("/", 1)[0]
        self.by_top[top] = self.by_top.get(top, 0) + entry.size
        self.total_bytes += entry.size
        if len(self.entries) > self.max_files:
            raise ArtifactTooLarge(
                f"the app directory has more than {self.max_files:,} files, directories and "
                f"links (the limit); found {len(self.entries):,} before stopping",
                hint=self._hint(),
            )
        if self.total_bytes > self.max_bytes:
            raise ArtifactTooLarge(
                f"the app directory holds more than {_human(self.max_bytes)} of files "
                f"(the limit); found {_human(self.total_bytes)} before stopping",
                hint=self._hint(),
            )

    def _hint(self) -> str:
        largest = sorted(self.by_top.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        listed = ", ".join(f"{name} ({_human(size)})" for name, size in largest if size)
        seen = f"; the largest so far: {listed}" if listed else ""
        return (
            f"add patterns to {self.ignore_file} (gitignore syntax) for what the app does not "
            f"need at run time, such as build caches, test data or local virtualenvs{seen}"
        )


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through to `raw`."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def _tarinfo(entry: _Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target
        info.mode = 0o777
    else:
        info.type = tarfile.REGTYPE
        info.mode = 0o755 if entry.executable else 0o644
        info.size = entry.size
    return info


def _changed(name: str) -> InvalidInput:
    return InvalidInput(
        f"{name} changed while it was being packaged",
        hint="run the deploy again once nothing is writing to the app directory",
        code="source_changed",
    )


def _add_file(tar: tarfile.TarFile, root: Path, entry: _Entry) -> None:
    """Add a regular file, opened without following links and checked against the walk, so a
    file swapped for a symlink or a FIFO in between is refused rather than followed."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(root / entry.name, flags)
    except OSError as exc:
        raise _changed(entry.name) from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
            raise _changed(entry.name)
        try:
            tar.addfile(_tarinfo(entry), fh)
        except OSError as exc:  # shrank between fstat and read: "unexpected end of data"
            raise _changed(entry.name) from exc


def _excluded_ids(exclude_dirs: Iterable[Path]) -> set[tuple[int, int]]:
    ids: set[tuple[int, int]] = set()
    for path in exclude_dirs:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            st = os.stat(path)
            ids.add((st.st_dev, st.st_ino))
    return ids


def build_artifact(
    source: Path,
    *,
    exclude_dirs: Iterable[Path] = (),
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    progress: ProgressCallback | None = None,
) -> Artifact:
    """Pack `source` into a deterministic `tar.gz` in a temporary file (see the module doc).

    The whole tree is walked and checked against the limits first, so a directory that is
    too large fails fast and nothing is written at all.
    """
    try:
        root = source.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise InvalidInput(f"app directory {source} does not exist", code="not_found") from exc
    if not root.is_dir():
        raise InvalidInput(f"{source} is not a directory", hint="pass the app directory")
    excluded = _excluded_ids(exclude_dirs)
    root_st = root.stat()
    if (root_st.st_dev, root_st.st_ino) in excluded:
        raise InvalidInput(
            f"{source} is the platform's data directory, not an app directory",
            hint="run `aero deploy` from the app's own directory",
        )
    spec, ignore_file = load_ignore_spec(root)
    entries = _Walker(root, spec, excluded, max_bytes, max_files, ignore_file).walk()
    total = sum(e.size for e in entries)

    fd, tmp_name = tempfile.mkstemp(prefix="aero-artifact-", suffix=".tar.gz")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            writer = _HashingWriter(raw)
            # No file name and mtime 0 in the gzip header: both would break determinism.
            gz = gzip.GzipFile(
                filename="", mode="wb", fileobj=writer, mtime=0, compresslevel=COMPRESS_LEVEL
            )
            with (
                gz,
                tarfile.open(
                    fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8"
                ) as tar,
            ):
                done = 0
                if progress is not None:
                    progress(0, total)
                for entry in entries:
                    if entry.kind == "file":
                        _add_file(tar, root, entry)
                        done += entry.size
                        if progress is not None:
                            progress(done, total)
                    else:
                        tar.addfile(_tarinfo(entry))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Artifact(
        digest=f"sha256:{writer.sha.hexdigest()}",
        size=writer.size,
        files=len(entries),
        unpacked_bytes=total,
        path=tmp,
    )


def _parse_digest(digest: str) -> str:
    match = _DIGEST.fullmatch(digest.strip().lower())
    if match is None:
        raise InvalidInput(
            "an artifact digest looks like sha256:<64 hex digits>",
            code="bad_digest",
        )
    return match.group(1)


def _file_sha256(fh: io.BufferedReader) -> str:
    return hashlib.file_digest(fh, "sha256").hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def app_artifacts(data_dir: Path, app_id: str) -> Path:
    """Where an app's artifacts live: apart per app, so an app's code can be neither probed
    for nor deployed by another app (another org) that learns its digest."""
    return data_dir / "artifacts" / app_id


def stored_artifact(artifacts_dir: Path, digest: str) -> Path:
    """The file `store_artifact` keeps `digest` in under `artifacts_dir`."""
    return artifacts_dir / "sha256" / f"{_parse_digest(digest)}.tar.gz"


def store_artifact(artifact: Artifact, artifacts_dir: Path) -> Path:
    """Copy `artifact` to `artifacts_dir/sha256/<hex>.tar.gz` and return that path.

    Content-addressed, so storing is idempotent: an existing file with the right content is
    kept as it is (only its mode is corrected to 0600). A new copy is written under a unique
    temporary name, checked against the digest while copying (the temporary build file could
    have been altered since the build) and renamed into place, so readers never see a
    partial file and two concurrent deploys of the same tree both succeed.
    """
    hex_digest = _parse_digest(artifact.digest)
    directory = artifacts_dir / "sha256"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = directory / f"{hex_digest}.tar.gz"
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISREG(target.lstat().st_mode):
            with target.open("rb") as fh:
                if _file_sha256(fh) == hex_digest:
                    os.chmod(target, 0o600)
                    return target
    tmp = directory / f".{hex_digest}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        sha = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, artifact.path.open("rb") as src:
            while chunk := src.read(_CHUNK):
                sha.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if sha.hexdigest() != hex_digest:
            raise DigestMismatch(
                f"the built artifact no longer matches {artifact.digest}",
                hint="build it again",
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    return target


def _unsafe(name: str, why: str) -> UnsafeArtifact:
    shown = name.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
    return UnsafeArtifact(f"artifact entry {shown!r} {why}; nothing was unpacked")


def _check_members(members: list[tarfile.TarInfo], max_bytes: int, max_files: int) -> None:
    """Refuse the whole archive before anything is written if any member could escape.

    This is stricter than the `data` filter on purpose: only the three entry types the
    builder produces, no duplicate names and nothing stored beneath a symlink, so no member
    can be redirected by an earlier one."""
    if len(members) > max_files:
        raise ArtifactTooLarge(f"the artifact has {len(members):,} entries (limit {max_files:,})")
    total = sum(m.size for m in members if m.isreg())
    if total > max_bytes:
        raise ArtifactTooLarge(
            f"the artifact unpacks to {_human(total)} (limit {_human(max_bytes)})"
        )
    seen: set[str] = set()
    symlinks: set[str] = set()
    for m in members:
        name = m.name
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in name:
            raise _unsafe(name, "is not a plain relative path")
        if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE):
            raise _unsafe(name, "is not a regular file, directory or symlink")
        if name in seen:
            raise _unsafe(name, "appears twice")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in symlinks:
                raise _unsafe(name, "lies beneath a symlink")
        if m.issym():
            target = m.linkname
            lexical = os.path.normpath(os.path.join(os.path.dirname(name), target))
            if os.path.isabs(target) or lexical == ".." or lexical.startswith("../"):
                raise _unsafe(name, "is a symlink pointing outside the artifact")
            symlinks.add(name)
        seen.add(name)


def _filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """The standard `data` filter (no absolute paths, no escaping links, no special files,
    no setuid bits or ownership), and mtime left unset: the archive's mtime 0 exists only for
    determinism, and files dated 1970 trip up tools such as `zipfile`."""
    filtered = tarfile.data_filter(member, dest)
    if filtered is None:
        return None
    # None means "do not set" to extraction (documented); the stub only admits a float.
    return filtered.replace(mtime=None, deep=False)  # type: ignore[arg-type]


def _clear(dest: Path) -> None:
    for child in list(dest.iterdir()):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def unpack_artifact(
    path: Path,
    dest: Path,
    expected_digest: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
) -> None:
    """Verify `path` against `expected_digest`, then extract it into `dest`.

    The file is opened once and the same open file is hashed and then read, so it cannot be
    swapped in between. `dest` must be missing or an empty directory: extracting over
    existing files (or symlinks) is how archives are usually turned into attacks. Every
    member is checked before the first is written (see `_check_members`), extraction then
    also runs through the `data` filter, and on any failure `dest` is emptied again.
    """
    hex_digest = _parse_digest(expected_digest)
    with path.open("rb") as fh:
        actual = _file_sha256(fh)
        if not hmac.compare_digest(actual, hex_digest):
            raise DigestMismatch(
                f"artifact {path.name} does not match the expected digest",
                hint="the stored artifact is corrupt or was replaced; deploy again to rebuild it",
            )
        fh.seek(0)
        try:
            with tarfile.open(fileobj=fh, mode="r:gz") as tar:
                members = tar.getmembers()
                _check_members(members, max_bytes, max_files)
                created = _prepare_dest(dest)
                try:
                    tar.extractall(dest, members=members, filter=_filter)  # noqa: S202 (checked)
                except BaseException:
                    if created:
                        shutil.rmtree(dest, ignore_errors=True)
                    else:
                        _clear(dest)
                    raise
        except tarfile.FilterError as exc:
            raise UnsafeArtifact(
                f"artifact {path.name} was refused while unpacking: {exc}"
            ) from exc
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise UnsafeArtifact(f"artifact {path.name} is not a valid tar.gz: {exc}") from exc


def _prepare_dest(dest: Path) -> bool:
    """Create `dest` (returning True) or accept it if it is an empty directory."""
    try:
        dest.mkdir(parents=True, mode=0o755)
        return True
    except FileExistsError:
        if dest.is_symlink() or not dest.is_dir() or any(dest.iterdir()):
            raise InvalidInput(
                f"cannot unpack into {dest}: it exists and is not an empty directory",
                hint="unpack into a new directory",
                code="dest_not_empty",
            ) from None
        return False
