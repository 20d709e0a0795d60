"""The loop's arithmetic against independent references: LoRA's loss formula written out by hand,
LoRA's linear warmup/decay schedule, and the recipe checks."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from nola.errors import NolaError
from nola.training.config import TrainConfig, check_train_config
from nola.training.loop import step_seed
from nola.training.loss import masked_token_loss_sum
from nola.training.optim import Schedule, autocast_dtype, build_optimizer, linear_warmup_decay


def lora_reference_loss(logits, targets, mask, label_smooth):
    """microsoft/LoRA examples/NLG/src/model.py GPT2LMModel.forward, written out (without its +1e-4)."""
    logprobs = torch.log_softmax(logits.double().reshape(-1, logits.shape[-1]), dim=-1)
    nll = -logprobs.gather(-1, targets.reshape(-1, 1)).squeeze(1)
    smooth = -logprobs.mean(dim=-1)
    per_token = ((1.0 - label_smooth) * nll + label_smooth * smooth).reshape(targets.shape)
    return (per_token * mask.double()).sum()


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
def test_loss_matches_lora_formula(label_smoothing):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=generator) * 3
    targets = torch.randint(0, 50, (3, 7), generator=generator)
    mask = (torch.rand(3, 7, generator=generator) > 0.4).float()
    ours = masked_token_loss_sum(logits, targets, mask, label_smoothing)
    expected = lora_reference_loss(logits, targets, mask, label_smoothing)
    assert ours.dtype == torch.float32
    assert float(ours) == pytest.approx(float(expected), rel=1e-6)


def test_loss_hand_computed_two_classes():
    # logits (0, ln 3): p = (1/4, 3/4); target 1, eps 0.5: 0.5*(-ln 3/4) + 0.5*mean(-ln 1/4, -ln 3/4)
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, 5.0]]])
    targets = torch.tensor([[1, 0]])
    mask = torch.tensor([[1.0, 0.0]])
    expected = 0.5 * -math.log(0.75) + 0.5 * 0.5 * (-math.log(0.25) - math.log(0.75))
    assert float(masked_token_loss_sum(logits, targets, mask, 0.5)) == pytest.approx(expected, rel=1e-6)


def test_schedule_matches_lora_linear_warmup():
    # LoRA optimizer.py get_linear_schedule_with_warmup: t/w while t < w, then (T - t)/(T - w), floor 0.
    factor = linear_warmup_decay(4, 10)
    assert [factor(t) for t in range(12)] == [0.0, 0.25, 0.5, 0.75, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0, 0.0]
    assert linear_warmup_decay(0, 4)(0) == 1.0


def test_schedule_sets_the_optimizer_lr_per_update():
    param = torch.nn.Parameter(torch.zeros(3))
    train = OmegaConf.structured(TrainConfig(lr=0.2, warmup_steps=2))
    optimizer = build_optimizer([param], train)
    schedule = Schedule(lr=0.2, warmup_micro_batches=2, total_micro_batches=6, grad_accum=1)
    seen = [schedule.apply(optimizer, update) for update in range(6)]
    assert [group["lr"] for group in optimizer.param_groups] == [seen[-1]]
    assert seen == pytest.approx([0.0, 0.1, 0.2, 0.15, 0.1, 0.05])
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["eps"] == 1e-6


def test_step_seed_depends_on_step_and_rank_only():
    import subprocess
    import sys

    torch.manual_seed(1234)  # no global state goes in: a fresh process computes the same seeds
    here = [step_seed(110, step, rank) for step, rank in ((5, 0), (5, 1), (6, 0))]
    fresh = subprocess.run([sys.executable, "-c", "from nola.training.loop import step_seed; "
                            "print([step_seed(110, s, r) for s, r in ((5, 0), (5, 1), (6, 0))])"],
                           capture_output=True, text=True, check=True)
    assert fresh.stdout.strip() == str(here)
    seeds = {step_seed(110, step, rank) for step in range(50) for rank in range(4)}
    assert len(seeds) == 200
    assert all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize(
    "overrides, world, message",
    [
        ({"batch_size": 8, "grad_accum": 3}, 1, "not divisible"),
        ({"batch_size": 8, "grad_accum": 2}, 3, "3 processes"),
        ({"precision": "fp8"}, 1, "train.precision"),
        ({"label_smoothing": 1.0}, 1, "train.label_smoothing"),
        ({"lr": -1.0}, 1, "train.lr"),
        ({"epochs": 0}, 1, "train.epochs"),
    ],
)
def test_bad_recipes_are_one_line_errors(overrides, world, message):
    train = OmegaConf.merge(OmegaConf.structured(TrainConfig), overrides)
    with pytest.raises(NolaError, match=message) as err:
        check_train_config(train, world)
    assert "\n" not in str(err.value)


def test_micro_batch_size():
    train = OmegaConf.merge(OmegaConf.structured(TrainConfig), {"batch_size": 16, "grad_accum": 4})
    assert check_train_config(train, 1) == 4
    assert check_train_config(train, 2) == 2


def test_precision_choices_on_cpu():
    cpu = torch.device("cpu")
    assert TrainConfig().precision == "fp32"  # the papers trained in float32
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(NolaError, match="fp16 needs a CUDA device"):
        autocast_dtype("fp16", cpu)
