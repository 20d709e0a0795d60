"""The paper recipes, run end to end, train what microsoft/LoRA's gpt2_ft.py trains.

`experiment=e2e/lora_gpt2m` and `experiment=e2e/nola_gpt2m` (on the tiny model and a synthetic
E2E-like split whose size leaves fill rows) go through `nola.train.train`. Beside it, this file
runs gpt2_ft.py's loop written out plainly: gpt2_encode.py's token layout, FT_Dataset rows read
through torch's DistributedSampler with set_epoch(1, 2, ...), model.py's loss over
mask.sum() + 1e-4 divided by grad_acc, the scheduler stepped after every micro-batch, and
optimizer.py's AdamW; both start from the same initial model. The adapters must agree.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DistributedSampler

from nola.build import build_model
from nola.config import load_config
from nola.tokenizer import load_tokenizer
from nola.training.job import train
from reference_support import FTDatasetIndices, lora_micro_batch_loss, lora_row
from train_support import write_dataset

pytestmark = pytest.mark.usefixtures("single_thread")

EOS = 50256


def run_overrides(experiment: str, data_dir, vocab_dir, runs_dir, *extra: str) -> list[str]:
    return [
        f"experiment={experiment}",
        "model=tiny",
        f"paths.data_dir={data_dir}",
        f"paths.vocab_dir={vocab_dir}",
        f"paths.runs_dir={runs_dir}",
        f"paths.cache_dir={runs_dir}/cache",
        "train.device=cpu",
        "train.epochs=2",
        "train.batch_size=4",
        "train.warmup_steps=3",
        "train.save_every=100",
        "train.log_every=1",
        *extra,
    ]


def gpt2_ft_reference(cfg, data_dir, vocab_dir, initial: dict[str, torch.Tensor], model):
    """gpt2_ft.py's training of `model` from `initial`; returns the final trainable tensors."""
    tokenizer = load_tokenizer(vocab_dir)
    examples = []
    for line in (data_dir / "e2e" / "train.jsonl").read_text(encoding="utf-8").splitlines():
        items = json.loads(line)  # gpt2_encode.py --add_bos --add_eos
        examples.append((tokenizer.encode(items["context"]) + [EOS], tokenizer.encode(" " + items["completion"]) + [EOS]))
    train, seq_len = cfg.train, cfg.task.max_seq_len
    grad_acc = train.grad_accum
    micro = train.batch_size // grad_acc  # --train_batch_size
    dataset = FTDatasetIndices(len(examples), micro)
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, seed=train.seed)
    max_step = train.epochs * dataset.num_batches
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in initial.items():
            params[name].copy_(value)
    trainable = {name: params[name] for name in initial}
    state = {name: (torch.zeros_like(p), torch.zeros_like(p)) for name, p in trainable.items()}
    beta1, beta2 = train.adam_beta1, train.adam_beta2

    def factor(t):
        if t < train.warmup_steps:
            return t / max(1, train.warmup_steps)
        return max(0.0, (max_step - t) / max(1, max_step - train.warmup_steps))

    train_step, scheduler_steps, updates = 0, 0, 0
    model.train()
    for epoch in range(1, train.epochs + 1):
        sampler.set_epoch(epoch)
        order = [dataset[index] for index in sampler]
        for start in range(0, len(order), micro):
            chosen = [examples[i] for i in order[start : start + micro]]
            rows = [lora_row(context, completion, seq_len) for context, completion in chosen]
            # rows are padded to seq_len; causal attention makes the padding irrelevant, so cut it
            width = max(min(len(context) + len(completion), seq_len) for context, completion in chosen)
            inputs = torch.tensor([row[0][:width] for row in rows])
            targets = torch.tensor([row[1][:width] for row in rows])
            mask = torch.tensor([row[2][:width] for row in rows])
            logits = model(inputs)
            loss = lora_micro_batch_loss(logits, targets, mask, train.label_smoothing)
            (loss / grad_acc).backward()
            train_step += 1
            if train_step % grad_acc == 0:
                lr = train.lr * factor(scheduler_steps)
                updates += 1
                with torch.no_grad():
                    for name, p in trainable.items():
                        m, v = state[name]
                        m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                        v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                        step_size = lr * math.sqrt(1 - beta2**updates) / (1 - beta1**updates)
                        p.sub_(step_size * m / (v.sqrt() + train.adam_eps))
                        if train.weight_decay > 0:
                            p.sub_(lr * train.weight_decay * p)
                        p.grad = None
            scheduler_steps += 1
    return {name: p.detach().clone() for name, p in trainable.items()}, updates


@pytest.mark.parametrize(
    ("experiment", "extra", "updates_expected"),
    [
        ("e2e/lora_gpt2m", ("adapter.dropout=0.0", "train.lr=1e-2"), 12),  # wd 0.01, label smoothing 0.1
        ("e2e/nola_gpt2m", (), 12),  # 512 + 512 bases of rank 8 fit the tiny model's 64 × 8 factors
        # micro-batches of 2: 11 per epoch, so one update spans the epoch boundary; 22 // 2 updates
        ("e2e/nola_gpt2m", ("train.grad_accum=2",), 11),
    ],
)
def test_paper_recipe_trains_what_gpt2_ft_trains(experiment, extra, updates_expected, vocab_dir, tmp_path):
    data_dir = write_dataset(tmp_path / "data", tasks=("e2e",), train=21, valid=8)  # 21 = 5 x 4 + 1: 3 fill rows
    cfg = load_config(run_overrides(experiment, data_dir, vocab_dir, tmp_path, *extra))
    initial_model = build_model(cfg, for_training=True, device="cpu")
    initial = {name: p.detach().clone() for name, p in initial_model.trainable.items()}
    metrics = train(cfg, tmp_path / "run")
    assert metrics["completed"]
    expected, updates = gpt2_ft_reference(cfg, data_dir, vocab_dir, initial, initial_model.model)
    assert metrics["steps"] == updates == updates_expected
    ours = load_file(str(tmp_path / "run" / "adapter" / "adapter.safetensors"))
    assert set(ours) == set(expected)
    moved = max(float((expected[n] - initial[n]).abs().max()) for n in expected)
    assert moved > 1e-3  # training changed the adapter: the comparison is not of initial values
    for name in expected:
        torch.testing.assert_close(ours[name], expected[name], rtol=1e-3, atol=1e-6, msg=name)
