"""Fetch a raw file into the data directory: from a local mirror or its public URL, verified.

Downloads are resumable (`nola.resumable.download_resumable`, shared with the hub loader); the
destination appears only after the complete file matched its checksum (`nola.fileio.move_into_place`). A checksum
mismatch deletes the `.part` file.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from nola.data.sources import RawFile
from nola.resumable import download_resumable, part_path
from nola.errors import NolaError
from nola.fileio import (
    FileDigest,
    atomic_path,
    digest_file,
    fsync_path,
    move_into_place,
)

URL_HELP = "Check the URL in data/sources.json, or use --mirror DIR with a local copy."


@dataclass(frozen=True)
class FetchResult:
    """What `fetch_raw_file` did: `action` is present | copied | downloaded."""

    path: Path
    digest: FileDigest
    origin: str
    action: str


def fetch_raw_file(
    raw: RawFile,
    data_dir: str | Path,
    *,
    mirror: str | Path | None = None,
    progress: bool = True,
    attempts: int = 3,
    timeout_s: float = 60.0,
    retry_wait_s: float = 2.0,
) -> FetchResult:
    """Make `data_dir/raw.dest` hold a verified copy of `raw` (skip if it already does)."""
    dest = Path(data_dir) / raw.dest
    if dest.is_file():
        digest = digest_file(dest)
        accepted = raw.accepted(digest)
        if accepted is not None:
            return FetchResult(dest, digest, accepted.origin, "present")
        tqdm.write(f"{dest} does not match its checksum; fetching it again", file=sys.stderr)
    if mirror is not None:
        source = Path(mirror) / raw.path
        if not source.is_file():
            raise NolaError(f"mirror {mirror} has no {raw.path}; check --mirror (it should look like ../shared/data)")
        with atomic_path(dest) as tmp:
            shutil.copyfile(source, tmp)
            digest, origin = _verify(raw, tmp, str(source))
        return FetchResult(dest, digest, origin, "copied")
    part = part_path(dest)
    known_sizes = {entry.size for entry in raw.accept}
    expected_size = known_sizes.pop() if len(known_sizes) == 1 else None
    download_resumable(
        raw.url,
        part,
        help_text=URL_HELP,
        expected_size=expected_size,
        attempts=attempts,
        timeout_s=timeout_s,
        retry_wait_s=retry_wait_s,
        progress=progress,
        label=raw.dest,
    )
    try:
        digest, origin = _verify(raw, part, raw.url)
    except NolaError:
        part.unlink(missing_ok=True)
        raise
    fsync_path(part)
    move_into_place(part, dest)
    return FetchResult(dest, digest, origin, "downloaded")


def _verify(raw: RawFile, path: Path, source: str) -> tuple[FileDigest, str]:
    digest = digest_file(path)
    accepted = raw.accepted(digest)
    if accepted is None:
        expected = "; or ".join(entry.describe() for entry in raw.accept)
        raise NolaError(
            f"checksum mismatch for {raw.dest} from {source}: got bytes {digest.size}, sha256 {digest.sha256}, "
            f"git blob {digest.git_blob}; expected {expected}. The source changed or the copy is damaged"
        )
    return digest, accepted.origin
