"""Every config composes and validates; every paper-table cell carries its paper's recipe and trains
two steps on the tiny model; configuration mistakes are one-line errors."""

from __future__ import annotations

import pytest

from nola.config import CONF_DIR, compose_config, load_config
from nola.errors import NolaError
from nola.training.job import train
from train_support import tiny_overrides, write_dataset

pytestmark = pytest.mark.usefixtures("single_thread")

GROUPS = ("model", "adapter", "task", "train", "decode", "paths")
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))]
EXPERIMENTS = sorted(str(p.relative_to(CONF_DIR / "experiment").with_suffix("")) for p in (CONF_DIR / "experiment").rglob("*.yaml"))

REFERENCE_EXACT = {  # microsoft/LoRA examples/NLG/src: optimizer.py AdamW, gpt2_ft.py loss / grad_acc, float32,
    # data_utils.py FT_Dataset batches
    "train.optimizer": "lora_adamw", "train.loss_normalization": "batch_mean", "train.precision": "fp32",
    "task.batching": "lora", "task.last_batch": "fill",
}
LORA_M = {  # Hu et al., ICLR 2022, Table 11 (E2E / WebNLG columns) and microsoft/LoRA examples/NLG README
    "adapter.kind": "lora", "adapter.rank": 4, "adapter.alpha": 32, "adapter.dropout": 0.1,
    "adapter.targets": ["q", "v"], "train.lr": 2e-4, "train.batch_size": 8, "train.grad_accum": 1,
    "train.epochs": 5, "train.warmup_steps": 500, "train.weight_decay": 0.01, "train.label_smoothing": 0.1,
    "train.adam_beta2": 0.999, "train.adam_eps": 1e-6, "train.max_grad_norm": 0.0, "train.seed": 110,
    "train.base_dropout": 0.0, **REFERENCE_EXACT,
}
NOLA_M = {  # Koohpayegani et al., ICLR 2024: gpt/scripts/finetune_gpt2m_e2e_qv_nola.sh
    "adapter.kind": "nola", "adapter.rank": 8, "adapter.alpha": 8, "adapter.num_basis_a": 512,
    "adapter.num_basis_b": 512, "adapter.targets": ["q", "v"], "adapter.dropout": 0.0, "train.lr": 5e-3,
    "train.batch_size": 8, "train.grad_accum": 1, "train.epochs": 5, "train.warmup_steps": 500,
    "train.weight_decay": 0.0, "train.label_smoothing": 0.1, "train.adam_beta2": 0.999, "train.adam_eps": 1e-6,
    "train.max_grad_norm": 0.0, "train.seed": 110, "train.base_dropout": 0.0, "adapter.init": "reference",
    **REFERENCE_EXACT,
}
PAPER_CELLS = {
    "e2e/nola_gpt2m": {**NOLA_M, "model.name": "gpt2-medium", "task.name": "e2e"},
    "e2e/nola_gpt2l": {  # gpt/scripts/finetune_gpt2l_e2e_qv_nola.sh: 4 x grad-acc 4, warmup 500 micro-batches
        **NOLA_M, "model.name": "gpt2-large", "task.name": "e2e", "adapter.alpha": 2, "adapter.num_basis_a": 256,
        "adapter.num_basis_b": 256, "train.lr": 1e-2, "train.batch_size": 16, "train.grad_accum": 4,
        "train.warmup_steps": 500,
    },
    "e2e/lora_gpt2m": {**LORA_M, "model.name": "gpt2-medium", "task.name": "e2e"},
    "e2e/lora_gpt2m_r1": {**LORA_M, "model.name": "gpt2-medium", "task.name": "e2e", "adapter.rank": 1},
    "e2e/lora_gpt2l": {**LORA_M, "model.name": "gpt2-large", "task.name": "e2e"},
    "e2e/ft_gpt2m": {  # Li & Liang (2021), XiangLi1999/PrefixTuning gpt2/train_e2e.py + HF Trainer defaults
        "model.name": "gpt2-medium", "task.name": "e2e", "adapter.kind": "full", "train.lr": 5e-5,
        "train.batch_size": 10, "train.epochs": 5, "train.warmup_steps": 100, "train.weight_decay": 0.0,
        "train.adam_eps": 1e-8, "train.max_grad_norm": 1.0, "train.label_smoothing": 0.0, "train.base_dropout": 0.1,
    },
    "dart/nola_gpt2m": {**NOLA_M, "model.name": "gpt2-medium", "task.name": "dart", "train.label_smoothing": 0.0},
    "dart/lora_gpt2m": {  # Table 11, DART column
        **LORA_M, "model.name": "gpt2-medium", "task.name": "dart", "adapter.dropout": 0.0,
        "train.weight_decay": 0.0, "train.label_smoothing": 0.0,
    },
    "webnlg/nola_gpt2m": {**NOLA_M, "model.name": "gpt2-medium", "task.name": "webnlg"},
    "webnlg/lora_gpt2m": {**LORA_M, "model.name": "gpt2-medium", "task.name": "webnlg"},
}


