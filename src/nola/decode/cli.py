"""`python -m nola.decode [hydra overrides]`: beam-search a split with a trained adapter.

    python -m nola.decode experiment=e2e/nola_gpt2m                # runs/<name>/adapter, test split
    python -m nola.decode task=dart decode=dart decode.adapter_dir=path/to/adapter decode.split=valid
    torchrun --nproc_per_node=4 -m nola.decode experiment=e2e/nola_gpt2m
    python -m nola.decode decode.manifest=mixed.yaml decode.out_dir=runs/mixed   # many adapters, one run

A thin shell around `nola.decode.stage.decode_stage` (the stage `nola.run` runs too): the model is
built as training builds it, with the adapter loaded and merged; the contexts are the split's
reference groups, in the reference files' order. Writes `<split>_hypotheses.txt`, `.jsonl` and
`decode.json` into `decode.out_dir` (default: the run directory) and prints a JSON summary.
With `decode.manifest` several tasks' splits are decoded together, each with its own adapter, and
scored per task (`nola.decode.mixed`).
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from nola.config import CONF_DIR, launch, typed_config
from nola.allocator import keep_freed_memory
from nola.errors import NolaError, exit_on_user_error
from nola.layout import RunLayout


def decode_from_config(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Decode `cfg.decode.split` of `cfg.task` and write the hypothesis files; return the decode.json
    record without its reuse key (an empty dict on the non-main processes of a torchrun job)."""
    from nola.data import load_reference_groups
    from nola.decode.stage import decode_outputs, decode_stage

    typed_config(cfg)
    out = decode_outputs(cfg, Path(run_dir))
    adapter_dir = find_adapter(cfg, Path(run_dir))
    groups = load_reference_groups(cfg.task.data_dir, cfg.task.name, str(cfg.decode.split))
    decoded = decode_stage(cfg, out, adapter_dir, groups)
    if decoded is None:
        return {}
    return {key: value for key, value in decoded[1].items() if key != "key"}


def find_adapter(cfg: DictConfig, run_dir: Path) -> Path | None:
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


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    keep_freed_memory()
    out_dir = HydraConfig.get().runtime.output_dir
    if cfg.decode.manifest is not None:
        from nola.decode.mixed import decode_manifest

        typed_config(cfg)
        summary = decode_manifest(cfg, cfg.decode.out_dir or out_dir)
    else:
        summary = decode_from_config(cfg, out_dir)
    if summary:
        print(json.dumps(summary, indent=2))


def run() -> None:
    """Console entry point: schemas registered and group choices checked, then Hydra's app."""
    launch(main)
