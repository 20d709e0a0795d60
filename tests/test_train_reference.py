"""Training equal to the reference code, piece by piece.

Every reference below is written out here from the public code it names, not taken from the
project: microsoft/LoRA `examples/NLG/src/optimizer.py` (AdamW with correct_bias, the linear
schedule), `gpt2_ft.py` (scheduler stepped per micro-batch, loss / grad_acc), `data_utils.py`
(FT_Dataset: padding_tokens, the loss mask, fill rows from random.Random(911)) read through
torch's own DistributedSampler, `model.py` (the label-smoothed loss over mask.sum() + 1e-4), and
UCDvision/NOLA `gpt/examples/NLG/src/model_nola.py` (what `_init_weights` does to NOLALinear).
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from nola.adapters import AdapterConfig, inject_adapters
from nola.adapters.inject import nola_slots
from nola.build import set_base_dropout
from nola.config import compose_config
from nola.data.batching import SequenceSet, ShuffledFillBatcher, build_sequences, collate
from nola.model import GPT2Config, init_gpt2
from nola.adapters.count import count_adapter
from nola.training.config import TrainConfig
from nola.runtime import DistContext
from nola.training.loop import Update, schedule_for, train_step, validation_loss
from nola.training.optim import LoraAdamW, Schedule, build_optimizer
from reference_support import FTDatasetIndices, lora_micro_batch_loss, lora_row
from train_support import split_of

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------------------------------
# optimizer.py AdamW


def lora_adamw_steps(params, grads_per_step, lrs, betas, eps, weight_decay):
    """microsoft/LoRA optimizer.py AdamW.step (correct_bias=True), one parameter at a time."""
    beta1, beta2 = betas
    params = [p.clone() for p in params]
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    for step, (grads, lr) in enumerate(zip(grads_per_step, lrs), start=1):
        for i, grad in enumerate(grads):
            exp_avg[i] = exp_avg[i] * beta1 + (1.0 - beta1) * grad
            exp_avg_sq[i] = exp_avg_sq[i] * beta2 + (1.0 - beta2) * grad * grad
            denom = exp_avg_sq[i].sqrt() + eps
            step_size = lr * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
            params[i] = params[i] - step_size * exp_avg[i] / denom
            if weight_decay > 0.0:
                params[i] = params[i] - lr * weight_decay * params[i]
    return params


def random_gradients(steps: int, shapes, seed: int = 0):
    """Gradients of very different scales (1e-9 .. 1): the small ones are where ε matters."""
    generator = torch.Generator().manual_seed(seed)
    scales = [1.0, 1e-4, 1e-9]
    return [
        [torch.randn(shape, generator=generator, dtype=torch.float64) * scales[i % 3] for i, shape in enumerate(shapes)]
        for _ in range(steps)
    ]


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_lora_adamw_equals_the_written_out_update_for_40_steps(weight_decay):
    shapes = [(7,), (3, 5), (512,)]
    start = [torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) for shape in shapes]
    grads = random_gradients(40, shapes)
    lrs = [5e-3 * (step + 1) / 40 for step in range(40)]
    params = [torch.nn.Parameter(p.clone()) for p in start]
    recipe = TrainConfig(lr=1.0, weight_decay=weight_decay, adam_beta2=0.999, adam_eps=1e-6)
    optimizer = build_optimizer(params, recipe)
    assert isinstance(optimizer, LoraAdamW)
    for step_grads, lr in zip(grads, lrs):
        for param, grad in zip(params, step_grads):
            param.grad = grad.clone()
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
    expected = lora_adamw_steps(start, grads, lrs, (0.9, 0.999), 1e-6, weight_decay)
    for ours, reference in zip(params, expected):
        torch.testing.assert_close(ours.detach(), reference, rtol=1e-12, atol=0.0)


def test_torch_adamw_is_a_different_update_and_stays_an_option():
    """The check above can fail: torch's AdamW (ε after bias correction) moves small-gradient
    parameters measurably differently from LoRA's."""
    shapes = [(64,), (64,)]
    start = [torch.zeros(shape, dtype=torch.float64) for shape in shapes]
    grads = random_gradients(5, shapes, seed=3)
    grads = [[g[0] * 1e3, g[1] * 1e-3] for g in grads]  # grads ~1e-3 and ~1e-7: ε = 1e-6 matters for the second
    params = [torch.nn.Parameter(p.clone()) for p in start]
    optimizer = build_optimizer(params, TrainConfig(lr=1e-2, optimizer="adamw"))
    assert isinstance(optimizer, torch.optim.AdamW)
    for step_grads in grads:
        for param, grad in zip(params, step_grads):
            param.grad = grad.clone()
        optimizer.step()
    expected = lora_adamw_steps(start, grads, [1e-2] * 5, (0.9, 0.999), 1e-6, 0.0)
    difference = (params[1].detach() - expected[1]).abs().max() / expected[1].abs().max()
    assert difference > 0.01


