"""Fine-tune GPT-2 with an adapter: `python -m nola.train [hydra overrides]`.

`python -m nola.train task=e2e adapter=nola model=gpt2-medium` is the NOLA paper's GPT-2 M E2E run
(the default); `experiment=e2e/lora_gpt2m` selects a paper-table cell; `-m adapter=lora,nola` sweeps;
`--cfg job` prints the composed configuration. Rerunning the same command continues from the run's
last checkpoint. Under `torchrun --nproc_per_node=N` the configured batch is the global batch.

A shell: the configuration is typed once (`nola.config.typed_config`) and handed to
`nola.training.job.train`, which writes the run directory (hydra.run.dir = runs/<name>, files named
by `nola.layout.RunLayout`): config.yaml (resolved), tensorboard/, checkpoints/, adapter/ (the final
adapter) and train_metrics.json.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from nola.allocator import keep_freed_memory
from nola.config import CONF_DIR, launch, typed_config
from nola.errors import exit_on_user_error
from nola.training.job import train


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    """The objective a Hydra sweeper minimises: the final validation loss (token mean)."""
    from hydra.core.hydra_config import HydraConfig

    keep_freed_memory()
    return train(typed_config(cfg), HydraConfig.get().runtime.output_dir)["valid_loss"]


if __name__ == "__main__":
    launch(main)
