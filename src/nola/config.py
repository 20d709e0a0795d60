"""The root Hydra schema and the typed boundary every entry point crosses before any work.

`conf/config.yaml` lists the defaults; every group file is merged into its dataclass, so an
unknown key or a wrong type is an error naming the key (see `compose_config`). Merging does not
run the dataclasses' own range checks (`__post_init__`): `typed_config` builds the dataclasses
from the composed config, so every check runs, before any data is read or any model is built.
`check_group_choices` turns a misspelled group choice (`experiment=e2e/nola_gpt2mm`) into an
error listing the available configs, before Hydra composes anything; `launch` runs both for a
Hydra app's command line.

This module is the only place a Hydra `DictConfig` becomes typed: the commands (`nola.train`,
`nola.run`, `python -m nola.decode`, ...) call `typed_config` (or `load_config`, `seed_configs`)
once, and every stage below them takes the typed `Config` or the sections it needs.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nola.adapters.config import AdapterConfig
from nola.data.config import TaskConfig
from nola.decode.config import DecodeConfig
from nola.errors import NolaError, exit_on_user_error
from nola.fileio import ensure_writable_dir
from nola.model.config import ModelConfig
from nola.paths_config import PathsConfig
from nola.serve.config import ServeConfig
from nola.training.config import TrainConfig


def _conf_dir() -> Path:
    """conf/ of the checkout (editable installs), else the copy installed inside the package."""
    checkout = Path(__file__).resolve().parents[2] / "conf"
    return checkout if (checkout / "config.yaml").is_file() else Path(__file__).resolve().parent / "conf"


CONF_DIR = _conf_dir()
GROUPS = ("model", "adapter", "task", "train", "decode", "paths", "serve", "experiment")


@dataclass
class Config:
    # train before adapter: adapter.base_seed follows train.seed, whose own check names it first
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    name: str = "${task.name}_${model.name}_${adapter.kind}"  # run name (experiment configs set it)
    seeds: int = 1  # nola.run: train this many seeds from train.seed, each in <run dir>/seed-<seed>

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise NolaError(f"seeds={self.seeds} must be at least 1 (the number of seeds nola.run trains)")


def register_schemas() -> None:
    """Register the root schema with Hydra (idempotent; the ConfigStore is Hydra's registry)."""
    ConfigStore.instance().store(name="config_schema", node=Config)


def available_choices(group: str) -> list[str]:
    """The config names of one group (`experiment` names include their folder: e2e/nola_gpt2m)."""
    root = CONF_DIR / group
    return sorted(str(path.relative_to(root).with_suffix("")) for path in root.rglob("*.yaml"))


def check_group_choices(overrides: list[str]) -> None:
    """Raise a NolaError listing the available configs for a group choice that has no file."""
    for override in overrides:
        match = re.fullmatch(r"[+~]?([A-Za-z_]+)=(.*)", override)
        if not match or match[1] not in GROUPS or "(" in match[2]:
            continue  # not a group choice, or a sweep function (range, glob, ...)
        group, value = match[1], match[2]
        known = available_choices(group)
        for choice in value.split(","):
            if choice not in ("", "null") and choice not in known:
                raise NolaError(f"{group}={choice}: there is no conf/{group}/{choice}.yaml; available: {', '.join(known)}")


def compose_config(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose conf/ with overrides outside a Hydra app (tests, `nola.params`), as a typed config."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    register_schemas()
    check_group_choices(list(overrides or []))
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as err:
        raise NolaError(f"invalid configuration: {str(err).splitlines()[0]}") from None


def typed_config(cfg: DictConfig) -> Config:
    """`cfg` as the typed dataclasses, every schema's checks run (the one typed boundary)."""
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise NolaError(f"invalid configuration: {str(err).splitlines()[0]}") from None


def load_config(overrides: list[str] | None = None) -> Config:
    """`compose_config` then `typed_config`: conf/ with overrides, typed and checked."""
    return typed_config(compose_config(overrides))


def seed_configs(cfg: DictConfig) -> list[Config]:
    """The typed configuration of each of `cfg.seeds` consecutive seeds from train.seed.

    Done before typing because settings that follow train.seed by interpolation (adapter.base_seed
    is `${train.seed}` in conf/adapter/*.yaml unless pinned) must follow each seed.
    """
    configs = [typed_config(cfg)]  # the first seed, and every check (seeds >= 1 among them) before any copy
    for offset in range(1, configs[0].seeds):
        seeded = cfg.copy()
        seeded.train.seed = int(cfg.train.seed) + offset
        configs.append(typed_config(seeded))
    return configs


class RunDirCheck(Callback):
    """Hydra callback: an unwritable run/sweep directory is a one-line error before Hydra creates it.

    Enabled in conf/config.yaml under `hydra.callbacks` (`_target_: nola.config.RunDirCheck`).
    """

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        exit_on_user_error(ensure_writable_dir)(Path(config.hydra.run.dir), what="paths.runs_dir (or hydra.run.dir)")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        exit_on_user_error(ensure_writable_dir)(Path(config.hydra.sweep.dir), what="paths.runs_dir (or hydra.sweep.dir)")


def launch(main: Callable[[], object]) -> None:
    """Run a Hydra app's `main` from the command line: schemas registered, group choices checked."""
    register_schemas()
    exit_on_user_error(check_group_choices)(sys.argv[1:])
    main()


