"""Fetch published GPT-2 checkpoints from the Hugging Face hub into a local cache.

Each file is verified by sha256: pinned here where known, otherwise the LFS sha256 the hub reports
in `X-Linked-Etag` for the exact revision. A file without a known checksum is refused. Downloads go
to `<file>.part` and resume with an HTTP Range request; the final name appears only after the
checksum matches. `NOLA_HUB_ENDPOINT` points the download elsewhere (a mirror, or a test server).
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nola.resumable import download_resumable, part_path
from nola.errors import NolaError
from nola.fileio import fsync_path, move_into_place, sha256_file, write_text_atomic
from nola.model.gpt2 import GPT2Config, hf_config_dict

DEFAULT_ENDPOINT = "https://huggingface.co"
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
    """Download `url` to `dest` (resumable, `nola.resumable`) and verify its sha256 before renaming.

    The expected sha256 is the pinned one, else the LFS sha256 the hub states (X-Linked-Etag on the
    redirect to its CDN, or a sha256-looking ETag); with neither the download is refused before its
    body is read. A verified file is recorded in `<dest>.sha256` and reused without a request.
    """
    checked = dest.with_name(dest.name + ".sha256")
    if dest.is_file() and checked.is_file():
        recorded = checked.read_text().strip()
        if (sha256 is None or recorded == sha256) and recorded == sha256_file(dest):
            return
    part = part_path(dest)
    redirects = _LinkedEtagRecorder()
    stated: dict[str, str | None] = {"sha256": sha256}

    def require_checksum(headers) -> None:
        stated["sha256"] = stated["sha256"] or redirects.sha256 or _hub_sha256(headers)
        if stated["sha256"] is None:
            raise NolaError(f"{url}: the hub reports no sha256 and none is pinned; refusing an unverified download")

    download_resumable(url, part, label=what, help_text=NO_WEIGHTS_HELP, attempts=RESUME_ATTEMPTS,
                       timeout_s=timeout, retry_wait_s=0.0, opener=urllib.request.build_opener(redirects),
                       on_response=require_checksum)
    expected = stated["sha256"] or sha256
    actual = sha256_file(part)
    if expected is None or actual != expected:
        part.unlink()
        raise NolaError(f"{url}: sha256 mismatch (expected {expected}, got {actual}); the partial file was removed, retry")
    fsync_path(part)
    move_into_place(part, dest)
    write_text_atomic(checked, actual + "\n")


class _LinkedEtagRecorder(urllib.request.HTTPRedirectHandler):
    """Follows redirects, keeping the sha256 the hub states in the redirect to its CDN."""

    def __init__(self) -> None:
        super().__init__()
        self.sha256: str | None = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.sha256 = self.sha256 or _hub_sha256(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _hub_sha256(headers) -> str | None:
    """The LFS sha256 the hub reports for large files (X-Linked-Etag), or a sha256-looking ETag."""
    for key in ("X-Linked-Etag", "ETag"):
        value = (headers.get(key) or "").removeprefix("W/").strip('"')
        if re.fullmatch(r"[0-9a-f]{64}", value):
            return value
    return None