def select(cfg, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = value[part]
    return list(value) if hasattr(value, "__len__") and not isinstance(value, str) else value


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes(group, option):
    cfg = compose_config([f"{group}={option}"])
    assert cfg[group] is not None


def test_every_paper_cell_has_an_experiment():
    """conf/experiment/{e2e,dart,webnlg}/ hold exactly the paper-table cells (mini/ is the offline reproduction)."""
    assert [e for e in EXPERIMENTS if e.split("/")[0] in ("e2e", "dart", "webnlg")] == sorted(PAPER_CELLS)


@pytest.mark.parametrize("experiment", sorted(PAPER_CELLS))
def test_experiment_recipe(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    assert cfg.name == experiment
    assert cfg.decode is not None
    mismatches = {key: (select(cfg, key), want) for key, want in PAPER_CELLS[experiment].items() if select(cfg, key) != want}
    assert not mismatches


def test_default_config_is_the_nola_gpt2m_e2e_run():
    cfg = compose_config([])
    assert {key: select(cfg, key) for key in NOLA_M} == NOLA_M
    assert (cfg.model.name, cfg.task.name) == ("gpt2-medium", "e2e")


@pytest.mark.parametrize(
    "override, key",
    [("train.bogus=1", "bogus"), ("train.lr=fast", "train.lr"), ("adapter=lorax", "lorax"), ("model.size=3", "size")],
)
def test_config_mistakes_are_one_line_errors(override, key):
    with pytest.raises(NolaError, match=key) as err:
        compose_config([override])
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_trains_two_steps_on_tiny(experiment, data_dir, vocab_dir, tmp_path):
    """Each experiment's own recipe (batch, accumulation, adapter) on the tiny model and synthetic data."""
    overrides = [o for o in tiny_overrides(data_dir, vocab_dir, tmp_path) if not o.startswith(("train", "model"))]
    cfg = load_config([f"experiment={experiment}", *overrides, "model=tiny", "model.source=random",
                       f"task.data_dir={data_dir}", "train.max_steps=2", "train.device=cpu"])
    assert cfg.model.name == "tiny" and cfg.name == experiment
    if cfg.adapter.kind == "none":  # a decode-only baseline
        with pytest.raises(NolaError, match="nothing to train"):
            train(cfg, tmp_path / "run")
        return
    metrics = train(cfg, tmp_path / "run")
    assert metrics["steps"] == 2 and metrics["stop_reason"] == "max_steps"
    assert metrics["adapter"]["kind"] == cfg.adapter.kind
    assert (tmp_path / "run" / "adapter" / "adapter.safetensors").is_file()


def test_no_group_file_restates_a_schema_default():
    """Defaults once: a group file keeps only what differs from its dataclass (or from the file it
    extends through its own `defaults` list), so a default is never written in two places."""
    import dataclasses

    import yaml

    from nola.config import Config

    def default_of(field):
        if field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            value = field.default
        value = getattr(value, "value", value)  # enums as the yaml spells them
        return list(value) if isinstance(value, tuple) else value

    def parents(group: str, data: dict) -> list[dict]:
        names = [entry for entry in data.get("defaults", []) if isinstance(entry, str) and entry != "_self_"]
        return [yaml.safe_load((CONF_DIR / group / f"{name}.yaml").read_text(encoding="utf-8")) or {} for name in names]

    restated = []
    for section in dataclasses.fields(Config):
        if section.default_factory is dataclasses.MISSING:
            continue
        schema = {field.name: field for field in dataclasses.fields(section.default_factory())}
        for path in sorted((CONF_DIR / section.name).glob("*.yaml")):
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            inherited = {key: value for parent in parents(section.name, data) for key, value in parent.items()}
            for key, value in data.items():
                if key in schema and value == default_of(schema[key]) and inherited.get(key, value) == value:
                    restated.append(f"{path.relative_to(CONF_DIR)}: {key}")
    assert restated == []
