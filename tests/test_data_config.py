"""The `task` config group: every conf/task/*.yaml validates against nola.data.config.TaskConfig."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from nola.data.config import LastBatch, TaskConfig, TruncationPolicy
from nola.errors import NolaError

TASK_DIR = Path(__file__).resolve().parents[1] / "conf" / "task"
TASK_YAMLS = sorted(TASK_DIR.glob("*.yaml"))


def compose(task_yaml: dict, cache_dir: str = ".cache") -> TaskConfig:
    """Validate a task node the way the root config does, with `paths` beside it for interpolation."""
    root = OmegaConf.create({"paths": {"data_dir": "prepared", "cache_dir": cache_dir}})
    root.task = OmegaConf.merge(OmegaConf.structured(TaskConfig), task_yaml)
    return OmegaConf.to_object(root.task)


PAPER_TASK_YAMLS = [path for path in TASK_YAMLS if path.stem in ("dart", "e2e", "webnlg")]


def test_every_task_of_the_paper_has_a_yaml():
    assert [path.stem for path in PAPER_TASK_YAMLS] == ["dart", "e2e", "webnlg"]


@pytest.mark.parametrize("path", TASK_YAMLS, ids=lambda p: p.stem)
def test_every_task_yaml_validates_against_schema(path):
    config = compose(OmegaConf.load(path))
    assert isinstance(config, TaskConfig)
    assert config.name in ("dart", "e2e", "webnlg")


@pytest.mark.parametrize("path", PAPER_TASK_YAMLS, ids=lambda p: p.stem)
def test_paper_task_yaml_follows_lora_settings(path):
    config = compose(OmegaConf.load(path))
    assert config.name == path.stem
    assert config.data_dir == "prepared"  # follows paths.data_dir
    assert config.max_seq_len == 512  # LoRA gpt2_ft.py --seq_len 512
    assert config.truncation is TruncationPolicy.truncate
    assert config.last_batch is LastBatch.fill


def test_unknown_key_is_rejected():
    with pytest.raises(ConfigKeyError):
        compose({"name": "e2e", "max_seq_length": 256})


def test_unknown_policy_is_rejected():
    with pytest.raises(ValidationError):
        compose({"name": "e2e", "truncation": "left"})


def test_unknown_task_name_is_a_nola_error():
    with pytest.raises(NolaError, match="unknown task 'e2e_nlg'"):
        compose({"name": "e2e_nlg"})


def test_too_short_sequence_limit_is_a_nola_error():
    with pytest.raises(NolaError, match="max_seq_len"):
        TaskConfig(name="dart", max_seq_len=1)
