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

Adapters must be merged into the base weights by the caller (`nola.adapters.merge_adapters`)
before decoding: a merged model runs at the base model's speed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from nola.decode.config import PAPER_SETTINGS, SearchSettings
from nola.errors import NolaError

NEG_INF = float("-inf")


@dataclass(frozen=True)
class BeamHypothesis:
    """The answer for one input: generated tokens (ending with the eos id when `finished`) and
    their length-normalised log-probability (-inf only in degenerate searches)."""

    tokens: list[int]
    score: float
    finished: bool


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
    model, prompts: Sequence[Sequence[int]], settings: SearchSettings, *, batch_size: int = 16, progress: bool = False,
    adapters: Sequence[str | None] | None = None,
) -> list[BeamHypothesis]:
    """`beam_search` returning the scores and whether each hypothesis ended on an eos id.

    adapters: with a model carrying an `nola.adapters.bank.AdapterBank`, the adapter of each prompt
    (None: the base alone); prompts with different adapters are decoded in the same batches.
    """
    check_inputs(model.config, prompts, settings, batch_size)
    bank = getattr(model, "adapter_bank", None)
    if adapters is not None:
        if bank is None:
            raise NolaError("an adapter per prompt needs a model with an adapter bank (nola.adapters.bank.AdapterBank)")
        if len(adapters) != len(prompts):
            raise NolaError(f"{len(adapters)} adapters for {len(prompts)} prompts; give one (or None) per prompt")
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[BeamHypothesis | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            starts = range(0, len(order), batch_size)
            for start in tqdm(starts, desc="beam search", unit="batch", disable=not progress):
                chunk = order[start : start + batch_size]
                if adapters is None:
                    found = _search_batch(model, [list(prompts[i]) for i in chunk], settings)
                else:
                    with bank.routing([adapters[i] for i in chunk]) as routes:
                        found = _search_batch(model, [list(prompts[i]) for i in chunk], settings, routes)
                for index, hypothesis in zip(chunk, found):
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
            raise NolaError(f"prompt {index} holds a token id outside the vocabulary [0, {vocab})")


class _BestHypotheses:
    """Each input's best finished hypothesis so far (LoRA's `best_score` and `best_sequence`)."""

    def __init__(self, batch: int, max_new_tokens: int, device, dtype) -> None:
        self.score = torch.full((batch,), NEG_INF, device=device, dtype=dtype)
        self.found = torch.zeros(batch, dtype=torch.bool, device=device)
        self.tokens = torch.zeros(batch, max_new_tokens, dtype=torch.long, device=device)
        self.length = torch.zeros(batch, dtype=torch.long, device=device)
        self.on_eos = torch.zeros(batch, dtype=torch.bool, device=device)

    def offer(self, active, scores, history, candidates, length: int, power: float, on_eos: bool) -> None:
        """Finish the `candidates` (A, K) of beams with `scores` (A, K) and `history` (A·K, length).

        In beam order with a strict comparison, as LoRA's `_add_beam_candidate`: the first of equal
        scores wins, and an earlier step wins over a later tie.
        """
        A, K = scores.shape
        normalised = torch.where(candidates, scores / float(length**power), NEG_INF)
        value, beam = normalised.max(dim=1)  # first maximum on ties
        better = candidates.any(dim=1) & ((value > self.score[active]) | ~self.found[active])
        if not better.any():
            return
        winners = active[better]
        chosen = history.view(A, K, length)[torch.arange(A, device=scores.device), beam]
        self.score[winners] = value[better]
        self.found[winners] = True
        self.tokens[winners, :length] = chosen[better]
        self.length[winners] = length
        self.on_eos[winners] = on_eos

    def settled(self, active, scores, length: int, max_new_tokens: int, power: float):
        """(A,) True where no continuation of the live beams can beat the best finished hypothesis."""
        live = scores.max(dim=1).values  # ≤ 0, and only falls as tokens are added
        bound = torch.maximum(live / float((length + 1) ** power), live / float(max_new_tokens**power))
        return self.found[active] & (self.score[active] >= bound)

    def results(self) -> list[BeamHypothesis]:
        tokens, lengths = self.tokens.tolist(), self.length.tolist()
        return [
            BeamHypothesis(tokens=row[:length], score=score, finished=on_eos)
            for row, length, score, on_eos in zip(tokens, lengths, self.score.tolist(), self.on_eos.tolist())
        ]


def _search_batch(model, prompts: list[list[int]], settings: SearchSettings, routes=None) -> list[BeamHypothesis]:
    """Decode prompts together: left-padded prefill once per input, then K rows per input.

    routes: the batch's `nola.adapters.bank.Routes`; before every forward it learns which input
    each row belongs to (beams inherit their input's adapter)."""
    K, M, power = settings.beam, settings.max_new_tokens, settings.length_penalty
    device = model.transformer.wte.weight.device
    B, width = len(prompts), max(len(p) for p in prompts)
    input_ids = torch.zeros(B, width, dtype=torch.long)
    prompt_mask = torch.zeros(B, width, dtype=torch.bool)
    for b, prompt in enumerate(prompts):
        input_ids[b, width - len(prompt) :] = torch.tensor(prompt)
        prompt_mask[b, width - len(prompt) :] = True
    input_ids, prompt_mask = input_ids.to(device), prompt_mask.to(device)
    eos_ids = torch.tensor(settings.eos_ids, dtype=torch.long, device=device)

    cache = model.new_cache(B, width + M - 1)
    if routes is not None:
        routes.select(torch.arange(B, device=device))
    logits = model(input_ids, attention_mask=prompt_mask, cache=cache, only_last=True)[:, -1]
    scores, tokens = _top_log_probs(logits, K)  # (B, K): step 0 expands the single beam
    best = _BestHypotheses(B, M, device, scores.dtype)
    active = torch.arange(B, device=device)  # batch positions still searching
    parent_rows = active.repeat_interleave(K)  # cache row holding each beam's parent
    history = tokens.reshape(B * K, 1)  # generated tokens per beam
    scores = _finish_on_eos(best, active, scores, history, eos_ids, power)

    for length in range(1, M):  # `length` tokens generated; choose token length + 1
        settled = best.settled(active, scores, length, M, power)
        if settled.all():
            return best.results()
        if settled.any():
            keep = ~settled
            beams = keep.repeat_interleave(K)
            active, scores, history, parent_rows = active[keep], scores[keep], history[beams], parent_rows[beams]
        A = active.shape[0]
        # Beams at -inf (finished on an eos) are not run: all their candidates are -inf, and every
        # active input has a live beam whose K finite candidates outrank them, so the top-K is unchanged.
        live = torch.isfinite(scores).view(-1).nonzero().squeeze(1)
        cache.reorder(parent_rows[live])
        generated = torch.ones(live.shape[0], length, dtype=torch.bool, device=device)
        mask = torch.cat([prompt_mask[active[live // K]], generated], dim=1)
        if routes is not None:
            routes.select(active[live // K])
        logits = model(history[live, -1:], attention_mask=mask, cache=cache, only_last=True)[:, -1]
        live_log_probs, live_tokens = _top_log_probs(_penalize(logits, history[live], settings), K)
        log_probs = live_log_probs.new_full((A * K, K), NEG_INF).index_copy_(0, live, live_log_probs)
        tokens = live_tokens.new_zeros((A * K, K)).index_copy_(0, live, live_tokens)  # (A·K, K) per beam
        scores, pick = (scores.reshape(-1, 1) + log_probs).view(A, K * K).topk(K, dim=1)
        parents = (torch.arange(A, device=device) * K).unsqueeze(1).add(pick // K).view(-1)
        cache_row = torch.full((A * K,), -1, dtype=torch.long, device=device).index_copy_(
            0, live, torch.arange(live.shape[0], device=device))
        parent_rows = cache_row[parents]  # -1 only under a -inf parent, which is never run again
        history = torch.cat([history[parents], tokens.view(A, K * K).gather(1, pick).view(-1, 1)], dim=1)
        scores = _finish_on_eos(best, active, scores, history, eos_ids, power)

    best.offer(active, scores, history, torch.ones_like(scores, dtype=torch.bool), M, power, on_eos=False)
    return best.results()


def _finish_on_eos(best: _BestHypotheses, active, scores, history, eos_ids, power: float):
    """Finish the beams whose last token is an eos id; their beam scores become -inf."""
    ended = torch.isin(history[:, -1], eos_ids).view_as(scores)
    best.offer(active, scores, history, ended & torch.isfinite(scores), history.shape[1], power, on_eos=True)
    return scores.masked_fill(ended, NEG_INF)


def _top_log_probs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k best tokens and their log-softmax, in at least float32.

    The best k candidates of beam score + log-softmax over beam × vocab are among the k best tokens
    of each beam, so the beam scores are added to those only (rows × k, not rows × vocab).
    """
    log_probs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1)
    return log_probs.topk(k, dim=1)


def _penalize(logits: torch.Tensor, history: torch.Tensor, settings: SearchSettings) -> torch.Tensor:
    """LoRA's `_postprocess_next_token_scores`: repetition penalty, then n-gram bans, over the
    generated tokens `history` (N, t) only."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    penalty = settings.repetition_penalty
    if penalty != 1.0:  # CTRL (Keskar et al., 2019): shrink every generated token's logit toward 0
        seen = logits.gather(1, history)
        logits = logits.scatter(1, history, torch.where(seen < 0, seen * penalty, seen / penalty))
    n = settings.no_repeat_ngram_size
    if n > 0 and history.shape[1] >= n:
        windows = history.unfold(1, n, 1)  # (N, t - n + 1, n): every generated n-gram
        prefix = history[:, history.shape[1] - n + 1 :]  # the last n - 1 tokens
        repeats = (windows[:, :, :-1] == prefix.unsqueeze(1)).all(dim=2)
        row, start = repeats.nonzero(as_tuple=True)
        logits[row, windows[row, start, -1]] = NEG_INF
    return logits
