"""Fetching raw files: mirror copies, verified downloads, resume after an interruption.

A loopback http.server in a thread serves a payload; its handler can cut the first N responses
short (headers promise the whole file, the body stops early) and can honour or ignore Range.
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nola.data.download import fetch_raw_file, part_path
from nola.fileio import digest_file
from nola.data.sources import AcceptedDigest, RawFile
from nola.errors import NolaError

PAYLOAD = bytes(range(256)) * 300  # 76,800 bytes


class Server:
    """Serves PAYLOAD at /file; `cut_first` responses stop after `cut_at` bytes."""

    def __init__(self, *, cut_first: int = 0, cut_at: int = 10_000, honour_range: bool = True):
        self.cut_first, self.cut_at, self.honour_range = cut_first, cut_at, honour_range
        self.range_headers: list[str | None] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server naming)
                if self.path != "/file":
                    self.send_error(404)
                    return
                requested = self.headers.get("Range")
                owner.range_headers.append(requested)
                start = int(requested[len("bytes=") :].rstrip("-")) if requested and owner.honour_range else 0
                body = PAYLOAD[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if owner.cut_first > 0:
                    owner.cut_first -= 1
                    self.wfile.write(body[: owner.cut_at])
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/file"

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def raw_file(
    url: str, *, sha256: str | None = None, git_blob: str | None = None, size: int | None = len(PAYLOAD)
) -> RawFile:
    sha256 = hashlib.sha256(PAYLOAD).hexdigest() if sha256 is None and git_blob is None else sha256
    return RawFile(
        path="e2e/test.txt",
        dest="raw/e2e/test.txt",
        group="e2e",
        url=url,
        accept=(AcceptedDigest(origin="test payload", size=size, sha256=sha256, git_blob=git_blob),),
    )


def fetch(raw: RawFile, data_dir, **kwargs):
    return fetch_raw_file(raw, data_dir, progress=False, retry_wait_s=0.0, timeout_s=10.0, **kwargs)


def test_download_verifies_and_skips_when_present(tmp_path):
    with Server() as server:
        first = fetch(raw_file(server.url), tmp_path)
        again = fetch(raw_file(server.url), tmp_path)
    assert first.action == "downloaded" and again.action == "present"
    assert (tmp_path / "raw/e2e/test.txt").read_bytes() == PAYLOAD
    assert server.range_headers == [None]


def test_interrupted_download_resumes_with_a_range_request(tmp_path):
    with Server(cut_first=1, cut_at=10_000) as server:
        result = fetch(raw_file(server.url), tmp_path)
    assert result.action == "downloaded" and result.path.read_bytes() == PAYLOAD
    assert server.range_headers == [None, "bytes=10000-"]
    assert not part_path(result.path).exists()


def test_server_ignoring_range_restarts_from_zero(tmp_path):
    with Server(cut_first=1, honour_range=False) as server:
        result = fetch(raw_file(server.url), tmp_path)
    assert result.path.read_bytes() == PAYLOAD
    assert server.range_headers == [None, "bytes=10000-"]


def test_persistent_interruptions_keep_the_part_file_for_the_next_run(tmp_path):
    dest = tmp_path / "raw/e2e/test.txt"
    with Server(cut_first=2, cut_at=5_000) as server:
        with pytest.raises(NolaError, match=r"failed after 2 attempts .* keeps 10000 bytes, rerun to resume"):
            fetch(raw_file(server.url), tmp_path, attempts=2)
        assert not dest.exists() and part_path(dest).stat().st_size == 10_000
        result = fetch(raw_file(server.url), tmp_path)
    assert result.path.read_bytes() == PAYLOAD
    assert server.range_headers == [None, "bytes=5000-", "bytes=10000-"]


def test_checksum_mismatch_leaves_nothing_behind(tmp_path):
    dest = tmp_path / "raw/e2e/test.txt"
    with Server() as server, pytest.raises(NolaError, match=r"checksum mismatch for raw/e2e/test\.txt from http"):
        fetch(raw_file(server.url, sha256="0" * 64), tmp_path)
    assert not dest.exists() and not part_path(dest).exists()


def test_missing_url_is_a_nola_error(tmp_path):
    with Server() as server, pytest.raises(NolaError, match="HTTP 404"):
        fetch(raw_file(server.url + "-gone"), tmp_path)


def test_git_blob_id_verification_matches_git_hash_object(tmp_path):
    sample = tmp_path / "sample.bin"
    sample.write_bytes(PAYLOAD)
    git = subprocess.run(["git", "hash-object", str(sample)], capture_output=True, text=True)
    if git.returncode != 0:
        pytest.skip("git is not available")
    assert digest_file(sample).git_blob == git.stdout.strip()
    with Server() as server:
        result = fetch(raw_file(server.url, git_blob=git.stdout.strip(), size=None), tmp_path / "data")
    assert result.action == "downloaded"


def test_mirror_copy_is_verified(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "e2e").mkdir(parents=True)
    (mirror / "e2e" / "test.txt").write_bytes(PAYLOAD)
    assert fetch(raw_file("http://unused.invalid/"), tmp_path / "a", mirror=mirror).action == "copied"
    (mirror / "e2e" / "test.txt").write_bytes(PAYLOAD[:-1] + b"x")
    with pytest.raises(NolaError, match=r"checksum mismatch for raw/e2e/test\.txt from .*mirror"):
        fetch(raw_file("http://unused.invalid/"), tmp_path / "b", mirror=mirror)
    assert not any((tmp_path / "b").rglob("*.txt*")) and not any((tmp_path / "b").rglob(".test*"))
    with pytest.raises(NolaError, match="has no e2e/test.txt"):
        fetch(raw_file("http://unused.invalid/"), tmp_path / "c", mirror=tmp_path / "empty")


def test_damaged_destination_is_fetched_again(tmp_path, capsys):
    dest = tmp_path / "raw/e2e/test.txt"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(PAYLOAD[:100])
    with Server() as server:
        result = fetch(raw_file(server.url), tmp_path)
    assert result.action == "downloaded" and dest.read_bytes() == PAYLOAD
    assert "does not match its checksum" in capsys.readouterr().err


def test_complete_part_file_is_verified_without_a_request(tmp_path):
    dest = tmp_path / "raw/e2e/test.txt"
    dest.parent.mkdir(parents=True)
    part_path(dest).write_bytes(PAYLOAD)
    with Server() as server:
        result = fetch(raw_file(server.url), tmp_path)
    assert result.action == "downloaded" and server.range_headers == []
