"""Fetch published GPT-2 checkpoints from the Hugging Face hub into a local cache.

Each file is verified by sha256: pinned here where known, otherwise the LFS sha256 the hub reports
in `X-Linked-Etag` for the exact revision. A file without a known checksum is refused. Downloads go
to `<file>.part` and resume with an HTTP Range request; the final name appears only after the
checksum matches. `NOLA_HUB_ENDPOINT` points the download elsewhere (a mirror, or a test server).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from nola.errors import NolaError

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20


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
    from nola.model.gpt2 import GPT2Config
    from nola.model.loading import hf_config_dict

    spec = HUB_MODELS[name]
    target = cache_root(cache_dir) / name
    target.mkdir(parents=True, exist_ok=True)
    endpoint = os.environ.get("NOLA_HUB_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    url = f"{endpoint}/{spec.repo}/resolve/{spec.revision}/model.safetensors"
    download_verified(url, target / "model.safetensors", spec.weights_sha256, timeout=timeout, what=name)
    config_text = json.dumps(hf_config_dict(GPT2Config.named(name)), indent=2)
    if not (target / "config.json").is_file() or (target / "config.json").read_text() != config_text:
        tmp = target / "config.json.tmp"
        tmp.write_text(config_text)
        os.replace(tmp, target / "config.json")
    return target


def download_verified(url: str, dest: Path, sha256: str | None, *, timeout: float, what: str) -> None:
    """Download `url` to `dest`, resuming `dest.part`, and verify sha256 before renaming."""
    checked = dest.with_name(dest.name + ".sha256")
    if dest.is_file() and checked.is_file() and checked.read_text().strip() == _sha256(dest):
        return
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the part is already complete
            response = None
        else:
            raise NolaError(f"downloading {what}: {url} answered HTTP {err.code}. {NO_WEIGHTS_HELP}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise NolaError(f"cannot download {what} from {url} ({reason}). {NO_WEIGHTS_HELP}") from None
    if response is not None:
        sha256 = sha256 or _hub_sha256(response.headers)
        if sha256 is None:
            raise NolaError(f"{url}: the hub reports no sha256 and none is pinned; refusing an unverified download")
        resumed = response.status == 206
        mode = "ab" if resumed else "wb"
        total = int(response.headers.get("Content-Length") or 0) + (offset if resumed else 0)
        with response, open(part, mode) as out, tqdm(
            total=total or None, initial=offset if resumed else 0, unit="B", unit_scale=True, desc=dest.name
        ) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    actual = _sha256(part)
    if sha256 is None or actual != sha256:
        part.unlink()
        raise NolaError(f"{url}: sha256 mismatch (expected {sha256}, got {actual}); the partial file was removed, retry")
    os.replace(part, dest)
    checked.write_text(actual + "\n")


def _hub_sha256(headers) -> str | None:
    """The LFS sha256 the hub reports for large files (X-Linked-Etag), or a sha256-looking ETag."""
    for key in ("X-Linked-Etag", "ETag"):
        value = (headers.get(key) or "").removeprefix("W/").strip('"')
        if re.fullmatch(r"[0-9a-f]{64}", value):
            return value
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
