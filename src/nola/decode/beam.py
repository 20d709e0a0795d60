"""Beam search with microsoft/LoRA's semantics, batched over inputs and run on a KV cache.

The papers' numbers come from `examples/NLG/src/gpt2_beam.py` (Hu et al., ICLR 2022; NOLA's
`gpt/examples/NLG/src/gpt2_beam.py` is the same algorithm). For each input, with K = beam:

- step 0 takes the top K tokens of log-softmax(logits) after the prompt (one beam);
- each later step takes the top K of (beam score + log-softmax) over K × vocab, where the logits
  were first modified by the CTRL repetition penalty over the tokens generated so far (not the
  prompt) and then had every token banned that would repeat an n-gram of the generated tokens;
- a selected candidate whose token is an eos id is finished with score / n ** length_penalty, n =
  the number of generated tokens including that eos; its beam score becomes -inf, so the slot only
  lives on through better-scoring candidates of other beams at the next step;
- after `max_new_tokens` steps the live beams are finished the same way (n = max_new_tokens);
- the input's answer is the first finished hypothesis with the strictly highest score.

Differences from the original that do not change any output:
- inputs are decoded together with left padding (positions come from the attention mask), the
  prompt is run once per input rather than once per beam, and a KV cache serves every step;
- LoRA always runs all `max_new_tokens` steps. Here an input stops as soon as no live beam can
  still beat its best finished hypothesis: log-probabilities are ≤ 0, so every later hypothesis
  scores at most (best live beam score) / n ** length_penalty for some n in (now, max_new_tokens],
  and a tie never replaces the best;
- log_softmax instead of log(softmax) (the same up to rounding, without underflow to -inf), and
  the beam × vocab top-k taken from each beam's own top `beam` tokens.
LoRA's batched mode is wrong (`logits[_bbatch, _query_len - 1]` indexes the beam-expanded rows with
input indices): input b's first token is chosen from input b // beam's logits, at input b's last
position. Its README and NOLA's scripts decode with batch_size 1, the semantics reproduced here.

Adapters are merged into the base weights by the caller (`nola.adapters.merge_adapters`) before
decoding (a merged model runs at the base model's speed), or routed per prompt through an
`nola.adapters.bank.AdapterBank`. The search state and its steps live in `nola.decode.engine`
(`BeamBatch`), which the server also uses to let requests join a running search.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from nola.decode.config import PAPER_SETTINGS, SearchSettings
from nola.decode.engine import BeamBatch, BeamHypothesis, Entry
from nola.errors import NolaError

__all__ = ["BeamHypothesis", "beam_search", "check_inputs", "search"]


def beam_search(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    beam: int = PAPER_SETTINGS.beam,
    length_penalty: float = PAPER_SETTINGS.length_penalty,
    no_repeat_ngram_size: int = PAPER_SETTINGS.no_repeat_ngram_size,
    repetition_penalty: float = PAPER_SETTINGS.repetition_penalty,
    max_new_tokens: int = PAPER_SETTINGS.max_new_tokens,
    eos_ids: Sequence[int] = PAPER_SETTINGS.eos_ids,
    batch_size: int = 16,
    progress: bool = False,
) -> list[list[int]]:
    """The generated tokens of the best hypothesis for each prompt (a list of token ids).

    `model` is a `nola.model.GPT2` with adapters already merged (`nola.adapters.merge_adapters`).
    Prompts are sorted by length and decoded `batch_size` at a time; `beam=1` is greedy search.
    """
    settings = SearchSettings(
        beam=beam,
        length_penalty=length_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
        repetition_penalty=repetition_penalty,
        max_new_tokens=max_new_tokens,
        eos_ids=tuple(eos_ids),
    )
    return [h.tokens for h in search(model, prompts, settings, batch_size=batch_size, progress=progress)]


def search(
    model, prompts: Sequence[Sequence[int]], settings: SearchSettings | Sequence[SearchSettings], *,
    batch_size: int = 16, progress: bool = False, adapters: Sequence[str | None] | None = None,
) -> list[BeamHypothesis]:
    """`beam_search` returning the scores and whether each hypothesis ended on an eos id.

    settings: one for every prompt, or one per prompt (prompts with different settings share the
        batches' forwards; each keeps its own search, `nola.decode.engine`).
    adapters: with a model carrying an `nola.adapters.bank.AdapterBank`, the adapter of each prompt
        (None: the base alone); prompts with different adapters are decoded in the same batches.
    """
    per_prompt = [settings] * len(prompts) if isinstance(settings, SearchSettings) else list(settings)
    if len(per_prompt) != len(prompts):
        raise NolaError(f"{len(per_prompt)} search settings for {len(prompts)} prompts; give one, or one per prompt")
    for one in dict.fromkeys(per_prompt):
        indices = [i for i, own in enumerate(per_prompt) if own == one]
        check_inputs(model.config, [prompts[i] for i in indices], one, batch_size, lambda j: f"prompt {indices[j]}")
    bank = model.adapter_bank
    if adapters is not None:
        if bank is None:
            raise NolaError("an adapter per prompt needs a model with an adapter bank (nola.adapters.bank.AdapterBank)")
        if len(adapters) != len(prompts):
            raise NolaError(f"{len(adapters)} adapters for {len(prompts)} prompts; give one (or None) per prompt")
        versions = [None if name is None else bank.resolve(name) for name in adapters]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[BeamHypothesis | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            starts = range(0, len(order), batch_size)
            for start in tqdm(starts, desc="beam search", unit="batch", disable=not progress):
                chunk = order[start : start + batch_size]
                batch = BeamBatch(model, None if adapters is None else bank.routes)
                done = batch.admit([Entry(prompts[i], per_prompt[i], i, None if adapters is None else versions[i])
                                    for i in chunk])
                while batch.cohorts:
                    done += batch.step()
                for index, hypothesis in done:
                    results[index] = hypothesis
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def check_inputs(config, prompts: Sequence[Sequence[int]], settings: SearchSettings, batch_size: int,
                 name: Callable[[int], str] = "prompt {}".format) -> None:
    """Raise a NolaError naming the setting or prompt that does not fit the model (the settings'
    own ranges are checked when `SearchSettings` is built, in `nola/decode/config.py`); `name(i)`
    says where prompt i comes from."""
    vocab, window = config.vocab_size, config.n_positions
    if settings.beam > vocab:
        raise NolaError(f"decode.beam={settings.beam} must be between 1 and the vocabulary size {vocab}")
    if batch_size < 1:
        raise NolaError(f"decode.batch_size={batch_size} must be at least 1")
    for eos in settings.eos_ids:
        if not 0 <= eos < vocab:
            raise NolaError(f"decode.eos_ids contains {eos}, outside the model's vocabulary [0, {vocab})")
    for index, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise NolaError(f"{name(index)} is empty; every input needs at least one token")
        needed = len(prompt) + settings.max_new_tokens - 1
        if needed > window:
            raise NolaError(
                f"{name(index)} has {len(prompt)} tokens: with max_new_tokens={settings.max_new_tokens} it needs "
                f"{needed} positions but the context window holds {window}; shorten it or lower decode.max_new_tokens"
            )
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise NolaError(f"{name(index)} holds a token id outside the vocabulary [0, {vocab})")
