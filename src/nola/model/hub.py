"""Fetch published GPT-2 checkpoints from the Hugging Face hub into a local cache.

Each file is verified by sha256: pinned here where known, otherwise the LFS sha256 the hub reports
in `X-Linked-Etag` for the exact revision. A file without a known checksum is refused. Downloads go
to `<file>.part` and resume with an HTTP Range request; the final name appears only after the
checksum matches. `NOLA_HUB_ENDPOINT` points the download elsewhere (a mirror, or a test server).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from nola.fileio import sha256_file, write_text_atomic
from nola.errors import NolaError
from nola.model.gpt2 import GPT2Config, hf_config_dict

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20
RESUME_ATTEMPTS = 3


@dataclass(frozen=True)
class HubModel:
    repo: str
    revision: str
    weights_sha256: str | None = None  # pinned; else the hub's LFS sha256 for the revision


HUB_MODELS: dict[str, HubModel] = {
    "gpt2": HubModel(
        "openai-community/gpt2",
        "607a30d783dfa663caf39e06633721c8d4cfcd7e",
        "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707",
    ),
    "gpt2-medium": HubModel("openai-community/gpt2-medium", "main"),
    "gpt2-large": HubModel("openai-community/gpt2-large", "main"),
    "gpt2-xl": HubModel("openai-community/gpt2-xl", "main"),
}

NO_WEIGHTS_HELP = (
    "No GPT-2 weights can be downloaded here. Supply them yourself: set model.source to a Hugging Face "
    "GPT-2 directory (config.json + model.safetensors) or to LoRA's gpt2-medium-pytorch_model.bin, "
    "or run `make mini`, the offline reproduction that needs no pretrained weights."
)


def cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("NOLA_CACHE", Path.home() / ".cache" / "nola")) / "hub"


def fetch_hub_model(name: str, *, cache_dir: str | Path | None = None, timeout: float = 10.0) -> Path:
    """Download (or reuse) a published GPT-2 into the cache; return its HF-layout directory.

    Only `model.safetensors` is fetched (an LFS file, so the hub reports its sha256); `config.json`
    is written from the published architecture, which `nola.model.gpt2.NAMED_CONFIGS` records.
    """
    if name not in HUB_MODELS:
        raise NolaError(f"unknown hub model {name!r}; known: {', '.join(HUB_MODELS)}")
    spec = HUB_MODELS[name]
    target = cache_root(cache_dir) / name
    target.mkdir(parents=True, exist_ok=True)
    endpoint = os.environ.get("NOLA_HUB_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    url = f"{endpoint}/{spec.repo}/resolve/{spec.revision}/model.safetensors"
    download_verified(url, target / "model.safetensors", spec.weights_sha256, timeout=timeout, what=name)
    config_text = json.dumps(hf_config_dict(GPT2Config.named(name)), indent=2)
    if not (target / "config.json").is_file() or (target / "config.json").read_text() != config_text:
        write_text_atomic(target / "config.json", config_text)
    return target


def download_verified(url: str, dest: Path, sha256: str | None, *, timeout: float, what: str) -> None:
    """Download `url` to `dest`, resuming `dest.part`, and verify sha256 before renaming.

    A connection that drops midway is resumed with a Range request, up to RESUME_ATTEMPTS times in
    one call; after that the partial file stays and the next call resumes it.
    """
    checked = dest.with_name(dest.name + ".sha256")
    if dest.is_file() and checked.is_file():
        recorded = checked.read_text().strip()
        if (sha256 is None or recorded == sha256) and recorded == sha256_file(dest):
            return
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, RESUME_ATTEMPTS + 1):
        try:
            sha256 = _download_to_part(url, part, sha256, timeout=timeout, what=what)
            break
        except (http.client.HTTPException, OSError) as err:
            if attempt == RESUME_ATTEMPTS:
                size = part.stat().st_size if part.is_file() else 0
                raise NolaError(
                    f"downloading {what} from {url} was interrupted {attempt} times ({err or type(err).__name__}); "
                    f"{size} bytes are kept in {part}: run again to resume"
                ) from None
    actual = sha256_file(part)
    if actual != sha256:
        part.unlink()
        raise NolaError(f"{url}: sha256 mismatch (expected {sha256}, got {actual}); the partial file was removed, retry")
    os.replace(part, dest)
    write_text_atomic(checked, actual + "\n")


class _LinkedEtagRecorder(urllib.request.HTTPRedirectHandler):
    """Follows redirects, keeping the sha256 the hub states in the redirect to its CDN."""

    def __init__(self) -> None:
        super().__init__()
        self.sha256: str | None = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.sha256 = self.sha256 or _hub_sha256(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _download_to_part(url: str, part: Path, sha256: str | None, *, timeout: float, what: str) -> str:
    """Append the rest of `url` to `part` (from its current size); return the sha256 to check against.

    Errors before any byte arrives become NolaError; a connection lost while reading propagates, so
    the caller can resume.
    """
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    redirects = _LinkedEtagRecorder()
    try:
        response = urllib.request.build_opener(redirects).open(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the part is already complete (or longer than the file)
            if sha256:
                return sha256
            part.unlink()
            return _download_to_part(url, part, sha256, timeout=timeout, what=what)
        raise NolaError(f"downloading {what}: {url} answered HTTP {err.code}. {NO_WEIGHTS_HELP}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        reason = getattr(err, "reason", err)
        raise NolaError(f"cannot download {what} from {url} ({reason}). {NO_WEIGHTS_HELP}") from None
    with response:
        sha256 = sha256 or redirects.sha256 or _hub_sha256(response.headers)
        if sha256 is None:
            raise NolaError(f"{url}: the hub reports no sha256 and none is pinned; refusing an unverified download")
        resumed = response.status == 206
        start = offset if resumed else 0
        length = int(response.headers.get("Content-Length") or 0)
        received = 0
        with open(part, "ab" if resumed else "wb") as out, tqdm(
            total=(length + start) or None, initial=start, unit="B", unit_scale=True, desc=part.name.removesuffix(".part")
        ) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if received < length:  # http.client returns b"" at a dropped connection instead of raising
        raise http.client.IncompleteRead(b"", length - received)
    return sha256


def _hub_sha256(headers) -> str | None:
    """The LFS sha256 the hub reports for large files (X-Linked-Etag), or a sha256-looking ETag."""
    for key in ("X-Linked-Etag", "ETag"):
        value = (headers.get(key) or "").removeprefix("W/").strip('"')
        if re.fullmatch(r"[0-9a-f]{64}", value):
            return value
    return None
