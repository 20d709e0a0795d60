"""The tiny fixture mirror (tests/fixtures/data/mirror) and a sources.json that accepts its files."""

from __future__ import annotations

import json
from pathlib import Path

from nola.fileio import digest_file
from nola.data.sources import default_sources_path

MIRROR = Path(__file__).resolve().parent / "fixtures" / "data" / "mirror"


def sources_for_mirror(mirror: Path, destination: Path) -> Path:
    """The repository's sources.json with the accepted digests replaced by the mirror files' own."""
    document = json.loads(default_sources_path().read_text(encoding="utf-8"))
    for entry in document["files"]:
        digest = digest_file(mirror / entry["path"])
        entry["accept"] = [{"origin": "fixture", "bytes": digest.size, "sha256": digest.sha256, "git_blob": None}]
    destination.write_text(json.dumps(document), encoding="utf-8")
    return destination
