"""Many adapters, one base: a mixed batch against one merged adapter and against merging per adapter,
and a load test of `python -m nola.serve`'s app over 127.0.0.1.

Throughput (`bench_many_adapters`): GPT-2 S shapes with random weights (no pretrained weights are
needed to time a forward), `adapters` NOLA adapters saved to disk and loaded into one
`AdapterBank` (all trained with the same basis seeds, so they share one set of bases, as a sweep
with a pinned adapter.base_seed would). The same `prompts` prompts are decoded three ways:
- mixed: one batch, every prompt with a different adapter, routed per row (the factors are
  materialised from the coefficients inside the timed call, as a server meets a cold adapter);
- merged: one batch, one adapter merged into the base weights (the single-adapter ceiling);
- naive: for each prompt, load its adapter, merge, decode, unmerge (what one-adapter code must do).
Goals: mixed ≥ 0.8 of merged throughput (the mark of "Compress then Serve", ICML 2025, for
1,000 LoRAs) and ≥ 5× naive. Throughput is generated tokens per second.

Load (`bench_server_load`): the served app on a free port of 127.0.0.1 in a uvicorn thread, the
mini shapes with random weights and a few adapters; `clients` concurrent clients send `requests`
requests in all; requests/s, p50/p99 latency and the error count.
"""

from __future__ import annotations

import copy
import random
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from nola.adapters import adapted_layers, inject_adapters, load_adapter, merge_adapters, unmerge_adapters
from nola.adapters.bank import AdapterBank
from nola.adapters.config import AdapterConfig
from nola.bench.decode import make_prompts
from nola.bench.random_adapters import NOLA_S, mini_base_with_adapters, save_nola_adapters
from nola.bench.serving import percentile, post, running_server, cannot_serve
from nola.bench.timing import ratio, summarize, time_alternating
from nola.decode.beam import search
from nola.decode.config import SearchSettings
from nola.model import GPT2Config, base_fingerprint, init_gpt2

def bench_many_adapters(*, quick: bool = False, adapters: int | None = None, prompts: int | None = None,
                        repeats: int | None = None, warmup: int = 1, beam: int | None = None,
                        max_new_tokens: int | None = None, seed: int = 0) -> dict:
    """Time mixed, merged and naive decoding (see the module docstring)."""
    config = GPT2Config.named("tiny" if quick else "gpt2")
    settings_dict = dict(NOLA_S, num_basis_a=32, num_basis_b=32, rank=4) if quick else NOLA_S
    count = adapters or (16 if quick else 1000)
    n_prompts = prompts or (4 if quick else 32)
    repeats = repeats or (2 if quick else 3)
    search_settings = SearchSettings(beam=beam or (2 if quick else 4), max_new_tokens=max_new_tokens or (4 if quick else 16))
    base = init_gpt2(config, seed).eval().requires_grad_(False)
    token_ids = make_prompts(n_prompts, config.vocab_size, seed)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="nola-bench-adapters-") as tmp:
        started = time.perf_counter()
        paths = save_nola_adapters(base, Path(tmp), count, settings_dict, seed)
        save_s = time.perf_counter() - started
        routed = copy.deepcopy(base)
        bank = AdapterBank(routed, base_fingerprint(base))
        started = time.perf_counter()
        for path in paths:
            bank.add(path.name, path)
        load_s = time.perf_counter() - started
        chosen = rng.sample([path.name for path in paths], n_prompts)
        merged = copy.deepcopy(base)
        load_adapter(merged, Path(tmp) / chosen[0])
        merge_adapters(merged)
        naive = copy.deepcopy(base)
        inject_adapters(naive, AdapterConfig(**settings_dict))
        # unmerging subtracts what merging added, up to rounding; restoring the saved base weights after
        # it keeps the base exact (and its fingerprint, which load_adapter checks) across adapters
        pristine = {name: layer.base_layer.weight.detach().clone() for name, layer in adapted_layers(naive)}
        tokens: dict[str, int] = {}

        def run_mixed():
            bank.clear_cache()  # cold: every adapter's factors are materialised inside the call
            found = search(routed, token_ids, search_settings, batch_size=n_prompts, adapters=chosen)
            tokens["mixed"] = sum(len(h.tokens) for h in found)

        def run_merged():
            found = search(merged, token_ids, search_settings, batch_size=n_prompts)
            tokens["merged"] = sum(len(h.tokens) for h in found)

        def run_naive():
            total = 0
            for prompt, name in zip(token_ids, chosen):
                load_adapter(naive, Path(tmp) / name)
                merge_adapters(naive)
                total += sum(len(h.tokens) for h in search(naive, [prompt], search_settings, batch_size=1))
                unmerge_adapters(naive)
                with torch.no_grad():
                    for name, layer in adapted_layers(naive):
                        layer.base_layer.weight.copy_(pristine[name])
            tokens["naive"] = total

        samples = time_alternating({"mixed": run_mixed, "merged": run_merged, "naive": run_naive},
                                   repeats=repeats, warmup=warmup, desc="many adapters")
        one = bank.adapters[chosen[0]]
        contenders = {name: {**summarize(values), "generated_tokens": tokens[name],
                             "tokens_per_s": tokens[name] / statistics.median(values)}
                      for name, values in samples.items()}
    return {
        "model": "gpt2 (GPT-2 S shapes, random weights)" if not quick else "tiny",
        "adapter": settings_dict, "adapters": count, "prompts": n_prompts, "distinct_adapters_per_batch": n_prompts,
        "beam": search_settings.beam, "max_new_tokens": search_settings.max_new_tokens,
        "threads": torch.get_num_threads(),
        "adapter_file_bytes": one.file_bytes, "adapter_resident_bytes": one.resident_bytes,
        "shared_basis_bytes": bank.basis_bytes, "bases": bank.shared_bases,
        "bank_resident_bytes": sum(a.resident_bytes for a in bank.adapters.values()),
        "save_s": save_s, "load_s": load_s, "contenders": contenders,
        "mixed_over_merged": ratio(contenders["mixed"]["tokens_per_s"], contenders["merged"]["tokens_per_s"]),
        "mixed_over_naive": ratio(contenders["mixed"]["tokens_per_s"], contenders["naive"]["tokens_per_s"]),
    }


