"""The GPT2 forward's contracts: KV-cache decoding, padded batches, only_last, dropout, initialisation.

The reference for each is a plain full forward of the same model on the unpadded sequence, itself
checked against HF transformers in test_model_loading.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from nola.errors import NolaError
from nola.model import GPT2Config, init_gpt2

TOLERANCE = 1e-4
VOCAB = 97
CONFIG = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=48, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def model():
    """Eval-mode model with every tensor random (LayerNorms and biases too)."""
    model = init_gpt2(CONFIG, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model.eval()


def random_ids(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=TOLERANCE, rtol=0)


def left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = True
    return ids, mask


def right_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), 5, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


@torch.no_grad()
def test_kv_cache_decoding_equals_full_forward(model):
    ids = random_ids(3, 14)
    full = model(ids)
    cache = model.new_cache(3, 14)
    pieces = [model(ids[:, :5], cache=cache)]
    assert cache.length == 5
    pieces.append(model(ids[:, 5:8], cache=cache))  # several tokens on top of a cache
    for t in range(8, 14):
        pieces.append(model(ids[:, t : t + 1], cache=cache))
    assert cache.length == 14
    close(torch.cat(pieces, dim=1), full)


@torch.no_grad()
def test_kv_cache_with_left_padded_batch_equals_rows_alone(model):
    prompts = [random_ids(7, seed=1), random_ids(3, seed=2), random_ids(5, seed=3)]
    continuation = random_ids(3, 4, seed=4)
    ids, mask = left_pad(prompts)
    cache = model.new_cache(3, ids.shape[1] + 4)
    steps = [model(ids, attention_mask=mask, cache=cache, only_last=True)]
    for t in range(4):
        mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.bool)], dim=1)
        steps.append(model(continuation[:, t : t + 1], attention_mask=mask, cache=cache))
    batched = torch.cat(steps, dim=1)  # (3, 5, V): last prompt position, then 4 decoded positions
    for i, prompt in enumerate(prompts):
        alone = model(torch.cat([prompt, continuation[i]])[None])
        close(batched[i], alone[0, len(prompt) - 1 :])


@torch.no_grad()
def test_kv_cache_reorder_follows_the_selected_rows(model):
    prompts = [random_ids(6, seed=5), random_ids(4, seed=6)]
    ids, mask = left_pad(prompts)
    cache = model.new_cache(2, ids.shape[1] + 3)
    model(ids, attention_mask=mask, cache=cache)
    index = torch.tensor([1, 0, 1])  # beam search: row 1 twice, row 0 once
    cache.reorder(index)
    mask = mask[index]
    continuation = random_ids(3, 3, seed=7)
    steps = []
    for t in range(3):
        mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.bool)], dim=1)
        steps.append(model(continuation[:, t : t + 1], attention_mask=mask, cache=cache))
    batched = torch.cat(steps, dim=1)
    for row, source in enumerate(index.tolist()):
        prompt = prompts[source]
        alone = model(torch.cat([prompt, continuation[row]])[None])
        close(batched[row], alone[0, len(prompt) :])


@torch.no_grad()
def test_kv_cache_reorder_without_mask_equals_full_forward(model):
    ids = random_ids(2, 10, seed=8)
    cache = model.new_cache(2, 10)
    model(ids[:, :6], cache=cache)
    index = torch.tensor([1, 1, 0])
    cache.reorder(index)
    continued = ids[index]
    steps = [model(continued[:, t : t + 1], cache=cache) for t in range(6, 10)]
    close(torch.cat(steps, dim=1), model(continued)[:, 6:])


@torch.no_grad()
def test_kv_cache_reorders_through_growing_and_shrinking_row_counts(model):
    """Beam search runs only its live beams: the row count changes from step to step."""
    ids = random_ids(2, 12, seed=9)
    cache = model.new_cache(2, 12)
    model(ids[:, :5], cache=cache)
    sources = torch.tensor([0, 1])  # the prompt row each cache row continues
    steps = []
    for t, index in zip(range(5, 12), ([1, 0, 1, 0], [2], [0, 0, 0], [1, 2, 0, 2, 1], [4, 3], [1, 0, 1], [2, 0])):
        index = torch.tensor(index)
        cache.reorder(index)
        sources = sources[index]
        steps.append((sources, model(ids[sources, t : t + 1], cache=cache)[:, 0]))
    for t, (rows, logits) in zip(range(5, 12), steps):
        close(logits, model(ids[rows, : t + 1])[:, -1])


@pytest.mark.parametrize("pad", [left_pad, right_pad], ids=["left", "right"])
@torch.no_grad()
def test_each_padded_row_equals_the_row_alone(model, pad):
    rows = [random_ids(9, seed=10), random_ids(4, seed=11), random_ids(1, seed=12), random_ids(6, seed=13)]
    ids, mask = pad(rows)
    batched = model(ids, attention_mask=mask)
    assert torch.isfinite(batched).all()
    for i, row in enumerate(rows):
        real = mask[i].bool()
        close(batched[i, real], model(row[None])[0])


@torch.no_grad()
def test_only_last_equals_the_last_position(model):
    ids = random_ids(2, 11, seed=14)
    close(model(ids, only_last=True), model(ids)[:, -1:])
    ids, mask = left_pad([random_ids(11, seed=15), random_ids(5, seed=16)])
    last = model(ids, attention_mask=mask, only_last=True)
    assert last.shape == (2, 1, VOCAB)
    close(last, model(ids, attention_mask=mask)[:, -1:])


@pytest.mark.parametrize("field", ["embd_pdrop", "attn_pdrop", "resid_pdrop"])
def test_each_dropout_rate_is_applied_in_train_mode_only(field):
    no_dropout = dict(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    config = GPT2Config(**{**CONFIG.__dict__, **no_dropout, field: 0.5})
    model = init_gpt2(config, seed=2)
    ids = random_ids(2, 12, seed=17)
    with torch.no_grad():
        model.eval()
        first, second = model(ids), model(ids)
        model.train()
        noisy = model(ids)
    assert torch.equal(first, second)
    assert (noisy - first).abs().max() > 1e-3


def test_zero_dropout_config_trains_deterministically():
    config = GPT2Config(**{**CONFIG.__dict__, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0})
    model = init_gpt2(config, seed=3)
    ids = random_ids(2, 12, seed=18)
    with torch.no_grad():
        evaluated = model.eval()(ids)
        trained = model.train()(ids)
    close(trained, evaluated)


def test_gradient_checkpointing_gives_the_same_gradients():
    config = GPT2Config(**{**CONFIG.__dict__, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0})
    ids = random_ids(2, 12, seed=19)
    grads = []
    for checkpointing in (False, True):
        model = init_gpt2(config, seed=4).train()
        model.gradient_checkpointing = checkpointing
        model(ids).logsumexp(-1).mean().backward()
        grads.append(model.transformer.h[0].attn.c_attn.weight.grad)
    close(grads[1], grads[0])


def test_init_is_deterministic_and_independent_of_the_global_rng():
    torch.manual_seed(123)
    first = init_gpt2(CONFIG, seed=7).state_dict()
    torch.manual_seed(456)
    second = init_gpt2(CONFIG, seed=7).state_dict()
    other = init_gpt2(CONFIG, seed=8).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["transformer.h.0.attn.c_attn.weight"], other["transformer.h.0.attn.c_attn.weight"])


def test_init_follows_gpt2_scheme():
    """GPT-2 (Radford et al., 2019, §2.3): N(0, 0.02), residual projections scaled by 1/√N (N = 2·layers)."""
    config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=128, n_layer=8, n_head=4)
    model = init_gpt2(config, seed=0)
    state = model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["transformer.wte.weight"].data_ptr()
    assert state["transformer.wte.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    assert state["transformer.h.3.mlp.c_fc.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    for key in ("transformer.h.3.attn.c_proj.weight", "transformer.h.3.mlp.c_proj.weight"):
        assert state[key].std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert torch.equal(state["transformer.h.3.ln_2.weight"], torch.ones(128))
    assert torch.equal(state["transformer.h.3.attn.c_attn.bias"], torch.zeros(3 * 128))


@torch.no_grad()
def test_limits_raise_nola_errors(model):
    with pytest.raises(NolaError, match="exceeds the context window"):
        model(random_ids(1, CONFIG.n_positions + 1))
    cache = model.new_cache(1, 4)
    with pytest.raises(NolaError, match="KV cache holds 4 positions"):
        model(random_ids(1, 5), cache=cache)
    with pytest.raises(NolaError, match="attention_mask covers 3 positions"):
        model(random_ids(1, 4), attention_mask=torch.ones(1, 3, dtype=torch.bool))


def test_output_mask_keeps_exactly_the_selected_positions(model):
    ids = torch.randint(0, model.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(5))
    select = torch.zeros(3, 9, dtype=torch.bool)
    select[0, 4:] = True
    select[2, [1, 7]] = True
    full = model(ids)
    close(model(ids, output_mask=select), full[select])
