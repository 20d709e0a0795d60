"""LoRA beam-search rules on hand-built models whose answers are worked out by hand.

`bigram_model(logits)` is a real `nola.model.GPT2` (so the real KV cache and masks are used) whose
blocks add nothing, so the next-token logits depend only on the last token: row i of `logits`.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nola.decode import SearchSettings, beam_search, search
from nola.model import GPT2, GPT2Config

V, EOS = 32, 31


pytestmark = pytest.mark.usefixtures("single_thread")


def bigram_model(logits: torch.Tensor) -> GPT2:
    """GPT-2 computing `logits[last token]`: zero residual branches, no positions, embedding i =
    e_i - e_(i+V) (ln_f maps it to c·(e_i - e_(i+V))), and an untied output layer with
    W[j, i] = logits[i, j] / c, so ln_f(embedding i) · W[j] = logits[i, j]."""
    vocab = logits.shape[0]
    model = GPT2(GPT2Config.named("tiny", vocab_size=vocab)).double()  # n_embd 64 = 2 · vocab
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        for norm in [m for m in model.modules() if isinstance(m, nn.LayerNorm)]:
            norm.weight.fill_(1.0)
        eye = torch.eye(vocab, dtype=torch.float64)
        model.transformer.wte.weight.copy_(torch.cat([eye, -eye], dim=1))
        scale = model.transformer.ln_f(model.transformer.wte.weight)[0, 0]
        model.lm_head = nn.Linear(2 * vocab, vocab, bias=False).double()
        model.lm_head.weight.copy_(torch.cat([logits.T.double() / scale, torch.zeros(vocab, vocab)], dim=1))
    return model.eval()


def transitions(rows: dict[int, dict[int, float]]) -> torch.Tensor:
    """Log-probabilities: each listed row gets the given probabilities, the rest spread evenly."""
    table = torch.full((V, V), 1.0 / V, dtype=torch.float64)
    for token, probs in rows.items():
        rest = (1.0 - sum(probs.values())) / (V - len(probs))
        table[token] = rest
        for nxt, p in probs.items():
            table[token, nxt] = p
    return table.log()


def chain(start_p: float, eos_p: float, step_p: float) -> torch.Tensor:
    """From 0: eos with eos_p or 1 with start_p; then 1 → 2 → … → 30 each with step_p."""
    rows = {0: {EOS: eos_p, 1: start_p}}
    rows.update({i: {i + 1: step_p} for i in range(1, 30)})
    return transitions(rows)


def test_model_construction_gives_the_table():
    table = chain(0.35, 0.6, 0.999)
    model = bigram_model(table)
    logits = model(torch.arange(V).view(1, V))[0]
    assert torch.allclose(logits, table, atol=1e-12, rtol=0)


def test_a_long_confident_hypothesis_beats_an_early_eos():
    """Early eos: log 0.6 / 1 ** 0.8 = -0.511. The chain: (log 0.35 + 19 log 0.999) / 20 ** 0.8 = -0.0973
    wins, though at step 1 its beam score (-1.05) is below the finished one: stopping the search
    there (as a bound that ignores later lengths would) gives the wrong answer."""
    settings = SearchSettings(beam=2, length_penalty=0.8, no_repeat_ngram_size=4, max_new_tokens=20, eos_ids=(EOS,))
    (found,) = search(bigram_model(chain(0.35, 0.6, 0.999)), [[0]], settings)
    assert found.tokens == list(range(1, 21)) and not found.finished
    assert found.score == pytest.approx((math.log(0.35) + 19 * math.log(0.999)) / 20**0.8, abs=1e-9)


def test_an_early_eos_beats_a_long_unlikely_hypothesis():
    settings = SearchSettings(beam=2, length_penalty=0.8, no_repeat_ngram_size=4, max_new_tokens=20, eos_ids=(EOS,))
    (found,) = search(bigram_model(chain(0.35, 0.6, 0.5)), [[0]], settings)
    assert found.tokens == [EOS] and found.finished
    assert found.score == pytest.approx(math.log(0.6), abs=1e-9)


def test_length_counts_the_eos_token():
    """0 → 1 (p 0.5) → eos (p 0.9): score (log 0.5 + log 0.9) / 2 ** lp; with lp = 1 that is -0.399,
    which beats stopping at once (log 0.4 = -0.916); with len = 1 (eos not counted) it would be -0.799."""
    table = transitions({0: {1: 0.5, EOS: 0.4}, 1: {EOS: 0.9}})
    settings = SearchSettings(beam=2, length_penalty=1.0, max_new_tokens=5, eos_ids=(EOS,))
    (found,) = search(bigram_model(table), [[0]], settings)
    assert found.tokens == [1, EOS]
    assert found.score == pytest.approx((math.log(0.5) + math.log(0.9)) / 2, abs=1e-9)


@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_repetition_penalty_shrinks_generated_tokens_logits(offset):
    """Greedy from 0 picks 1; from 1, token 1 (log 0.6 = -0.51) beats 3 (log 0.3 = -1.20) until the
    penalty 3 applies to the already generated 1: negative logits ×3 → -1.53, or with every logit of
    the row raised by 3 (same softmax), positive ones ÷3 → 0.83 < 1.80. Either way 3 then eos."""
    table = transitions({0: {1: 0.5}, 1: {1: 0.6, 3: 0.3}, 3: {EOS: 0.9}})
    table[1] += offset
    model = bigram_model(table)
    settings = dict(beam=1, no_repeat_ngram_size=0, max_new_tokens=5, eos_ids=(EOS,))
    assert beam_search(model, [[0]], repetition_penalty=1.0, **settings) == [[1, 1, 1, 1, 1]]
    assert beam_search(model, [[0]], repetition_penalty=3.0, **settings) == [[1, 3, EOS]]


@pytest.mark.parametrize("size, expected", [(2, [1, 2, 1, 3, EOS]), (3, [1, 2, 1, 2, 3, EOS]), (0, [1, 2, 1, 2, 1, 2])])
def test_ngram_bans_look_at_generated_tokens_only(size, expected):
    """1 → 2 → 1 → … (p 0.9, else 3 with p 0.05; 3 → eos). With size 2 the second (1, 2) is banned,
    with size 3 the second (1, 2, 1). The prompt holds (1, 2) and (2, 1) too: LoRA ignores it."""
    table = transitions({0: {1: 0.9}, 1: {2: 0.9, 3: 0.05}, 2: {1: 0.9, 3: 0.05}, 3: {EOS: 0.9}})
    model = bigram_model(table)
    for prompt in ([0], [1, 2, 1, 2, 0]):
        found = beam_search(model, [prompt], beam=1, no_repeat_ngram_size=size, max_new_tokens=6, eos_ids=(EOS,))
        assert found == [expected]


def test_negative_length_penalty_keeps_searching_for_a_short_winner():
    """lp = -0.5 favours short hypotheses: eos at once scores log 0.3 = -1.204; 1 then eos scores
    (log 0.6 + log 0.9) · 2 ** 0.5 = -0.871 and wins, so the search must not stop after step 1 even
    though the live beam's best possible score at max length (-0.51 · 20 ** 0.5) is far lower."""
    table = transitions({0: {1: 0.6, EOS: 0.3}, 1: {EOS: 0.9}})
    settings = SearchSettings(beam=2, length_penalty=-0.5, max_new_tokens=20, eos_ids=(EOS,))
    (found,) = search(bigram_model(table), [[0]], settings)
    assert found.tokens == [1, EOS]
    assert found.score == pytest.approx((math.log(0.6) + math.log(0.9)) * 2**0.5, abs=1e-9)
