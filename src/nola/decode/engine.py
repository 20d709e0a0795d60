"""One running beam search that inputs join and leave between steps, each with its own settings.

Continuous batching (Yu et al., "Orca", OSDI 2022; as vLLM, TGI and LoRAX serve): a `BeamBatch`
holds every input being searched and runs one forward per step over all their live beams. Inputs
are admitted at a step boundary (`admit`: their prompts prefilled together, their keys and values
appended to the shared KV cache) and leave it when their own search ends (`step` returns them), so
a short request does not wait for a long one. Inputs admitted together with equal `SearchSettings`
form a cohort: the search state of `nola.decode.beam`'s batched search (beams, history, best
finished hypotheses), so each input keeps its own beam count, length limit, length penalty,
n-gram ban and repetition penalty, while the forward pass, the expensive part, is shared.

The KV cache holds one timeline of columns: each input's prompt is right-aligned where it was
admitted (left padding, masked out), and every step appends one column for every row. An input
that joins with a prompt longer than the timeline shifts the others right; leading columns that no
live input uses any more are dropped (`compact`).
Every row attends to its own columns only and takes its positions from its own mask, so an input
computes what it computes alone (up to the order of floating-point sums over masked columns: the
tests compare tokens, as for any padded batch).

`nola.decode.beam.search` runs batches from start to end (the papers' decode); the server
(`nola.serve.worker`) keeps one `BeamBatch` running and admits queued requests between steps.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from nola.decode.config import SearchSettings

NEG_INF = float("-inf")


@dataclass(frozen=True)
class BeamHypothesis:
    """The answer for one input: generated tokens (ending with the eos id when `finished`) and
    their length-normalised log-probability (-inf only in degenerate searches)."""

    tokens: list[int]
    score: float
    finished: bool


@dataclass(frozen=True)
class Entry:
    """One input to admit: its prompt ids, its search settings, its adapter (a key of the batch's
    `routes_for`, None for the base alone) and a ticket that comes back with its answer."""

    prompt: Sequence[int]
    settings: SearchSettings
    ticket: Hashable
    adapter: object | None = None


class BeamBatch:
    """The running search (module docstring).

    model: a `nola.model.GPT2` (adapters merged, or routed through `routes_for`).
    routes_for: given the distinct adapters of the live inputs, the `nola.adapters.bank.Routes`
        that route them (None: no per-row adapters; every entry's adapter must then be None).
    compact: drop the leading columns no live input uses at every step (a long-running batch that
        inputs keep joining); otherwise only when the context window would overflow, so a batch
        searched from start to end computes exactly as the papers' decode always has.
    """

    def __init__(self, model, routes_for: Callable[[list[object]], object] | None = None, *,
                 compact: bool = False) -> None:
        self.model, self.routes_for, self.compact = model, routes_for, compact
        self.device = model.transformer.wte.weight.device
        self.window = model.config.n_positions
        self.cache = None
        self.cohorts: list[_Cohort] = []
        self._routes = None
        self._routed: list[object] = []  # the adapters `_routes` holds, in slot order
        self._capacity = 0  # timeline columns the cache must hold for every live input to reach its limit
        self.last_rows = 0  # rows (live beams) of the last step's forward

    @property
    def inputs(self) -> int:
        """Inputs still searching."""
        return sum(cohort.active.shape[0] for cohort in self.cohorts)

    # ------------------------------------------------------------------ joining
    def admit(self, entries: Sequence[Entry]) -> list[tuple[Hashable, BeamHypothesis]]:
        """Prefill `entries` together and add them to the batch; returns those already done
        (max_new_tokens=1: the first token is the whole answer)."""
        if not entries:
            return []
        groups: dict[SearchSettings, list[Entry]] = {}
        for entry in entries:
            groups.setdefault(entry.settings, []).append(entry)
        entries = [entry for members in groups.values() for entry in members]  # each cohort's rows contiguous
        B = len(entries)
        width = max(len(entry.prompt) for entry in entries)
        input_ids = torch.zeros(B, width, dtype=torch.long)
        prompt_mask = torch.zeros(B, width, dtype=torch.bool)
        for b, entry in enumerate(entries):
            input_ids[b, width - len(entry.prompt):] = torch.tensor(list(entry.prompt))
            prompt_mask[b, width - len(entry.prompt):] = True
        input_ids, prompt_mask = input_ids.to(self.device), prompt_mask.to(self.device)
        longest = max(entry.settings.max_new_tokens for entry in entries)
        # a batch's first prefill keeps its cache (room for every new token); a joiner's is merged in
        cache = self.model.new_cache(B, width + longest - 1 if self.cache is None else width)
        slots = self._slots_for([entry.adapter for entry in entries])
        logits = self._forward(input_ids, prompt_mask, cache, slots)
        lengths = torch.tensor([len(entry.prompt) for entry in entries], device=self.device)
        if self.cache is None:
            offset, self.cache, starts = 0, cache, width - lengths
        else:
            offset = self.cache.rows
            shift, self.cache = self.cache.joined(cache)
            for cohort in self.cohorts:
                cohort.starts += shift
            starts = self.cache.length - lengths
        done, first = [], 0
        for settings, members in groups.items():
            rows = slice(first, first + len(members))
            cohort = _Cohort(settings, [entry.ticket for entry in members], [entry.adapter for entry in members],
                             slots[rows], starts[rows], lengths[rows], offset + first, logits[rows])
            first += len(members)
            done += cohort.leave_if_complete()
            if cohort.active.numel():
                self.cohorts.append(cohort)
        self._capacity = max([self._capacity] + [cohort.extent() for cohort in self.cohorts])
        return done

    # ------------------------------------------------------------------ stepping
    def step(self, cancelled: Callable[[Hashable], bool] | None = None) -> list[tuple[Hashable, BeamHypothesis | None]]:
        """Advance every input by one token; returns the inputs whose search ended, with their
        answers (None for those `cancelled` says to drop: they are not decoded further)."""
        done: list[tuple[Hashable, BeamHypothesis | None]] = []
        for cohort in self.cohorts:
            done += cohort.prune(cancelled)
        self.cohorts = [cohort for cohort in self.cohorts if cohort.active.numel()]
        if not self.cohorts:
            self.cache, self._routes, self._routed, self._capacity = None, None, [], 0
            return done
        feeds = [cohort.feed() for cohort in self.cohorts]
        parents = torch.cat([cohort.row_offset + rows for cohort, (rows, _, _) in zip(self.cohorts, feeds)])
        tokens = torch.cat([last for _, last, _ in feeds])
        starts = torch.cat([cohort.starts[row_inputs] for cohort, (_, _, row_inputs) in zip(self.cohorts, feeds)])
        slots = torch.cat([cohort.slots[row_inputs] for cohort, (_, _, row_inputs) in zip(self.cohorts, feeds)])
        drop = self._droppable(starts)
        if drop:
            for cohort in self.cohorts:
                cohort.starts -= drop
            starts, self._capacity = starts - drop, self._capacity - drop
        self.cache.reorder(parents, drop_front=drop, capacity=self._capacity)
        columns = torch.arange(self.cache.length + 1, device=self.device)
        mask = columns.unsqueeze(0) >= starts.unsqueeze(1)
        self.last_rows = parents.shape[0]
        logits = self._forward(tokens, mask, self.cache, slots)
        offset = 0
        for cohort, (rows, _, _) in zip(self.cohorts, feeds):
            count = rows.shape[0]
            cohort.absorb(logits[offset:offset + count], offset)
            offset += count
            done += cohort.leave_if_complete()
        self.cohorts = [cohort for cohort in self.cohorts if cohort.active.numel()]
        return done

    def _droppable(self, starts: torch.Tensor) -> int:
        """Leading columns no live row uses, to drop now (see `compact`)."""
        if not self.compact and self.cache.length + 1 <= self.window:
            return 0
        return max(int(starts.min()), 0)

    def _slots_for(self, adapters: list[object]) -> torch.Tensor:
        """The routes' slot of each adapter (-1: the base alone). The routes are rebuilt, and every
        cohort's slots renumbered, only when an adapter they do not hold joins."""
        if self.routes_for is None:
            if any(adapter is not None for adapter in adapters):
                raise ValueError("an adapter per input needs a batch built with routes_for")
            return torch.full((len(adapters),), -1, dtype=torch.long, device=self.device)
        held = {id(a) for a in self._routed}
        if self._routes is None or any(a is not None and id(a) not in held for a in adapters):
            live = [a for cohort in self.cohorts for a in cohort.adapters_of(cohort.active)] + list(adapters)
            self._routed = list({id(a): a for a in live if a is not None}.values())  # distinct, first-seen order
            self._routes = self.routes_for(self._routed)
            for cohort in self.cohorts:
                active = set(cohort.active.tolist())  # inputs that left may hold adapters no longer routed
                cohort.slots = self._numbered([a if i in active else None for i, a in enumerate(cohort.adapters)])
        return self._numbered(adapters)

    def _numbered(self, adapters: list[object]) -> torch.Tensor:
        slot = {id(a): i for i, a in enumerate(self._routed)}
        return torch.tensor([-1 if a is None else slot[id(a)] for a in adapters], dtype=torch.long,
                            device=self.device)

    def _forward(self, input_ids, mask, cache, slots: torch.Tensor) -> torch.Tensor:
        if self._routes is None:
            return self.model(input_ids, attention_mask=mask, cache=cache, only_last=True)[:, -1]
        self._routes.select_slots(slots)
        with self._routes.active():
            return self.model(input_ids, attention_mask=mask, cache=cache, only_last=True)[:, -1]


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

    def results(self, inputs: torch.Tensor) -> list[BeamHypothesis]:
        tokens, lengths = self.tokens[inputs].tolist(), self.length[inputs].tolist()
        return [
            BeamHypothesis(tokens=row[:length], score=score, finished=on_eos)
            for row, length, score, on_eos in zip(tokens, lengths, self.score[inputs].tolist(),
                                                  self.on_eos[inputs].tolist())
        ]


class _Cohort:
    """Inputs admitted together with equal settings: `nola.decode.beam`'s batched search state.

    `active` indexes the cohort's inputs still searching; per beam, `parent_rows` is the row of
    its parent among the cohort's rows of the cache, which start at `row_offset`."""

    def __init__(self, settings: SearchSettings, tickets, adapters, slots, starts, prompt_lengths, row_offset: int,
                 logits) -> None:
        self.settings = settings
        self.K, self.M, self.power = settings.beam, settings.max_new_tokens, settings.length_penalty
        self.tickets, self.adapters = list(tickets), list(adapters)
        self.slots = slots.clone()  # each input's slot in the batch's routes (-1: the base alone)
        self.starts = starts.clone()  # each input's first timeline column (its prompt's first token)
        self.prompt_lengths = prompt_lengths.clone()
        self.row_offset = row_offset
        B, device = len(self.tickets), logits.device
        self.eos_ids = torch.tensor(settings.eos_ids, dtype=torch.long, device=device)
        scores, tokens = top_log_probs(logits, self.K)  # (B, K): step 0 expands the single beam
        self.best = _BestHypotheses(B, self.M, device, scores.dtype)
        self.active = torch.arange(B, device=device)
        self.parent_rows = self.active.repeat_interleave(self.K)
        self.history = tokens.reshape(B * self.K, 1)
        self.length = 1  # tokens generated
        self.scores = self._finish_on_eos(scores)
        self._live: torch.Tensor | None = None

    def adapters_of(self, inputs: torch.Tensor) -> list[object]:
        return [self.adapters[i] for i in inputs.tolist()]

    def extent(self) -> int:
        """One past the last timeline column its inputs can reach (prompt + max_new_tokens - 1)."""
        return int((self.starts[self.active] + self.prompt_lengths[self.active]).max()) + self.M - 1

    def leave_if_complete(self) -> list[tuple[Hashable, BeamHypothesis]]:
        """At the length limit every live beam is finished (n = max_new_tokens) and all inputs leave."""
        if self.length < self.M:
            return []
        self.best.offer(self.active, self.scores, self.history, torch.ones_like(self.scores, dtype=torch.bool),
                        self.M, self.power, on_eos=False)
        answers = self._answers(self.active)
        self.active = self.active[:0]
        return answers

    def prune(self, cancelled) -> list[tuple[Hashable, BeamHypothesis | None]]:
        """Drop the inputs whose best can no longer be beaten (answered) and the cancelled ones (None)."""
        settled = self.best.settled(self.active, self.scores, self.length, self.M, self.power)
        if cancelled is not None:
            dropped = torch.tensor([bool(cancelled(self.tickets[i])) for i in self.active.tolist()],
                                   dtype=torch.bool, device=settled.device)
        else:
            dropped = torch.zeros_like(settled)
        leaving = settled | dropped
        if not leaving.any():
            return []
        out: list[tuple[Hashable, BeamHypothesis | None]] = []
        out += self._answers(self.active[settled & ~dropped])
        out += [(self.tickets[i], None) for i in self.active[dropped].tolist()]
        keep = ~leaving
        beams = keep.repeat_interleave(self.K)
        self.active, self.scores = self.active[keep], self.scores[keep]
        self.history, self.parent_rows = self.history[beams], self.parent_rows[beams]
        return out

    def _answers(self, inputs: torch.Tensor) -> list[tuple[Hashable, BeamHypothesis]]:
        return list(zip([self.tickets[i] for i in inputs.tolist()], self.best.results(inputs)))

    def feed(self):
        """(parent rows of the live beams, their last tokens (n, 1), the input of each) for the next forward.

        Beams at -inf (finished on an eos) are not run: all their candidates are -inf, and every
        active input has a live beam whose K finite candidates outrank them, so the top-K is unchanged."""
        live = torch.isfinite(self.scores).view(-1).nonzero().squeeze(1)
        self._live = live
        return self.parent_rows[live], self.history[live, -1:], self.active[live // self.K]

    def absorb(self, logits: torch.Tensor, row_offset: int) -> None:
        """The search step after the forward: `logits` (n, vocab) of the beams `feed` gave, in order;
        their rows of the cache now start at `row_offset`."""
        K, live, device = self.K, self._live, logits.device
        A = self.active.shape[0]
        live_log_probs, live_tokens = top_log_probs(penalize(logits, self.history[live], self.settings), K)
        log_probs = live_log_probs.new_full((A * K, K), NEG_INF).index_copy_(0, live, live_log_probs)
        tokens = live_tokens.new_zeros((A * K, K)).index_copy_(0, live, live_tokens)  # (A·K, K) per beam
        scores, pick = (self.scores.reshape(-1, 1) + log_probs).view(A, K * K).topk(K, dim=1)
        parents = (torch.arange(A, device=device) * K).unsqueeze(1).add(pick // K).view(-1)
        cache_row = torch.full((A * K,), -1, dtype=torch.long, device=device).index_copy_(
            0, live, torch.arange(live.shape[0], device=device))
        self.parent_rows = cache_row[parents]  # -1 only under a -inf parent, which is never run again
        self.row_offset = row_offset
        self.history = torch.cat([self.history[parents], tokens.view(A, K * K).gather(1, pick).view(-1, 1)], dim=1)
        self.length += 1
        self.scores = self._finish_on_eos(scores)

    def _finish_on_eos(self, scores):
        """Finish the beams whose last token is an eos id; their beam scores become -inf."""
        ended = torch.isin(self.history[:, -1], self.eos_ids).view_as(scores)
        self.best.offer(self.active, scores, self.history, ended & torch.isfinite(scores), self.history.shape[1],
                        self.power, on_eos=True)
        return scores.masked_fill(ended, NEG_INF)


def top_log_probs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k best tokens and their log-softmax, in at least float32.

    The best k candidates of beam score + log-softmax over beam × vocab are among the k best tokens
    of each beam, so the beam scores are added to those only (rows × k, not rows × vocab). Log-softmax
    is the logit less the row's log-sum-exp, a per-row constant, so the top k are taken on the raw
    logits and only those k are shifted: one read of the vocabulary row for the log-sum-exp and one
    for the top-k, no rows × vocab log-probability tensor written (as a fused softmax-top-k kernel
    does). The log-sum-exp is taken in place, shifted by each row's best logit (the first of the top
    k), so `logits` is consumed: no rows × vocabulary tensor is allocated either. The scores equal
    `log_softmax(...).topk` to within float rounding (a few ulps).
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    top, tokens = logits.topk(k, dim=1)
    peak = top[:, :1].clone()
    peak.masked_fill_(~torch.isfinite(peak), 0.0)  # a row of -inf only: its log-sum-exp stays -inf
    lse = logits.sub_(peak).exp_().sum(dim=1, keepdim=True).log_().add_(peak)
    return top - lse, tokens


def penalize(logits: torch.Tensor, history: torch.Tensor, settings: SearchSettings) -> torch.Tensor:
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
        prefix = history[:, history.shape[1] - n + 1:]  # the last n - 1 tokens
        repeats = (windows[:, :, :-1] == prefix.unsqueeze(1)).all(dim=2)
        row, start = repeats.nonzero(as_tuple=True)
        logits[row, windows[row, start, -1]] = NEG_INF
    return logits