def bench_server_load(*, quick: bool = False, clients: int | None = None, requests: int | None = None,
                      adapters: int | None = None, max_tokens: int | None = None, beam: int | None = None,
                      seed: int = 0, vocab_dir: str | Path = "data/vocab") -> dict:
    """requests/s and latency of the served app under `clients` concurrent clients (module docstring).
    The prompts are text, so the GPT-2 vocabulary is needed (`make data` puts it in data/vocab)."""
    missing = cannot_serve(vocab_dir)
    if missing:
        return {"skipped": missing}
    clients, total = clients or (4 if quick else 16), requests or (8 if quick else 128)
    count, tokens, beam = adapters or 4, max_tokens or (4 if quick else 16), beam or (2 if quick else 4)
    with tempfile.TemporaryDirectory(prefix="nola-bench-serve-") as tmp:
        base, adapter_names = mini_base_with_adapters(Path(tmp), count, seed, quick)
        with running_server(base, Path(tmp), vocab_dir, max_queue=4 * total) as (port, app):
            names = adapter_names + ["base"]
            rng = random.Random(seed)
            bodies = [{"model": rng.choice(names), "prompt": f"name : Place {i} | food : Thai | area : riverside",
                       "max_tokens": tokens, "beam": beam} for i in range(total)]
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=clients) as pool:
                outcomes = list(pool.map(lambda body: post(port, body), bodies))
            elapsed = time.perf_counter() - started
            batches = app.state.worker.batches
    latencies = [seconds for _, _, seconds in outcomes]
    return {
        "model": f"{'tiny' if quick else 'mini'} shapes, random weights", "adapters": count, "clients": clients,
        "requests": total, "max_tokens": tokens, "beam": beam,
        "errors": sum(status != 200 or not answer.get("choices") for status, answer, _ in outcomes),
        "requests_per_s": total / elapsed, "p50_s": statistics.median(latencies), "p99_s": percentile(latencies, 0.99),
        "decode_batches": batches, "threads": torch.get_num_threads(),
    }


def run(*, quick: bool = False, repeats: int | None = None, warmup: int = 1,
        vocab_dir: str | Path = "data/vocab") -> dict:
    """The `multi_adapter` section of `make bench`: throughput and the server load test."""
    return {"throughput": bench_many_adapters(quick=quick, repeats=repeats, warmup=warmup),
            "server": bench_server_load(quick=quick, vocab_dir=vocab_dir)}
