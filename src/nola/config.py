"""The root Hydra schema: one typed node per config group, each defined next to its stage.

`conf/config.yaml` lists the defaults; every group file is merged into its dataclass, so an
unknown key or a wrong type is an error naming the key (see `nola.config.compose_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nola.adapters.config import AdapterConfig
from nola.data.config import TaskConfig
from nola.decode.config import DecodeConfig
from nola.errors import NolaError
from nola.model.config import ModelConfig
from nola.paths_config import PathsConfig
from nola.training.config import TrainConfig

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    name: str = "${task.name}_${model.name}_${adapter.kind}"  # run name (experiment configs set it)


def register_schemas() -> None:
    """Register the root schema with Hydra (idempotent; the ConfigStore is Hydra's registry)."""
    ConfigStore.instance().store(name="config_schema", node=Config)


def compose_config(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose conf/ with overrides outside a Hydra app (tests, `nola.params`), as a typed config."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    register_schemas()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as err:
        raise NolaError(f"invalid configuration: {str(err).splitlines()[0]}") from None


def resolved_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
