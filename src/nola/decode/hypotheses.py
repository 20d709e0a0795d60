"""Decode a split's contexts and write the hypotheses in the scorers' format.

The prompt of a context is its tokens followed by the bos 50256 (microsoft/LoRA examples/NLG). Each answer becomes
text as microsoft/LoRA's `gpt2_decode.py` makes it: the decoded tokens cut at the first
`<|endoftext|>` and at the first blank line ("\\n\\n", which is also eos id 628 but can come from
other tokens, e.g. two "\\n"), then stripped. Runs of whitespace are joined into one space so every
hypothesis is one line (LoRA leaves a lone "\\n" in, which would shift every later line of its
file; no scorer sees the difference, as all of them tokenize on whitespace).

LoRA decodes every test example, one per reference, and keeps one answer per context; decoding each
distinct context once (the reference groups, in the order of the reference files) gives the same
lines in a fraction of the time.

Under torchrun the contexts are dealt out by length over the processes and rank 0 gathers the
answers; the other ranks get an empty list.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch.distributed as dist

from nola.data import TokenLayout
from nola.fileio import render_lines, write_text_atomic
from nola.decode.beam import check_inputs, search
from nola.decode.config import search_settings
from nola.errors import NolaError
from nola.layout import RunLayout

ENDOFTEXT = "<|endoftext|>"
BLANK_LINE = "\n\n"


@dataclass(frozen=True)
class Hypothesis:
    """The answer for contexts[index]: generated token ids (with the final eos id when `finished`),
    the length-normalised log-probability (None when -inf) and the scorer-ready `text`."""

    index: int
    context: str
    tokens: list[int]
    score: float | None
    finished: bool
    text: str


def hypothesis_text(tokenizer, tokens: list[int]) -> str:
    """LoRA `gpt2_decode.py`: decode, cut at `<|endoftext|>` and at the first blank line, strip; one line."""
    text = tokenizer.decode(tokens).split(ENDOFTEXT)[0].split(BLANK_LINE)[0]
    return " ".join(text.split())


def context_prompts(tokenizer, contexts: list[str]) -> list[list[int]]:
    """Context tokens + bos, as in training (microsoft/LoRA examples/NLG)."""
    bos = TokenLayout().bos_id
    return [ids + [bos] for ids in tokenizer.encode_batch(contexts)]


def decode_split(model, tokenizer, contexts: list[str], decode_cfg, *, progress: bool = True,
                 source: str | None = None, adapters: list[str | None] | None = None) -> list[Hypothesis]:
    """Beam-search every context with `model` (adapters merged); one Hypothesis per context, in order.

    adapters: one adapter name (or None) per context, for a model with an adapter bank (mixed decoding).

    Every prompt is checked against the model before any search, a bad one named by its line in
    `source` (the `<split>_contexts.txt` the contexts come from), else by its index. Under an
    initialised torch.distributed group each rank decodes its share and rank 0 returns all of them
    (other ranks return []).
    """
    prompts = context_prompts(tokenizer, contexts)
    name = (lambda i: f"{source}:{i + 1} (context {i})") if source else "context {}".format
    check_inputs(model.config, prompts, search_settings(decode_cfg), int(decode_cfg.batch_size), name)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    by_length = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    mine = by_length[rank::world]
    found = search(
        model, [prompts[i] for i in mine], search_settings(decode_cfg),
        batch_size=int(decode_cfg.batch_size), progress=progress and rank == 0,
        adapters=None if adapters is None else [adapters[i] for i in mine],
    )
    local = [
        Hypothesis(
            index=i,
            context=contexts[i],
            tokens=h.tokens,
            score=h.score if math.isfinite(h.score) else None,
            finished=h.finished,
            text=hypothesis_text(tokenizer, h.tokens),
        )
        for i, h in zip(mine, found)
    ]
    if world == 1:
        return sorted(local, key=lambda h: h.index)
    parts: list[list[Hypothesis]] | None = [[] for _ in range(world)] if rank == 0 else None
    dist.gather_object(local, parts, dst=0)
    if rank != 0:
        return []
    return sorted((h for part in parts for h in part), key=lambda h: h.index)


def write_hypotheses(hypotheses: list[Hypothesis], out_dir: str | Path, split: str) -> tuple[Path, Path]:
    """Write `<split>_hypotheses.txt` (one line per context, the scorers' input) and
    `<split>_hypotheses.jsonl` (index, context, tokens, score, finished, text), each atomically."""
    indices = [h.index for h in hypotheses]
    if indices != list(range(len(hypotheses))):
        raise NolaError(
            f"cannot write hypotheses to {out_dir}: expected one per context in order 0..{len(hypotheses) - 1}, "
            "got a gap, a duplicate or another order"
        )
    layout = RunLayout(Path(out_dir))
    text_path, records_path = layout.hypotheses(split), layout.hypothesis_records(split)
    write_text_atomic(text_path, render_lines([h.text for h in hypotheses], text_path))
    write_text_atomic(records_path, "".join(json.dumps(asdict(h), ensure_ascii=False) + "\n" for h in hypotheses))
    return text_path, records_path