def test_lora_adamw_state_survives_a_safe_checkpoint_round_trip():
    shapes = [(4,), (2, 3)]
    grads = random_gradients(6, shapes, seed=5)

    def run(split_at: int | None):
        params = [torch.nn.Parameter(torch.ones(shape, dtype=torch.float64)) for shape in shapes]
        optimizer = LoraAdamW(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
        for index, step_grads in enumerate(grads):
            if index == split_at:
                buffer = io.BytesIO()
                torch.save(optimizer.state_dict(), buffer)
                buffer.seek(0)
                optimizer = LoraAdamW(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
                optimizer.load_state_dict(torch.load(buffer, weights_only=True))
            for param, grad in zip(params, step_grads):
                param.grad = grad.clone()
            optimizer.step()
        return [p.detach() for p in params]

    for whole, resumed in zip(run(None), run(3)):
        assert torch.equal(whole, resumed)


# ---------------------------------------------------------------------------------------------
# gpt2_ft.py: the scheduler advances on every micro-batch


def lora_update_lrs(lr: float, warmup: int, max_step: int, grad_acc: int) -> list[float]:
    """The lr of every optimizer update as gpt2_ft.py's train_validate produces it."""

    def factor(t: int) -> float:  # optimizer.py get_linear_schedule_with_warmup
        if t < warmup:
            return float(t) / float(max(1, warmup))
        return max(0.0, float(max_step - t) / float(max(1, max_step - warmup)))

    scheduler_steps, lrs = 0, []
    for micro_step in range(1, max_step + 1):  # gpt2_ft.py train_step
        if micro_step % grad_acc == 0:  # is_update: optimizer.step() with the current lr
            lrs.append(lr * factor(scheduler_steps))
        scheduler_steps += 1  # _schedule.step() after every micro-batch
    return lrs


def dummy_sequences(count: int) -> SequenceSet:
    tokens = [np.array([1, 2, 3], dtype=np.int64)] * count
    return SequenceSet(tokens, np.ones(count, dtype=np.int64), np.arange(count), 0, 0)


def test_gpt2_large_nola_recipe_learning_rates(tmp_path):
    cfg = compose_config(["experiment=e2e/nola_gpt2l", f"paths.runs_dir={tmp_path}"])
    train = cfg.train
    assert (train.batch_size, train.grad_accum, train.warmup_steps, train.lr) == (16, 4, 500, 1e-2)
    # E2E train has 42,061 examples; LoRA's loader: micro-batches of --train_batch_size 4
    batcher = ShuffledFillBatcher(dummy_sequences(42061), train.batch_size // train.grad_accum, seed=train.seed)
    assert len(batcher) == 10516
    schedule = schedule_for(train, len(batcher))
    max_step = 5 * 10516  # gpt2_ft.py: max_epoch * num_batches (the NOLA script's checkpoint is model.52580.pt)
    reference = lora_update_lrs(1e-2, 500, max_step, 4)
    assert len(reference) == schedule.total_micro_batches // 4 == 13145
    updates = [1, 2, 125, 126, 13145]
    ours = [schedule.lr_at(update - 1) for update in updates]
    assert ours == pytest.approx([reference[u - 1] for u in updates], rel=1e-15)
    # by hand: factor(4u - 1) with warmup 500, total 52,580
    assert ours == pytest.approx([1e-2 * 3 / 500, 1e-2 * 7 / 500, 1e-2 * 499 / 500,
                                  1e-2 * (52580 - 503) / 52080, 1e-2 * 1 / 52080], rel=1e-12)


def test_schedule_without_accumulation_is_lora_per_step():
    schedule = Schedule(lr=2e-4, warmup_micro_batches=500, total_micro_batches=26290, grad_accum=1)
    reference = lora_update_lrs(2e-4, 500, 26290, 1)
    assert [schedule.lr_at(u) for u in range(0, 26290, 97)] == pytest.approx(reference[::97], rel=1e-15)


# ---------------------------------------------------------------------------------------------
# data_utils.py FT_Dataset read through DistributedSampler


def lora_epoch_batches(dataset: FTDatasetIndices, sampler: DistributedSampler) -> list[list[int]]:
    rows = [dataset[index] for index in sampler]
    return [rows[i : i + dataset.batch_size] for i in range(0, len(rows), dataset.batch_size)]


@pytest.mark.parametrize(("count", "batch"), [(37, 8), (40, 8), (5, 4)])
def test_batches_are_loras_shuffle_and_fill(count, batch):
    seed = 110
    dataset = FTDatasetIndices(count, batch)
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, seed=seed)  # shuffle=True, as gpt2_ft.py
    ours = ShuffledFillBatcher(dummy_sequences(count), batch, seed=seed)
    assert len(ours) == dataset.num_batches
    for epoch in range(1, 4):  # gpt2_ft.py: set_epoch(epoch) with epochs counted from 1
        sampler.set_epoch(epoch)
        expected = lora_epoch_batches(dataset, sampler)
        got = ours.global_batches(epoch - 1)
        assert [b.tolist() for b in got] == expected
        flat = np.concatenate(got)
        counts = np.bincount(flat, minlength=count)
        assert counts.min() >= 1 and len(flat) == dataset.num_batches * batch  # every example, plus the fill
        assert int(counts.sum() - count) == dataset.num_batches * batch - count


def test_validation_batches_use_sampler_epoch_zero():
    dataset = FTDatasetIndices(11, 4)
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, seed=7)  # never set_epoch: epoch 0
    ours = ShuffledFillBatcher(dummy_sequences(11), 4, seed=7, first_sampler_epoch=0)
    assert [b.tolist() for b in ours.global_batches(0)] == lora_epoch_batches(dataset, sampler)


def test_ranks_share_each_batch_and_see_the_single_process_order():
    sequences = dummy_sequences(30)
    whole = ShuffledFillBatcher(sequences, 8, seed=3).global_batches(1)
    shards = [ShuffledFillBatcher(sequences, 8, seed=3, world_size=2, rank=r).rank_batches(1) for r in (0, 1)]
    assert [np.concatenate(pair).tolist() for pair in zip(*shards)] == [b.tolist() for b in whole]


# ---------------------------------------------------------------------------------------------
# data_utils.py padding_tokens / mask: truncation


@pytest.mark.parametrize(
    ("context_len", "completion_len"),
    [(10, 12), (10, 30), (10, 50), (39, 5), (40, 5), (45, 5), (12, 28), (12, 29)],
)
def test_truncation_at_seq_len_40_matches_ft_dataset(context_len, completion_len):
    seq_len, eos = 40, 50256
    context = list(range(100, 100 + context_len - 1)) + [eos]
    completion = list(range(1000, 1000 + completion_len - 1)) + [eos]
    sequences = build_sequences(split_of([(context, completion)]), max_seq_len=seq_len)
    assert len(sequences) == 1  # LoRA keeps every row, a context filling the window included
    kept = len(sequences.tokens[0])
    assert kept == min(context_len + completion_len, seq_len)
    assert sequences.num_truncated == int(context_len + completion_len > seq_len)
    batch = collate(sequences, np.array([0]))
    lora_input, lora_target, lora_mask = lora_row(context, completion, seq_len)
    width = batch.input_ids.shape[1]
    assert width == kept - 1
    assert batch.input_ids[0].tolist() == lora_input[:width]
    assert batch.targets[0].tolist() == lora_target[:width]
    assert batch.loss_mask[0].tolist() == lora_mask[:width]
    assert not any(lora_mask[width:])  # the last kept token (and padding) has no target in LoRA's row


# ---------------------------------------------------------------------------------------------
# model.py loss: each micro-batch's token mean over mask.sum() + 1e-4, divided by grad_acc


def tiny_update(recipe: TrainConfig, adapter: AdapterConfig) -> Update:
    model = init_gpt2(GPT2Config.named("tiny", vocab_size=300), 0)
    set_base_dropout(model, 0.0)  # LoRA's GPT-2 has no dropout
    inject_adapters(model, adapter)
    params = [p for p in model.parameters() if p.requires_grad]
    return Update(model, params, build_optimizer(params, recipe), Schedule(recipe.lr, 0, 100, recipe.grad_accum),
                  recipe, DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))


