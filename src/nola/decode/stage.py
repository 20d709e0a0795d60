"""The decode stage, written once: `python -m nola.decode` (`decode_from_config`) and the
`nola.pipeline` run both call `decode_stage`.

Every reference group's context of `decode.split` is decoded with the adapter merged into the
base (`nola.build.build_model(for_training=False)`) by microsoft/LoRA's beam search
(`nola.decode.hypotheses.decode_split`), and `<split>_hypotheses.txt` / `.jsonl` plus `decode.json`
are written (`nola.layout.RunLayout`). `decode.json` records what the hypotheses were made from
(base fingerprint and dtype, adapter sha256, the contexts, the search settings): when it matches, the files
are reused instead of decoded again. Under torchrun every process decodes its share of the
contexts and the main process writes the files (the others get None).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from nola.adapters.checkpoint import WEIGHTS_FILE
from nola.adapters.config import AdapterConfig
from nola.build import BaseDropout, build_model
from nola.data import ReferenceGroup, load_reference_groups, reference_files
from nola.data.config import TaskConfig
from nola.decode.config import DecodeConfig
from nola.decode.hypotheses import decode_split, write_hypotheses
from nola.errors import NolaError
from nola.fileio import (
    ensure_writable_dir,
    json_sha256,
    read_json,
    sha256_file,
    write_json_atomic,
)
from nola.layout import RunLayout
from nola.model.config import ModelConfig
from nola.paths_config import PathsConfig
from nola.runtime import broadcast_object, init_distributed, shutdown_distributed

SEARCH_KEYS = ("beam", "length_penalty", "no_repeat_ngram_size", "repetition_penalty", "max_new_tokens")


class DistributedTimeout(BaseDropout, Protocol):
    """What decoding reads of the training section: how long the process group may take to form
    (besides what every model build reads of it)."""

    dist_timeout_s: float


class DecodeSections(Protocol):
    """The typed sections the decode stage reads (`nola.config.Config` has them all)."""

    decode: DecodeConfig
    task: TaskConfig
    model: ModelConfig
    adapter: AdapterConfig
    paths: PathsConfig
    train: DistributedTimeout


def decode_settings(decode_cfg: DecodeConfig) -> dict[str, Any]:
    """The beam-search hyper-parameters of `decode` (microsoft/LoRA gpt2_beam.py), as decode.json records them."""
    return {**{key: getattr(decode_cfg, key) for key in SEARCH_KEYS}, "eos_ids": [int(i) for i in decode_cfg.eos_ids]}


def decode_outputs(cfg: DecodeSections, run_dir: Path) -> RunLayout:
    """Where decoding writes (`decode.out_dir`, else the run directory), checked before any work:
    the split must have references to score against, and the directory must be writable."""
    if str(cfg.decode.split) not in ("valid", "test"):
        raise NolaError(f"decode.split={cfg.decode.split!r}: decode the valid or the test split (they have references)")
    out_dir = Path(cfg.decode.out_dir) if cfg.decode.out_dir is not None else Path(run_dir)
    ensure_writable_dir(out_dir, what="decode.out_dir" if cfg.decode.out_dir is not None else "paths.runs_dir")
    return RunLayout(out_dir)


def decode_stage(cfg: DecodeSections, out: RunLayout, adapter_dir: Path | None,
                 groups: list[ReferenceGroup]) -> tuple[list[str], dict[str, Any]] | None:
    """(hypothesis texts, decode.json record) on the main process, None on the others."""
    split = cfg.decode.split
    ctx = init_distributed(cfg.decode.device, cfg.train.dist_timeout_s, key="decode.device")
    try:
        built = build_model(cfg, for_training=False, device=ctx.device, adapter_dir=adapter_dir)
        contexts = [group.context for group in groups]
        key = {
            "base_fingerprint": built.base_fingerprint,
            "dtype": cfg.model.dtype,
            "adapter_sha256": sha256_file(adapter_dir / WEIGHTS_FILE) if adapter_dir is not None else None,
            "contexts_sha256": json_sha256(contexts),
            "settings": decode_settings(cfg.decode),
        }
        reused = broadcast_object(ctx, _reusable(out, split, key, len(groups)) if ctx.is_main else None)
        if reused is not None:
            return reused if ctx.is_main else None
        started = time.perf_counter()
        source = str(reference_files(cfg.task.data_dir, cfg.task.name, split).contexts)
        found = decode_split(built.model, built.tokenizer, contexts, cfg.decode, source=source)
        decode_s = time.perf_counter() - started
        if not ctx.is_main:
            return None
        text_path, records_path = write_hypotheses(found, out.root, split)
        record = {
            "key": key,
            "hypotheses": str(text_path),
            "records": str(records_path),
            "sha256": sha256_file(text_path),
            "contexts": len(found),
            "ended_on_eos": sum(h.finished for h in found),
            "generated_tokens": sum(len(h.tokens) for h in found),
            "decode_s": round(decode_s, 3),
            "adapter_dir": str(adapter_dir) if adapter_dir is not None else None,
            "processes": ctx.world_size,
            "device": str(ctx.device),
        }
        write_json_atomic(out.decode_record, record)
        return [h.text for h in found], record
    finally:
        shutdown_distributed(ctx)


def _reusable(out: RunLayout, split: str, key: dict, count: int) -> tuple[list[str], dict] | None:
    """The hypotheses already on disk when decode.json says they were made from `key`, else None."""
    path = out.hypotheses(split)
    if not (path.is_file() and out.decode_record.is_file()):
        return None
    record = read_json(out.decode_record)
    hypotheses = path.read_text(encoding="utf-8").split("\n")[:-1]
    if record.get("key") == key and len(hypotheses) == count and record.get("sha256") == sha256_file(path):
        return hypotheses, record
    return None


def decode_from_config(cfg: DecodeSections, run_dir: str | Path) -> dict[str, Any]:
    """Decode `cfg.decode.split` of `cfg.task` and write the hypothesis files; return the decode.json
    record without its reuse key (an empty dict on the non-main processes of a torchrun job)."""
    out = decode_outputs(cfg, Path(run_dir))
    adapter_dir = find_adapter(cfg, Path(run_dir))
    groups = load_reference_groups(cfg.task.data_dir, cfg.task.name, cfg.decode.split)
    decoded = decode_stage(cfg, out, adapter_dir, groups)
    if decoded is None:
        return {}
    return {key: value for key, value in decoded[1].items() if key != "key"}


def find_adapter(cfg: DecodeSections, run_dir: Path) -> Path | None:
    """decode.adapter_dir, else the run directory's trained adapter; None decodes the bare base."""
    if cfg.decode.adapter_dir is not None:
        return Path(cfg.decode.adapter_dir)
    if cfg.adapter.kind == "none":
        return None
    saved = RunLayout(run_dir).adapter
    if not saved.is_dir():
        raise NolaError(
            f"no trained adapter at {saved}; train first (python -m nola.train with the same overrides), "
            "set decode.adapter_dir=DIR, or decode the bare base with adapter=none"
        )
    return saved
