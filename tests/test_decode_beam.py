"""Batched, cached beam search against a plain transcription of microsoft/LoRA's `gpt2_beam.py`.

`reference_beam_search` below is the independent reference: one prompt at a time, the whole
sequence through the model at every step (no cache, no padding), Python loops over beams for the
repetition penalty, the n-gram bans and the finished hypotheses, and all `max_new_tokens` steps
run (no early stop) — the algorithm as LoRA's README runs it (batch_size 1). Models are random
tiny GPT-2s in float64, so rounding cannot flip a near-tie between the two implementations.
"""

from __future__ import annotations

import random

import pytest
import torch

from nola.decode import beam_search
from nola.errors import NolaError
from nola.model import GPT2Config, init_gpt2

EOS = (5, 9)


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_model(seed: int, *, vocab: int = 512, eos=EOS, eos_scale: float = 0.1, sharpness: float = 4.0):
    """A random tiny GPT-2 in float64 whose eos rows make some prompts stop early and others not.

    Scaling the (tied) embeddings sharpens the distributions; each eos id gets its own random row,
    so its logit varies strongly with the context.
    """
    model = init_gpt2(GPT2Config.named("tiny", vocab_size=vocab), seed)
    generator = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        embeddings = model.transformer.wte.weight
        embeddings.mul_(sharpness)
        for eos in eos:
            embeddings[eos] = torch.randn(embeddings.shape[1], generator=generator) * eos_scale
    return model.double().eval()


def random_prompts(count: int, *, vocab: int, max_len: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(rng.randint(1, max_len))] for _ in range(count)]


def banned_by_ngrams(generated: list[int], n: int) -> list[int]:
    """fairseq/LoRA `_calc_banned_ngram_tokens` for one hypothesis."""
    if len(generated) + 1 < n:
        return []
    followers: dict[tuple[int, ...], list[int]] = {}
    for start in range(len(generated) - n + 1):
        ngram = generated[start : start + n]
        followers.setdefault(tuple(ngram[:-1]), []).append(ngram[-1])
    return followers.get(tuple(generated[len(generated) - n + 1 :]), [])