def random_micro_batches(count: int, rows: int, seed: int):
    rng = np.random.default_rng(seed)
    pairs = [
        ([int(t) for t in rng.integers(1, 299, size=rng.integers(2, 6))] + [299],
         [int(t) for t in rng.integers(1, 299, size=rng.integers(1, 7))] + [299])
        for _ in range(count * rows)
    ]
    sequences = build_sequences(split_of(pairs), max_seq_len=64)
    return [collate(sequences, np.arange(i * rows, (i + 1) * rows)) for i in range(count)]


@pytest.mark.parametrize("chunk_tokens", [0, 5])
@pytest.mark.parametrize("normalization", ["batch_mean", "step_token_mean"])
def test_step_loss_is_loras_per_micro_batch_mean(normalization, chunk_tokens):
    recipe = TrainConfig(lr=0.0, grad_accum=2, batch_size=6, label_smoothing=0.1, loss_normalization=normalization,
                         loss_chunk_tokens=chunk_tokens)
    update = tiny_update(recipe, AdapterConfig(kind="lora", rank=2, alpha=4))
    micro = random_micro_batches(2, 3, seed=1)
    with torch.no_grad():
        logits = [update.model(b.input_ids) for b in micro]
    result = train_step(update, micro, False, 0)
    if normalization == "batch_mean":  # gpt2_ft.py: each micro-batch's loss / grad_acc
        expected = sum(lora_micro_batch_loss(l, b.targets, b.loss_mask, 0.1) for l, b in zip(logits, micro)) / 2
    else:
        sums = [lora_micro_batch_loss(l, b.targets, b.loss_mask, 0.1) * (b.loss_mask.sum() + 1e-4)
                for l, b in zip(logits, micro)]
        expected = sum(sums) / sum(b.loss_mask.sum() for b in micro)
    assert result.loss == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("chunk_tokens", [0, 3])
