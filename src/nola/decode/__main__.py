"""`python -m nola.decode [hydra overrides]`: beam-search a split with a trained adapter.

    python -m nola.decode experiment=e2e/nola_gpt2m                # runs/<name>/adapter, test split
    python -m nola.decode task=dart decode=dart decode.adapter_dir=path/to/adapter decode.split=valid
    torchrun --nproc_per_node=4 -m nola.decode experiment=e2e/nola_gpt2m
    python -m nola.decode decode.manifest=mixed.yaml decode.out_dir=runs/mixed   # many adapters, one run

A shell: the configuration is typed once and handed to `nola.decode.stage.decode_from_config` (the
stage `nola.run` runs too: the model is built as training builds it, with the adapter loaded and
merged; the contexts are the split's reference groups, in the reference files' order), which writes
`<split>_hypotheses.txt`, `.jsonl` and `decode.json` into `decode.out_dir` (default: the run
directory); a JSON summary is printed. With `decode.manifest` several tasks' splits are decoded
together, each with its own adapter, and scored per task (`nola.decode.mixed.decode_manifest`).
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from nola.allocator import keep_freed_memory
from nola.config import CONF_DIR, launch, typed_config
from nola.errors import exit_on_user_error


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    keep_freed_memory()
    out_dir = HydraConfig.get().runtime.output_dir
    typed = typed_config(cfg)
    if typed.decode.manifest is not None:
        from nola.decode.mixed import decode_manifest

        summary = decode_manifest(typed, typed.decode.out_dir or out_dir)
    else:
        from nola.decode.stage import decode_from_config

        summary = decode_from_config(typed, out_dir)
    if summary:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    launch(main)