@torch.no_grad()
def reference_beam_search(
    model, prompt, *, beam, length_penalty, no_repeat_ngram_size, repetition_penalty, max_new_tokens, eos_ids
):
    histories: list[list[int]] = [[]]
    beam_scores = None
    best_score, best_tokens = None, None
    for step in range(max_new_tokens):
        logits = model(torch.tensor([prompt + h for h in histories]), only_last=True)[:, -1, :].clone()
        if step > 0:
            for row, generated in enumerate(histories):
                if repetition_penalty != 1.0:
                    for token in set(generated):
                        if logits[row, token] < 0:
                            logits[row, token] *= repetition_penalty
                        else:
                            logits[row, token] /= repetition_penalty
                if no_repeat_ngram_size > 0:
                    for token in banned_by_ngrams(generated, no_repeat_ngram_size):
                        logits[row, token] = float("-inf")
        log_probs = torch.log(torch.softmax(logits, dim=-1))
        vocab = log_probs.shape[-1]
        if step == 0:
            candidates = log_probs[0]
        else:
            candidates = (beam_scores.unsqueeze(1) + log_probs).reshape(-1)
        top_scores, top_index = candidates.topk(beam)
        histories = [histories[int(i) // vocab] + [int(i) % vocab] for i in top_index]
        beam_scores = top_scores.clone()
        for k, generated in enumerate(histories):
            if generated[-1] in eos_ids:
                score = beam_scores[k] / len(generated) ** length_penalty
                if best_score is None or best_score < score:
                    best_score, best_tokens = score, generated
                beam_scores[k] = float("-inf")
    for k, generated in enumerate(histories):
        score = beam_scores[k] / max_new_tokens**length_penalty
        if best_score is None or best_score < score:
            best_score, best_tokens = score, generated
    return best_tokens


def reference_all(model, prompts, **settings):
    return [reference_beam_search(model, p, **settings) for p in prompts]


PAPER_LIKE = dict(
    beam=10, length_penalty=0.8, no_repeat_ngram_size=4, repetition_penalty=1.0, max_new_tokens=20, eos_ids=EOS
)


@pytest.fixture(scope="module")
def paper_like_case():
    model = tiny_model(0, eos_scale=0.15)
    prompts = random_prompts(56, vocab=512, max_len=40, seed=1)
    return model, prompts, reference_all(model, prompts, **PAPER_LIKE)


@pytest.mark.parametrize("batch_size", [1, 16])
def test_matches_reference_with_paper_settings(paper_like_case, batch_size):
    model, prompts, expected = paper_like_case
    assert beam_search(model, prompts, batch_size=batch_size, **PAPER_LIKE) == expected


def test_paper_like_case_covers_eos_and_length_limit(paper_like_case):
    _, prompts, expected = paper_like_case
    on_eos = [h for h in expected if h[-1] in EOS]
    assert len(on_eos) >= 10 and all(len(h) < 20 for h in on_eos)
    assert sum(len(h) == 20 and h[-1] not in EOS for h in expected) >= 10
    assert len({len(h) for h in on_eos}) >= 3 and len({len(p) for p in prompts}) >= 25


PENALISED = dict(
    beam=5, length_penalty=1.3, no_repeat_ngram_size=2, repetition_penalty=1.6, max_new_tokens=16, eos_ids=EOS
)


def test_repetition_penalty_and_ngram_bans_match_reference():
    model = tiny_model(2, eos_scale=0.15)
    prompts = random_prompts(20, vocab=512, max_len=40, seed=3)
    expected = reference_all(model, prompts, **PENALISED)
    for batch_size in (1, 7):
        assert beam_search(model, prompts, batch_size=batch_size, **PENALISED) == expected
    plain = beam_search(model, prompts, **{**PENALISED, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0})
    assert sum(a != b for a, b in zip(plain, expected)) >= 5  # the penalties did change outputs
    assert any(h[-1] in EOS for h in expected) and any(len(h) == 16 for h in expected)


@pytest.mark.parametrize("length_penalty", [0.0, -0.5])
def test_greedy_and_non_positive_length_penalty_match_reference(length_penalty):
    model = tiny_model(4, eos_scale=0.15)
    prompts = random_prompts(12, vocab=512, max_len=30, seed=5)
    settings = dict(PAPER_LIKE, max_new_tokens=16, length_penalty=length_penalty, no_repeat_ngram_size=3)
    for beam in (1, 3):
        settings["beam"] = beam
        assert beam_search(model, prompts, batch_size=5, **settings) == reference_all(model, prompts, **settings)


def test_full_vocabulary_with_the_papers_eos_ids():
    """GPT-2's vocabulary and eos ids {50256, 628} with the default (paper) settings."""
    model = tiny_model(6, vocab=50257, eos=(50256, 628), eos_scale=0.12)
    prompts = random_prompts(5, vocab=50257, max_len=20, seed=7)
    settings = dict(PAPER_LIKE, max_new_tokens=12, eos_ids=(50256, 628))
    expected = reference_all(model, prompts, **settings)
    assert beam_search(model, prompts, batch_size=3, max_new_tokens=12) == expected


def test_float32_model_matches_reference():
    model = tiny_model(8).float()
    prompts = random_prompts(8, vocab=512, max_len=30, seed=9)
    settings = dict(PAPER_LIKE, max_new_tokens=12)
    assert beam_search(model, prompts, batch_size=8, **settings) == reference_all(model, prompts, **settings)


def test_restores_training_mode_and_handles_no_prompts():
    model = tiny_model(0).train()
    assert beam_search(model, [], eos_ids=EOS) == []
    assert len(beam_search(model, [[1, 2, 3]], beam=2, max_new_tokens=3, eos_ids=EOS)[0]) <= 3
    assert model.training


@pytest.mark.parametrize(
    "prompts, overrides, message",
    [
        ([[1, 2], []], {}, "prompt 1 is empty"),
        ([[1] * 120], {"max_new_tokens": 10}, "prompt 0 has 120 tokens"),
        ([[1, 2]], {"eos_ids": (5, 512)}, "eos_ids contains 512"),
        ([[1, 2]], {"eos_ids": (-1,)}, "eos_ids contains -1"),
        ([[1, 2]], {"beam": 0}, "decode.beam=0"),
        ([[1, 600]], {}, "prompt 0 holds a token id outside"),
        ([[1, 2]], {"max_new_tokens": 0}, "max_new_tokens=0"),
        ([[1, 2]], {"batch_size": 0}, "batch_size=0"),
        ([[1, 2]], {"repetition_penalty": 0.0}, "repetition_penalty=0.0"),
        ([[1, 2]], {"no_repeat_ngram_size": -1}, "no_repeat_ngram_size=-1"),
    ],
)
def test_bad_input_raises_clear_error(prompts, overrides, message):
    model = tiny_model(0)
    with pytest.raises(NolaError, match=message):
        beam_search(model, prompts, **{"eos_ids": EOS, **overrides})


def test_prompt_filling_the_window_exactly_is_accepted():
    model = tiny_model(0)  # 128 positions: 119 prompt tokens + 10 new tokens needs 128 (the last is not fed)
    assert len(beam_search(model, [[1] * 119], beam=2, max_new_tokens=10, eos_ids=EOS)[0]) <= 10
