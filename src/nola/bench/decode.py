"""Section 3: beam-search decoding speed, ours against transformers `generate()` (goal: ≥ 3×).

Both decode the same E2E-like prompts (context lengths around E2E's median of 28 tokens with the
bos, random token ids) with the same random GPT-2 (our weights loaded into `GPT2LMHeadModel`) on
the CPU, all prompts in one batch, with the paper's settings (microsoft/LoRA examples/NLG): beam 10, length
penalty 0.8, no_repeat_ngram 4, at most 64 new tokens, eos ids {50256, 628}.

- `ours`: `nola.decode.beam_search` (LoRA's beam semantics, KV cache, prompt run once per input);
- `transformers`: `model.generate(num_beams=10, length_penalty=0.8, no_repeat_ngram_size=4,
  max_new_tokens=64)` on the left-padded batch with its attention mask (HF's beam semantics,
  which differ: it keeps `beam` unfinished beams, bans n-grams of the prompt too, stops early).

A random model almost never picks an eos id, so both generate 64 tokens per prompt and the work is
the same; tokens/s counts each contender's own generated tokens (up to and including an eos).
Timings are medians over rounds that alternate the contenders (`nola.bench.timing`).

What this regime measures: each step of either contender is dominated by work any exact beam
search must do for every live beam, the vocabulary projection (beam × batch rows × 50,257) and
its log-softmax. Ours saves the per-beam prompt pass, the full-vocabulary score tensor and HF's
per-step Python n-gram bookkeeping; its exact early exit (an input leaves the batch once it is
settled) only pays off when hypotheses end, which a random model's never do. `vocab_projection_floor`
times those logit matmuls alone: no exact decoder can beat generate() by more than its time / floor.

A second race (`trained`, skipped until `make mini` has run) uses the base `make mini` pretrains,
on the first 32 real E2E test contexts, where hypotheses do end: there LoRA's exact search has to
go on until no live beam can still win, while generate() stops on its heuristic.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from nola.bench.timing import ratio, summarize, time_alternating
from nola.decode import beam_search
from nola.decode.config import PAPER_SETTINGS
from nola.errors import NolaError
from nola.model import GPT2, GPT2Config, init_gpt2, to_hf_state_dict
from nola.model import hf_config_dict

FLOOR = "vocab projection floor"
EXACT = "transformers exact (early_stopping=never)"
TRAINED_BASE = Path(".cache/mini-base")  # written by `make mini` (nola.mini)
PAPER = {key: value for key, value in asdict(PAPER_SETTINGS).items() if key != "eos_ids"}
EOS_IDS = PAPER_SETTINGS.eos_ids
E2E_CONTEXT_LENGTHS = (24, 25, 26, 27, 28, 29, 30, 32)  # with the bos; around the E2E train median of 28


def bench_decode(
    *, quick: bool = False, model_name: str | None = None, prompts: int | None = None, repeats: int | None = None,
    warmup: int = 1, max_new_tokens: int | None = None, seed: int = 0,
) -> dict:
    """Time both contenders; return their medians, tokens/s and `speedup` (ours / transformers)."""
    try:
        from transformers import GPT2Config as HFConfig
        from transformers import GPT2LMHeadModel
    except ModuleNotFoundError:
        return {"skipped": "transformers is not installed (pip install -e '.[bench]')"}
    model_name = model_name or ("tiny" if quick else "mini")
    count = prompts or (4 if quick else 16)
    repeats = repeats or (2 if quick else 5)
    new_tokens = max_new_tokens or (8 if quick else PAPER["max_new_tokens"])
    settings = {**PAPER, "max_new_tokens": new_tokens}

    ours = init_gpt2(GPT2Config.named(model_name), seed).eval()
    hf = GPT2LMHeadModel(HFConfig(**{**hf_config_dict(ours.config), "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                                     "attn_pdrop": 0.0})).eval()
    missing = hf.load_state_dict(to_hf_state_dict(ours), strict=False)
    if missing.unexpected_keys or set(missing.missing_keys) != {"lm_head.weight"}:
        raise NolaError(f"transformers GPT-2 did not take our weights: {missing}")
    hf.tie_weights()
    token_ids = make_prompts(count, ours.config.vocab_size, seed)
    floor = vocab_projection_floor(ours, prompts=count, beam=settings["beam"], steps=new_tokens)
    result = race(ours, hf, token_ids, settings, repeats=repeats, warmup=warmup, floor=floor)
    floor_s = result.pop("floor")
    result["vocab_projection_floor"] = {
        **floor_s,
        "ours_over_floor": ratio(result["contenders"]["ours"]["median_s"], floor_s["median_s"]),
        "transformers_over_floor": ratio(result["contenders"]["transformers"]["median_s"], floor_s["median_s"]),
    }
    result["model"] = model_name
    if not quick:
        result["trained"] = bench_trained_decode(repeats=repeats, warmup=warmup)
    return result


def race(ours: GPT2, hf, token_ids: list[list[int]], settings: dict, *, repeats: int, warmup: int,
         floor: Callable[[], None] | None = None) -> dict:
    """Time ours against generate() on the same prompts, alternating (and the floor, when given)."""
    input_ids, attention_mask = left_padded(token_ids)
    max_logit_diff = check_same_model(ours, hf, input_ids, attention_mask)
    new_tokens = settings["max_new_tokens"]
    generated: dict[str, int] = {}

    def run_ours() -> None:
        outputs = beam_search(ours, token_ids, eos_ids=EOS_IDS, batch_size=len(token_ids), **settings)
        generated["ours"] = sum(len(tokens) for tokens in outputs)

    def hf_runner(name: str, **stopping) -> Callable[[], None]:
        def run_hf() -> None:
            with torch.inference_mode():
                outputs = hf.generate(
                    input_ids=input_ids, attention_mask=attention_mask, do_sample=False, num_beams=settings["beam"],
                    length_penalty=settings["length_penalty"], no_repeat_ngram_size=settings["no_repeat_ngram_size"],
                    max_new_tokens=new_tokens, eos_token_id=list(EOS_IDS), pad_token_id=EOS_IDS[0], **stopping,
                )
            generated[name] = count_generated(outputs[:, input_ids.shape[1]:])
        return run_hf

    # transformers' default stops an input on its heuristic (returns other hypotheses than LoRA's search);
    # early_stopping="never" stops only when no live beam can still win, as LoRA's search does
    runs = {"ours": run_ours, "transformers": hf_runner("transformers"),
            EXACT: hf_runner(EXACT, early_stopping="never"), **({FLOOR: floor} if floor else {})}
    samples = time_alternating(runs, repeats=repeats, warmup=warmup, desc="decode bench")
    floor_s = summarize(samples.pop(FLOOR)) if floor else None
    contenders = {}
    for name, times in samples.items():
        summary = summarize(times)
        contenders[name] = {**summary, "generated_tokens": generated[name],
                            "tokens_per_s": generated[name] / summary["median_s"]}
    count = len(token_ids)
    return {
        "prompts": count,
        "prompt_tokens": [len(p) for p in token_ids],
        "settings": {**settings, "eos_ids": list(EOS_IDS)},
        "threads": torch.get_num_threads(),
        "max_abs_logit_difference": max_logit_diff,
        "contenders": contenders,
        "every_search_ran_to_max_new_tokens": all(generated[name] == count * new_tokens for name in generated),
        "speedup": ratio(contenders["ours"]["tokens_per_s"], contenders["transformers"]["tokens_per_s"]),
        # both run the same exact search on the same prompts: the ratio of their times
        "speedup_over_exact": ratio(contenders[EXACT]["median_s"], contenders["ours"]["median_s"]),
        "time_ratio_transformers_over_ours": ratio(contenders["transformers"]["median_s"],
                                                   contenders["ours"]["median_s"]),
        **({"floor": floor_s} if floor else {}),
    }


def bench_trained_decode(*, repeats: int, warmup: int, model_dir: str | Path = TRAINED_BASE,
                         data_dir: str | Path = "data", vocab_dir: str | Path | None = None,
                         contexts: int = 32, threads: int = 1) -> dict:
    """The same race with a trained model on real E2E test contexts, where hypotheses end.

    Uses the base `make mini` pretrains (DART + WebNLG, never E2E) and the first `contexts` E2E test
    contexts; skipped (with the reason) until `make mini` and `make data` have run. Here the
    semantics matter: LoRA's search, which ours reproduces exactly, may only stop an input once no
    live beam can still beat its best finished hypothesis (log-probabilities ≤ 0, normalisation up
    to max_new_tokens), while generate()'s default stops as soon as its heuristic says so. Both run
    with `threads` torch threads (1: a decoder's own speed, not how well it splits small matmuls).
    """
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    vocab_dir = Path(vocab_dir) if vocab_dir is not None else data_dir / "vocab"
    if not (model_dir / "config.json").is_file():
        return {"skipped": f"no trained model at {model_dir} (run `make mini` first)"}
    if not (data_dir / "e2e" / "test_references.jsonl").is_file() or not vocab_dir.is_dir():
        return {"skipped": f"no prepared E2E data under {data_dir} (run `make data`)"}
    from transformers import GPT2LMHeadModel

    from nola.data import load_reference_groups
    from nola.decode.hypotheses import context_prompts
    from nola.model import load_gpt2
    from nola.tokenizer import load_tokenizer

    ours = load_gpt2(model_dir).eval()
    hf = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    groups = load_reference_groups(data_dir, "e2e", "test")[:contexts]
    token_ids = context_prompts(load_tokenizer(vocab_dir), [group.context for group in groups])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = race(ours, hf, token_ids, dict(PAPER), repeats=repeats, warmup=warmup)
    finally:
        torch.set_num_threads(before)
    return {"model": str(model_dir), "data": "E2E test, first contexts", **result}


def vocab_projection_floor(model: GPT2, *, prompts: int, beam: int, steps: int) -> Callable[[], None]:
    """The full-vocabulary logits any exact beam search must compute when no hypothesis ends early.

    Exact beam scores need each live beam's log-softmax, hence its logits over the whole vocabulary:
    one projection per input after the prompt, then `beam` rows per input at every later step. Timing
    only these matmuls (nothing else of the network, no softmax, no search) gives a lower bound on
    any exact decoder's time for the benchmark's searches, which all run to `steps` tokens; the ratio
    transformers / floor is the largest speed-up any such decoder could show over generate() here.
    """
    weight = model.lm_head.weight.detach()  # (vocab, n_embd)
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(prompts, weight.shape[1], generator=generator, dtype=weight.dtype)
    later = torch.randn(prompts * beam, weight.shape[1], generator=generator, dtype=weight.dtype)

    def project() -> None:
        with torch.inference_mode():
            torch.mm(first, weight.T)
            for _ in range(steps - 1):
                torch.mm(later, weight.T)

    return project


def make_prompts(count: int, vocab_size: int, seed: int) -> list[list[int]]:
    """Random non-eos token ids with E2E-like lengths. No bos at the end: a random GPT-2 with tied
    embeddings tends to repeat its last input token, so ending on 50256 would end every search at once."""
    rng = random.Random(seed)
    prompts = []
    for i in range(count):
        length = E2E_CONTEXT_LENGTHS[i % len(E2E_CONTEXT_LENGTHS)]
        prompts.append([token for token in (rng.randrange(vocab_size) for _ in range(4 * length))
                        if token not in EOS_IDS][:length])
    return prompts


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), EOS_IDS[0], dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    return ids, mask


def count_generated(new_tokens: torch.Tensor) -> int:
    """Generated tokens per row up to and including the first eos id (what follows is padding)."""
    total = 0
    for row in new_tokens.tolist():
        ends = [i for i, token in enumerate(row) if token in EOS_IDS]
        total += ends[0] + 1 if ends else len(row)
    return total


def check_same_model(ours: GPT2, hf, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> float:
    """Both models' last-position logits on the padded batch must agree (else the race is unfair)."""
    with torch.inference_mode():
        mine = ours(input_ids, attention_mask=attention_mask.bool(), only_last=True)[:, -1]
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        theirs = hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits[:, -1]
    difference = (mine - theirs).abs().max().item()
    if difference > 1e-3:
        raise NolaError(f"our GPT-2 and transformers' disagree by {difference:.3g} on the benchmark prompts")
    return difference