def test_validation_reports_loras_mean_of_batch_means_beside_the_token_mean(chunk_tokens):
    valid = random_micro_batches(3, 4, seed=2)
    update = tiny_update(TrainConfig(), AdapterConfig(kind="lora", rank=2, alpha=4))
    with torch.no_grad():
        per_batch = [lora_micro_batch_loss(update.model(b.input_ids), b.targets, b.loss_mask, 0.0) for b in valid]
    tokens = [b.loss_mask.sum() for b in valid]
    losses = validation_loss(update.model, valid, update.ctx, chunk_tokens=chunk_tokens)
    assert losses["batch_mean_loss"] == pytest.approx(float(sum(per_batch) / 3), rel=1e-5)
    token_mean = sum(l * (t + 1e-4) for l, t in zip(per_batch, tokens)) / sum(tokens)
    assert losses["loss"] == pytest.approx(float(token_mean), rel=1e-5)
    assert losses["loss"] != pytest.approx(losses["batch_mean_loss"], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# model_nola.py: what the reference GPT-2 code initialises


def nola_model(init: str, width: int = 128):
    config = GPT2Config(vocab_size=300, n_positions=64, n_embd=width, n_layer=3, n_head=4)
    model = init_gpt2(config, 0)
    inject_adapters(model, AdapterConfig(kind="nola", rank=8, alpha=8, num_basis_a=64, num_basis_b=64, init=init))
    return model


def test_reference_init_offsets_are_normal_002_and_the_update_starts_nonzero():
    model = nola_model("reference")
    for name, slot in nola_slots(model).items():
        assert slot.offset_A.std().item() == pytest.approx(0.02, rel=0.1), name
        assert slot.offset_B.std().item() == pytest.approx(0.02, rel=0.1), name
        assert abs(slot.offset_A.mean().item()) < 0.005 and abs(slot.offset_B.mean().item()) < 0.005
        assert float(slot.nola_coef_A.detach().abs().sum() + slot.nola_coef_B.detach().abs().sum()) == 0.0
    layer = model.transformer.h[0].attn.c_attn
    delta = layer.delta_weight("q")
    a, b = layer.adapter["q"].offset_A, layer.adapter["q"].offset_B
    torch.testing.assert_close(delta, (b @ a) * (8 / 8))  # ΔW = (α/r)·B0·A0 ≠ 0 at the start
    assert delta.abs().max() > 0
    # offsets are drawn per layer (the reference's _init_weights runs after the deep copies)
    slots = nola_slots(model)
    assert not torch.equal(slots["transformer.h.0.attn.c_attn.adapter.q"].offset_A,
                           slots["transformer.h.1.attn.c_attn.adapter.q"].offset_A)


def test_reference_init_shares_one_set_of_bases_across_layers():
    model = nola_model("reference")
    slots = nola_slots(model)
    for role in ("basis_A", "basis_B"):
        for slot_kind in ("q", "v"):
            tensors = [getattr(slots[f"transformer.h.{i}.attn.c_attn.adapter.{slot_kind}"], role) for i in range(3)]
            assert all(torch.equal(tensors[0], t) for t in tensors[1:])
            assert all(t.data_ptr() == tensors[0].data_ptr() for t in tensors)  # held once in memory
        q = slots["transformer.h.0.attn.c_attn.adapter.q"]
        v = slots["transformer.h.0.attn.c_attn.adapter.v"]
        assert not torch.equal(getattr(q, role), getattr(v, role))  # q and v: distinct seeds
    q = slots["transformer.h.0.attn.c_attn.adapter.q"]
    assert not torch.equal(q.basis_A, q.basis_B.view(-1)[: q.basis_A.numel()].view_as(q.basis_A))
    # a move or cast keeps one copy per shared basis
    model.to(torch.bfloat16)
    slots = nola_slots(model)
    pointers = {slots[f"transformer.h.{i}.attn.c_attn.adapter.q"].basis_A.data_ptr() for i in range(3)}
    assert len(pointers) == 1 and slots["transformer.h.2.attn.c_attn.adapter.q"].basis_A.dtype == torch.bfloat16


def test_reference_init_coefficients_of_a_get_gradients_from_the_first_step():
    for init, expect_a_gradient in (("reference", True), ("paper", False)):
        model = nola_model(init)
        ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(0))
        model(ids).float().pow(2).mean().backward()
        slot = nola_slots(model)["transformer.h.1.attn.c_attn.adapter.q"]
        assert bool(slot.nola_coef_A.grad.abs().max() > 0) is expect_a_gradient, init
        assert slot.nola_coef_B.grad.abs().max() > 0


