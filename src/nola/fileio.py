"""File plumbing for every stage: the one atomic writer, digests, writable-directory checks, and
readers that fail with a location. Prepared data, references, hypotheses, results, tables, figures,
adapters, checkpoints, exported bases and downloads are all put in place through it.

One rule for every write (`atomic_path` for a file, `atomic_directory` for a directory): the content
is written beside its destination under a hidden name, flushed to disk (fsync), and moved to its
final name by `move_into_place`, the only rename in the package, after which the directory entry is
flushed too. An interrupted or failed run therefore never leaves a half-written file or directory
under its final name, and a finished write survives a power cut (the work a lost checkpoint, adapter
or result would cost is far more than an fsync). A new file gets the mode any new file gets (0666
less the umask: 0644 by default), not mkstemp's owner-only 0600.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nola.errors import NolaError

HASH_CHUNK = 1 << 20


def _umask() -> int:
    """The process umask (read without changing it for longer than the call)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def new_file_mode() -> int:
    """The mode `open()` gives a new file: 0666 less the process umask."""
    return 0o666 & ~_umask()


def fsync_path(path: str | Path) -> None:
    """Flush a file's or a directory's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_into_place(source: str | Path, dest: str | Path) -> None:
    """Rename a complete `source` (file or directory, already flushed) to `dest`, replacing a file there,
    and flush the directory entry: the package's one rename (see the module docstring)."""
    os.replace(source, dest)
    fsync_path(Path(dest).parent)


@contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it is flushed and replaces `dest` (with the
    umask's mode), on error it is removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, new_file_mode())
        fsync_path(tmp)
        move_into_place(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(dest: str | Path, *, staging_prefix: str | None = None) -> Iterator[Path]:
    """Yield an empty staging directory beside `dest`; on success its files are flushed and it takes
    `dest`'s place (a previous `dest` is moved aside first, then deleted), so a reader sees the old
    directory or the new one, never a mix; on error the staging directory is removed.

    staging_prefix: the staging directory's name prefix (default `.<dest name>-`), for callers that
    clean up their own leftovers by prefix.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix or f".{dest.name}-", dir=dest.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the directory from its readers
    retired = staging.with_name(staging.name + "-old")
    try:
        yield staging
        for path in staging.rglob("*"):
            if path.is_file():
                fsync_path(path)
        fsync_path(staging)
        if dest.exists():
            move_into_place(dest, retired)
        move_into_place(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)


def ensure_writable_dir(directory: str | Path, *, what: str) -> None:
    """Create `directory` if needed and prove a file can be written there, before any long work.

    `what` names the setting that chose it (e.g. "paths.runs_dir", "--out"), for the error message.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as err:
        raise NolaError(
            f"cannot write to {directory} ({err.strerror or err}); set {what} to a writable directory"
        ) from None


def write_text_atomic(dest: str | Path, text: str) -> None:
    """Write `text` as UTF-8 to `dest` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")


def write_json_atomic(dest: str | Path, value: Any) -> None:
    """Write `value` as indented JSON to `dest` atomically."""
    write_text_atomic(dest, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def render_lines(lines: list[str], what: str | Path) -> str:
    """One newline-terminated line per item; an item with a line break is an error naming `what`."""
    for number, line in enumerate(lines, 1):
        if "\n" in line or "\r" in line:
            raise NolaError(f"cannot write {what}: item {number} contains a line break ({line[:60]!r}...)")
    return "".join(line + "\n" for line in lines)


@dataclass(frozen=True)
class FileDigest:
    """A file's size, sha256 and git blob id (`git hash-object`: sha1 of b'blob <size>\\0' + bytes)."""

    size: int
    sha256: str
    git_blob: str


def digest_file(path: str | Path) -> FileDigest:
    """Hash `path` once for both its sha256 and its git blob id."""
    path = Path(path)
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(f"blob {size}\0".encode())
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            sha256.update(chunk)
            blob.update(chunk)
    return FileDigest(size=size, sha256=sha256.hexdigest(), git_blob=blob.hexdigest())


def json_sha256(value: Any) -> str:
    """The sha256 of a JSON value as text (what run records compare to tell whether inputs changed)."""
    return hashlib.sha256(json.dumps(value, ensure_ascii=False).encode("utf-8")).hexdigest()


def sha256_file(path: str | Path) -> str:
    """The sha256 hex digest of a file."""
    return digest_file(path).sha256


def read_bytes(path: str | Path, *, missing: type[NolaError] = NolaError, hint: str = "file not found") -> bytes:
    """The bytes of `path`: a missing file raises `missing` with "<path>: <hint>", any other read
    error a NolaError naming the file and the reason."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise missing(f"{path}: {hint}") from None
    except OSError as err:
        raise NolaError(f"{path}: cannot read it ({err.strerror or err})") from None


def read_utf8(path: str | Path) -> str:
    """Read a text file as strict UTF-8 with universal newlines; bad bytes name their line."""
    path = Path(path)
    if not path.is_file():
        raise NolaError(f"{path}: file not found; run `make data` (python -m nola.data.prepare) to create it")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise NolaError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[err.start]:02x}); "
            "re-download the file or re-save it as UTF-8"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; invalid JSON raises a NolaError with the line and column."""
    text = read_utf8(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise NolaError(
            f"{path}:{err.lineno}:{err.colno}: invalid JSON ({err.msg}); re-download or repair the file"
        ) from None


def read_jsonl(path: str | Path) -> Iterator[tuple[str, dict]]:
    """Yield (`line N`, object) for each non-empty line of a JSON-lines file of objects."""
    path = Path(path)
    for number, line in enumerate(read_utf8(path).split("\n"), 1):
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise NolaError(f"{path}:{number}: invalid JSON ({err.msg}); rerun `make data`") from None
        yield f"line {number}", expect_type(record, dict, where=f"line {number}", path=path)


def expect_type(value: Any, kind: type | tuple[type, ...], *, where: str, path: Path) -> Any:
    """Return `value` if it has type `kind`; else a NolaError naming the file and the key path `where`."""
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise NolaError(f"{path}: {where} should be {expected}, found {type(value).__name__}")
    return value


def json_field(container: dict, key: str, kind: type | tuple[type, ...], *, where: str, path: Path) -> Any:
    """`container[key]` checked for presence and type; `where` is the container's key path in `path`."""
    if key not in container:
        raise NolaError(f"{path}: {where} is missing the key {key!r}; is this the right file?")
    return expect_type(container[key], kind, where=f"{where}.{key}", path=path)
