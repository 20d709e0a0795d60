"""Fetch a raw file into the data directory: from a local mirror or its public URL, verified.

A download streams into `<dest>.part`; an interrupted transfer is resumed with an HTTP Range request
(restarted from zero if the server ignores or rejects the range), up to `attempts` tries per call.
If every try fails, the `.part` file stays so the next run resumes; the destination itself appears
only after the complete file matched its checksum (`os.replace`). A checksum mismatch deletes the
`.part` file.
"""

from __future__ import annotations

import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from nola.fileio import HASH_CHUNK, FileDigest, atomic_path, digest_file
from nola.data.sources import RawFile
from nola.errors import NolaError

USER_AGENT = "nola-data/1"


@dataclass(frozen=True)
class FetchResult:
    """What `fetch_raw_file` did: `action` is present | copied | downloaded."""

    path: Path
    digest: FileDigest
    origin: str
    action: str


def part_path(dest: Path) -> Path:
    """Where an unfinished download of `dest` accumulates."""
    return dest.with_name(dest.name + ".part")


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
    part.parent.mkdir(parents=True, exist_ok=True)
    known_sizes = {entry.size for entry in raw.accept}
    expected_size = known_sizes.pop() if len(known_sizes) == 1 else None
    download_resumable(
        raw.url,
        part,
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
    part.replace(dest)
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


def download_resumable(
    url: str,
    part: Path,
    *,
    expected_size: int | None,
    attempts: int,
    timeout_s: float,
    retry_wait_s: float,
    progress: bool,
    label: str,
) -> None:
    """Complete `part` from `url`, resuming from its current size; NolaError after `attempts` failures.

    `expected_size`, when known, lets a `.part` that is already whole skip the request.
    """
    if expected_size is not None and part.exists() and part.stat().st_size == expected_size:
        return
    failure = ""
    for attempt in range(1, attempts + 1):
        try:
            if _download_once(url, part, timeout_s=timeout_s, progress=progress, label=label):
                return
            failure = "the connection closed before the end of the file"
        except urllib.error.HTTPError as err:
            if err.code == 416:
                part.unlink(missing_ok=True)
                failure = "the server rejected the resume range; restarting from zero"
            elif 400 <= err.code < 500:
                raise NolaError(
                    f"cannot download {url}: HTTP {err.code} {err.reason}; check the URL in data/sources.json"
                ) from None
            else:
                failure = f"HTTP {err.code} {err.reason}"
        except (urllib.error.URLError, OSError) as err:
            failure = str(getattr(err, "reason", err))
        if attempt < attempts:
            time.sleep(retry_wait_s * attempt)
    held = part.stat().st_size if part.exists() else 0
    raise NolaError(
        f"download of {url} failed after {attempts} attempts ({failure}); {part} keeps {held} bytes, "
        "rerun to resume, or use --mirror DIR with a local copy"
    )


def _download_once(url: str, part: Path, *, timeout_s: float, progress: bool, label: str) -> bool:
    """One request: append the missing bytes to `part`. True when the file is complete."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as response:
        resumed = offset > 0 and response.status == 206 and _range_start(response) == offset
        if response.status == 206 and not resumed:
            part.unlink(missing_ok=True)
            return False
        if not resumed:
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with (
            part.open("ab" if resumed else "wb") as handle,
            tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, desc=label, disable=not progress, leave=False
            ) as bar,
        ):
            received = offset
            while chunk := response.read(HASH_CHUNK):
                handle.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    return total is None or received >= total


def _range_start(response) -> int | None:
    """The first byte position of a 206 response's Content-Range (`bytes START-END/TOTAL`)."""
    content_range = response.headers.get("Content-Range", "")
    unit, _, span = content_range.partition(" ")
    start, _, _ = span.partition("-")
    return int(start) if unit == "bytes" and start.isdigit() else None