def test_paper_init_keeps_b0_zero_and_bases_per_layer():
    model = nola_model("paper")
    slots = nola_slots(model)
    q0, q1 = slots["transformer.h.0.attn.c_attn.adapter.q"], slots["transformer.h.1.attn.c_attn.adapter.q"]
    assert q0.offset_B is None and not torch.equal(q0.basis_A, q1.basis_A)
    assert model.transformer.h[0].attn.c_attn.delta_weight("q").abs().max() == 0
    bound = 1 / math.sqrt(128)  # kaiming_uniform(a=√5) on (r, d_in)
    assert q0.offset_A.abs().max() <= bound and q0.offset_A.std() > 0.5 * bound / math.sqrt(3)


def test_basis_cache_of_gpt2_medium_qv_is_one_set_with_reference_init():
    """GPT-2 M, q and v, 512 + 512 bases of rank 8: one 4-basis set (q-A, q-B, v-A, v-B) of
    512 × 8·1024 floats each, 64 MiB, held once instead of once per layer (24×, 1.5 GiB)."""
    sizes = {
        init: count_adapter("gpt2-medium", AdapterConfig(kind="nola", rank=8, alpha=8, num_basis_a=512,
                                                          num_basis_b=512, init=init))["basis_cache_bytes"]
        for init in ("reference", "paper")
    }
    assert sizes["reference"] == 4 * 512 * 8 * 1024 * 4 == 64 * 2**20
    assert sizes["paper"] == 24 * sizes["reference"] == 1.5 * 2**30
