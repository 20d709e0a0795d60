"""The files of a run directory, named in one place.

    runs/<name>/                      (paths.runs_dir / name; hydra.run.dir)
      config.yaml                     the resolved configuration            nola.training.job
      tensorboard/                    training curves                       nola.training.monitor
      checkpoints/                    resumable training state              nola.training.checkpoint
      adapter/                        the final adapter (adapter.safetensors + adapter_config.json)
      epochs/epoch-<n>/               the adapter at the end of epoch n    nola.training.job
                                      (+ valid_hypotheses.txt etc. when chosen by validation BLEU)
      train_metrics.json              the training record                   nola.training.job
      <split>_hypotheses.txt          one hypothesis per reference group    nola.decode
      <split>_hypotheses.jsonl        index, context, tokens, score, text   nola.decode
      decode.json                     what the hypotheses were made from    nola.decode.stage
      results.json                    scores and provenance (nola.tables.schema)  nola.pipeline

Decoding writes its three files into `decode.out_dir` when that is set, else the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RESULTS_NAME = "results.json"


@dataclass(frozen=True)
class RunLayout:
    """Every file of one run directory (see the module docstring)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    def epoch_adapter(self, epoch: int) -> Path:
        """The adapter saved at the end of epoch `epoch` (1-based)."""
        return self.root / "epochs" / f"epoch-{epoch}"

    @property
    def train_metrics(self) -> Path:
        return self.root / "train_metrics.json"

    @property
    def decode_record(self) -> Path:
        return self.root / "decode.json"

    @property
    def results(self) -> Path:
        return self.root / RESULTS_NAME

    def hypotheses(self, split: str) -> Path:
        """The scorers' input: one line per reference group."""
        return self.root / f"{split}_hypotheses.txt"

    def hypothesis_records(self, split: str) -> Path:
        return self.root / f"{split}_hypotheses.jsonl"
