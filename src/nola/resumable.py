"""Resumable downloads, the one implementation the data stage and the hub loader share.

A download streams into `<dest>.part`. A transfer that breaks is resumed with an HTTP Range request
(restarted from zero when the server ignores or rejects the range), up to `attempts` tries per call
with a growing wait between them; after that the `.part` file stays, so the next run resumes it.
A 4xx answer is final at once. The caller verifies the checksum and moves the file into place
(`nola.data.download.fetch_raw_file`, `nola.model.hub.download_verified`), so a destination only
ever appears complete and verified.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from nola.errors import NolaError
from nola.fileio import HASH_CHUNK

USER_AGENT = "nola/1"


def part_path(dest: Path) -> Path:
    """Where an unfinished download of `dest` accumulates."""
    return dest.with_name(dest.name + ".part")


def download_resumable(
    url: str,
    part: Path,
    *,
    label: str,
    help_text: str,
    expected_size: int | None = None,
    attempts: int = 3,
    timeout_s: float = 60.0,
    retry_wait_s: float = 2.0,
    progress: bool = True,
    opener: urllib.request.OpenerDirector | None = None,
    on_response: Callable[[object], None] | None = None,
) -> None:
    """Complete `part` from `url`, resuming from its current size; NolaError after `attempts` failures.

    expected_size: when known, a `.part` that already has it skips the request.
    help_text: appended to every error (what the user can do instead).
    opener: a urllib opener (e.g. one that records redirect headers); on_response(headers) is called
        before the body is read, and may raise a NolaError to refuse the download.
    """
    if expected_size is not None and part.exists() and part.stat().st_size == expected_size:
        return
    part.parent.mkdir(parents=True, exist_ok=True)
    failure = ""
    for attempt in range(1, attempts + 1):
        try:
            if _download_once(url, part, timeout_s=timeout_s, progress=progress, label=label, opener=opener,
                              on_response=on_response):
                return
            failure = "the connection closed before the end of the file"
        except urllib.error.HTTPError as err:
            if err.code == 416 and part.exists():
                return  # nothing left to fetch: the checksum decides whether the part is the file
            if 400 <= err.code < 500:
                raise NolaError(f"cannot download {label}: {url} answered HTTP {err.code} {err.reason}. {help_text}") from None
            failure = f"HTTP {err.code} {err.reason}"
        except (urllib.error.URLError, OSError) as err:
            failure = str(getattr(err, "reason", err))
        if attempt < attempts:
            time.sleep(retry_wait_s * attempt)
    held = part.stat().st_size if part.exists() else 0
    raise NolaError(
        f"cannot download {label} from {url}: failed after {attempts} attempts ({failure}); {part} keeps {held} "
        f"bytes, rerun to resume. {help_text}"
    )


def _download_once(url: str, part: Path, *, timeout_s: float, progress: bool, label: str, opener,
                   on_response) -> bool:
    """One request: append the missing bytes to `part`. True when the file is complete."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    with (opener or urllib.request.build_opener()).open(request, timeout=timeout_s) as response:
        if on_response is not None:
            on_response(response.headers)
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
