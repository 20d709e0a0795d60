"""Several tasks' splits, each with its own adapter, decoded in one mixed run (`decode.manifest=FILE`).

    python -m nola.decode decode.manifest=mixed.yaml model.source=... decode.out_dir=runs/mixed

The manifest (a YAML or JSON file you write, here mixed.yaml) lists what to decode:

    - {name: e2e, task: e2e, split: test, adapter_dir: runs/e2e_nola/adapter}
    - {name: webnlg, task: webnlg, split: test, adapter_dir: runs/webnlg_nola/adapter}
    - {name: dart, task: dart, split: test, adapter_dir: runs/dart_nola/adapter}
    - {name: base-e2e, task: e2e, split: test, adapter_dir: null}     # the base alone

(`data_dir` per entry is optional, default paths.data_dir.) Every adapter is loaded into one
`nola.adapters.bank.AdapterBank` on the base (`model`), all contexts go through the beam search
together, each with its entry's adapter, and each entry gets `<out>/<name>/<split>_hypotheses.txt`
and `.jsonl` (the single-task files) plus `scores.json`: the task's official-equivalent metrics
(`nola.tasks.score_groups`) and BLEU's bootstrap interval.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nola.adapters.bank import AdapterBank
from nola.build import base_only, build_model
from nola.data import load_reference_groups
from nola.data.references import EVAL_SPLITS
from nola.decode.hypotheses import decode_split, write_hypotheses
from nola.decode.stage import DecodeSections
from nola.errors import NolaError
from nola.fileio import ensure_writable_dir, write_json_atomic
from nola.runtime import pick_device, read_environment
from nola.stats import bootstrap_record
from nola.tasks import REGISTRY, TABLE_ORDER, bleu_segments, score_groups

SCORES_NAME = "scores.json"
ENTRY_KEYS = {"name", "task", "split", "adapter_dir", "data_dir"}


@dataclass(frozen=True)
class ManifestEntry:
    name: str
    task: str
    split: str
    adapter_dir: Path | None
    data_dir: Path


def read_manifest(path: str | Path, default_data_dir: str | Path) -> list[ManifestEntry]:
    """The entries of a manifest file, each checked; errors name the file, the entry and the key."""
    path = Path(path)
    if not path.is_file():
        raise NolaError(f"decode.manifest={path}: no such file; write a YAML/JSON list of "
                        "{name, task, split, adapter_dir} entries (see nola/decode/mixed.py)")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OmegaConfBaseException, ValueError, OSError) as err:
        raise NolaError(f"{path}: not valid YAML/JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, list) or not raw:
        raise NolaError(f"{path}: the manifest must be a non-empty list of entries")
    entries, names = [], set()
    for index, item in enumerate(raw):
        where = f"{path}: entry {index}"
        if not isinstance(item, dict):
            raise NolaError(f"{where} must be a mapping with name, task, split, adapter_dir")
        unknown = sorted(set(item) - ENTRY_KEYS)
        if unknown:
            raise NolaError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(sorted(ENTRY_KEYS))}")
        name, task, split = item.get("name"), item.get("task"), item.get("split", "test")
        if not isinstance(name, str) or not name or "/" in name or name in names:
            raise NolaError(f"{where}: key 'name' must be a unique non-empty name without '/', got {name!r}")
        if task not in REGISTRY:
            raise NolaError(f"{where}: key 'task' is {task!r}; use one of {', '.join(TABLE_ORDER)}")
        if split not in EVAL_SPLITS:
            raise NolaError(f"{where}: key 'split' is {split!r}; use one of {', '.join(EVAL_SPLITS)}")
        adapter = item.get("adapter_dir")
        if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
            raise NolaError(f"{where}: key 'adapter_dir' {adapter!r} holds no adapter_config.json")
        names.add(name)
        entries.append(ManifestEntry(name, task, split, Path(adapter) if adapter is not None else None,
                                     Path(item.get("data_dir") or default_data_dir)))
    return entries


def decode_manifest(cfg: DecodeSections, out_dir: str | Path) -> dict[str, Any]:
    """Decode every manifest entry in one mixed run, write its files and scores; return a summary."""
    entries = read_manifest(cfg.decode.manifest, cfg.paths.data_dir)
    out_dir = Path(out_dir)
    for entry in entries:
        ensure_writable_dir(out_dir / entry.name, what="decode.out_dir")
    groups = {entry.name: load_reference_groups(entry.data_dir, entry.task, entry.split) for entry in entries}
    base_cfg = base_only(cfg)
    if read_environment(os.environ)[0] > 1:
        raise NolaError("decode.manifest decodes in one process; run it without torchrun")
    built = build_model(base_cfg, for_training=False, device=pick_device(cfg.decode.device, key="decode.device"))
    bank = AdapterBank(built.model, built.base_fingerprint)
    for entry in entries:
        if entry.adapter_dir is not None:
            bank.add(entry.name, entry.adapter_dir)
    contexts, adapters = [], []
    for entry in entries:
        contexts += [group.context for group in groups[entry.name]]
        adapters += [entry.name if entry.adapter_dir is not None else None] * len(groups[entry.name])
    started = time.perf_counter()
    found = decode_split(built.model, built.tokenizer, contexts, cfg.decode, adapters=adapters)
    decode_s = time.perf_counter() - started
    summary, start = {"decode_s": round(decode_s, 3), "contexts": len(contexts), "entries": {}}, 0
    for entry in entries:
        mine = found[start:start + len(groups[entry.name])]
        start += len(mine)
        hypotheses = [replace(h, index=i) for i, h in enumerate(mine)]
        write_hypotheses(hypotheses, out_dir / entry.name, entry.split)
        texts = [h.text for h in hypotheses]
        references = [group.references for group in groups[entry.name]]
        record = {"name": entry.name, "task": entry.task, "split": entry.split,
                  "adapter_dir": str(entry.adapter_dir) if entry.adapter_dir else None,
                  "contexts": len(texts), "metrics": score_groups(entry.task, groups[entry.name], texts),
                  "bleu_interval": bootstrap_record([bleu_segments(entry.task, references, texts)])}
        write_json_atomic(out_dir / entry.name / SCORES_NAME, record)
        summary["entries"][entry.name] = record
    return summary
