"""The raw files the data stage needs, where they come from and how they are verified.

`data/sources.json` lists each file once: its path inside a mirror laid out like ../shared/data,
its destination under the data directory, its public URL, and the accepted contents. A file is
accepted when it matches one `accept` entry on every field that entry states (bytes, sha256, git
blob id). Every entry states a sha256 except the two DART files whose public bytes (microsoft/LoRA's
blobs) were not available when this list was made: those are checked by their git blob id instead
(see data/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nola.fileio import FileDigest, expect_type, json_field, read_json
from nola.errors import NolaError

SOURCES_SCHEMA = 1
SOURCE_GROUPS = ("e2e", "webnlg", "dart", "vocab")


@dataclass(frozen=True)
class AcceptedDigest:
    """One accepted content of a raw file; unstated fields are None."""

    origin: str
    size: int | None = None
    sha256: str | None = None
    git_blob: str | None = None

    def matches(self, digest: FileDigest) -> bool:
        return (
            (self.size is None or self.size == digest.size)
            and (self.sha256 is None or self.sha256 == digest.sha256)
            and (self.git_blob is None or self.git_blob == digest.git_blob)
        )

    def describe(self) -> str:
        stated = [
            f"{name} {value}"
            for name, value in (("bytes", self.size), ("sha256", self.sha256), ("git blob", self.git_blob))
            if value is not None
        ]
        return f"{', '.join(stated)} ({self.origin})"


@dataclass(frozen=True)
class RawFile:
    """A raw input: `path` inside a mirror, `dest` under the data directory, its URL and digests."""

    path: str
    dest: str
    group: str
    url: str
    accept: tuple[AcceptedDigest, ...]

    def accepted(self, digest: FileDigest) -> AcceptedDigest | None:
        """The accept entry `digest` matches, or None."""
        return next((entry for entry in self.accept if entry.matches(digest)), None)


def default_sources_path() -> Path:
    """data/sources.json of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[3] / "data" / "sources.json"


def load_sources(path: str | Path | None = None) -> list[RawFile]:
    """Parse and check sources.json (default: the checkout's data/sources.json)."""
    path = Path(path) if path is not None else default_sources_path()
    if not path.is_file():
        raise NolaError(f"{path} not found; pass --sources with the repository's data/sources.json")
    root = expect_type(read_json(path), dict, where="the top level", path=path)
    schema = json_field(root, "schema", int, where="the top level", path=path)
    if schema != SOURCES_SCHEMA:
        raise NolaError(f"{path}: schema {schema} is not supported (expected {SOURCES_SCHEMA})")
    files = []
    for index, record in enumerate(json_field(root, "files", list, where="the top level", path=path)):
        where = f"files[{index}]"
        expect_type(record, dict, where=where, path=path)
        group = json_field(record, "group", str, where=where, path=path)
        if group not in SOURCE_GROUPS:
            raise NolaError(f"{path}: {where}.group is {group!r}; expected one of {', '.join(SOURCE_GROUPS)}")
        accept = tuple(
            _accepted_digest(entry, f"{where}.accept[{number}]", path)
            for number, entry in enumerate(json_field(record, "accept", list, where=where, path=path))
        )
        if not accept:
            raise NolaError(f"{path}: {where}.accept is empty; every file needs a checksum")
        files.append(
            RawFile(
                path=json_field(record, "path", str, where=where, path=path),
                dest=json_field(record, "dest", str, where=where, path=path),
                group=group,
                url=json_field(record, "url", str, where=where, path=path),
                accept=accept,
            )
        )
    return files


def _accepted_digest(entry: object, where: str, path: Path) -> AcceptedDigest:
    expect_type(entry, dict, where=where, path=path)
    size = json_field(entry, "bytes", (int, type(None)), where=where, path=path)
    sha256 = json_field(entry, "sha256", (str, type(None)), where=where, path=path)
    git_blob = json_field(entry, "git_blob", (str, type(None)), where=where, path=path)
    if sha256 is None and git_blob is None:
        raise NolaError(f"{path}: {where} states neither sha256 nor git_blob; nothing to verify against")
    origin = json_field(entry, "origin", str, where=where, path=path)
    return AcceptedDigest(origin=origin, size=size, sha256=sha256, git_blob=git_blob)


def sources_for(files: list[RawFile], group: str) -> list[RawFile]:
    """The raw files of one task (or of the vocabulary)."""
    return [raw for raw in files if raw.group == group]
