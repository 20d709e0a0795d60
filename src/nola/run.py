"""One experiment end to end: `python -m nola.run [hydra overrides]`.

`python -m nola.run experiment=e2e/nola_gpt2m` is a paper-table cell: train, choose the epoch,
decode, score and write results.json (`nola.pipeline.run`; its docstring gives every stage and what
is reused on a rerun, so rerunning the same command resumes wherever it stopped). `seeds=N` runs N
seeds (train.seed, train.seed + 1, ...), each in `<run dir>/seed-<seed>`. The metrics are printed
as JSON. A shell: the configuration is typed once (`nola.config.seed_configs`) and handed on.
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from nola.allocator import keep_freed_memory
from nola.config import CONF_DIR, launch, seed_configs
from nola.errors import exit_on_user_error
from nola.pipeline import run_seeds
from nola.tables.schema import headline_bleu


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    """The objective a Hydra sweeper maximises: BLEU (WebNLG: over all categories) as results.json holds
    it, averaged over the seeds when `seeds` > 1."""
    from hydra.core.hydra_config import HydraConfig

    keep_freed_memory()
    runtime = HydraConfig.get().runtime
    configs = seed_configs(cfg)
    results = [r for r in run_seeds(configs, runtime.output_dir, experiment=runtime.choices.get("experiment")) if r]
    if not results:  # another process of a torchrun job
        return float("nan")
    print(json.dumps(results[0]["metrics"] if len(results) == 1 else
                     {f"seed-{r['seed']}": r["metrics"] for r in results}, indent=2))
    bleu = [headline_bleu(r["task"], r["metrics"]) for r in results]
    return float(sum(bleu) / len(bleu))


if __name__ == "__main__":
    launch(main)
