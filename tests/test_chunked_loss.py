"""The chunked output layer + loss held to the plain formula in float64: microsoft/LoRA model.py's
label-smoothed cross-entropy, (1 - ε)·(-log p[target]) + ε·mean over the vocabulary of (-log p),
times the loss mask, summed — written out here with log_softmax over the full logits."""

from __future__ import annotations

import pytest
import torch

from nola.training.loss import chunked_linear_loss_sum


def plain(hidden, weight, targets, mask, eps):
    log_p = torch.log_softmax(hidden @ weight.t(), dim=1)
    nll = -log_p.gather(1, targets.unsqueeze(1)).squeeze(1)
    smooth = -log_p.mean(dim=1)
    return (((1 - eps) * nll + eps * smooth) * mask).sum()


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("chunk", [1, 7, 32, 1000])
def test_loss_and_gradients_equal_the_plain_formula(eps, chunk):
    generator = torch.Generator().manual_seed(chunk)
    n, d, vocab = 29, 12, 97
    hidden = torch.randn(n, d, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, d, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(vocab, (n,), generator=generator)
    mask = torch.rand(n, generator=generator, dtype=torch.float64) + 0.5
    want = plain(hidden, weight, targets, mask, eps)
    want_h, want_w = torch.autograd.grad(want, (hidden, weight))
    got = chunked_linear_loss_sum(hidden, weight, targets, mask, eps, chunk_tokens=chunk)
    got_h, got_w = torch.autograd.grad(got * 1.7, (hidden, weight))  # the upstream gradient is applied
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=0)
    assert torch.allclose(got_h, 1.7 * want_h, rtol=1e-10, atol=1e-12)
    assert torch.allclose(got_w.double(), 1.7 * want_w, rtol=1e-6, atol=1e-9)


def test_float32_is_within_a_millionth_and_a_frozen_weight_gets_no_gradient():
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(64, 32, generator=generator, requires_grad=True)
    weight = torch.randn(5000, 32, generator=generator) * 0.2  # frozen, as LoRA/NOLA's base
    targets = torch.randint(5000, (64,), generator=generator)
    mask = torch.ones(64)
    want = plain(hidden.detach().double(), weight.double(), targets, mask.double(), 0.1)
    got = chunked_linear_loss_sum(hidden, weight, targets, mask, 0.1, chunk_tokens=16)
    assert abs(float(got.detach()) - float(want)) <= 1e-6 * abs(float(want))
    (grad,) = torch.autograd.grad(got, hidden)
    wide = hidden.detach().double().requires_grad_()
    (want_grad,) = torch.autograd.grad(plain(wide, weight.double(), targets, mask.double(), 0.1), wide)
    assert torch.allclose(grad.double(), want_grad, rtol=1e-5, atol=1e-7) and weight.grad is None


def test_no_completion_tokens_give_zero_and_zero_gradients():
    hidden = torch.randn(0, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    got = chunked_linear_loss_sum(hidden, weight, torch.zeros(0, dtype=torch.long), torch.zeros(0), 0.1)
    got.backward()
    assert float(got) == 0.0 and hidden.grad.shape == (0, 8) and torch.count_nonzero(weight.grad) == 0


def test_zero_mask_rows_contribute_nothing():
    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn(10, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(20, 6, generator=generator, dtype=torch.float64)
    targets = torch.randint(20, (10,), generator=generator)
    mask = torch.zeros(10, dtype=torch.float64)
    mask[3] = 1.0
    got = chunked_linear_loss_sum(hidden, weight, targets, mask, 0.1, chunk_tokens=4)
    (grad,) = torch.autograd.grad(got, hidden)
    assert torch.allclose(got.double(), plain(hidden, weight, targets, mask, 0.1))
    assert torch.count_nonzero(grad.abs().sum(1)) == 1


@pytest.mark.parametrize("kind", ["lora", "nola", "full"])
def test_a_training_forward_gives_the_plain_losses_gradients(kind):
    """Through a tiny GPT-2 with an adapter, in float32: the fused loss's value within 1e-6 relative
    and the adapter gradients within float rounding of the plain full-logits loss."""
    from types import SimpleNamespace

    from nola.adapters import AdapterConfig, inject_adapters
    from nola.model import GPT2Config, init_gpt2
    from nola.training.loss import completion_loss_sum

    model = init_gpt2(GPT2Config.named("tiny"), 0)
    settings = {"lora": dict(kind="lora", rank=2, alpha=4), "full": dict(kind="full"),  # full: the tied head trains
                "nola": dict(kind="nola", rank=2, alpha=2, num_basis_a=8, num_basis_b=8)}[kind]
    inject_adapters(model, AdapterConfig(**settings))
    model.eval()  # no dropout: both forwards see the same network
    generator = torch.Generator().manual_seed(1)
    if kind != "full":
        for param in model.parameters():
            if param.requires_grad:
                param.data.normal_(0, 0.1, generator=generator)
    ids = torch.randint(model.config.vocab_size, (3, 12), generator=generator)
    mask = torch.zeros(3, 12)
    mask[:, 5:] = 1.0
    mask[2, 9:] = 0.0
    batch = SimpleNamespace(input_ids=ids, targets=torch.roll(ids, -1, 1), loss_mask=mask)
    params = [p for p in model.parameters() if p.requires_grad]
    plain_loss = completion_loss_sum(model, batch, 0.1, 0)
    plain_grads = torch.autograd.grad(plain_loss, params)
    fused_loss = completion_loss_sum(model, batch, 0.1, 4)
    fused_grads = torch.autograd.grad(fused_loss, params)
    assert abs(float(fused_loss) - float(plain_loss)) <= 1e-6 * abs(float(plain_loss))
    for want, got in zip(plain_grads, fused_grads):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))  # float32 rounding
