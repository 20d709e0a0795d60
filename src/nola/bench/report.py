"""bench.json and bench.md: every section's figures with its machine, and the goals met or not.

A run updates only the sections it measured; sections already in bench.json from earlier runs
(another machine's GPU section, say) are kept, each with the machine and date it was measured on.
Both files are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

from nola.fileio import write_json_atomic, write_text_atomic
from nola.errors import NolaError

SCHEMA = 1
SECTION_ORDER = ("adapter_step", "training", "decode", "multi_adapter", "serving", "soak", "gpu")
MIB = 2**20


def read_report(path: Path) -> dict:
    """An existing bench.json, or an empty report when there is none."""
    if not path.is_file():
        return {"schema": SCHEMA, "sections": {}}
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise NolaError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); delete it or fix it and rerun") from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA or not isinstance(report.get("sections"), dict):
        raise NolaError(f"{path}: not a bench.json of schema {SCHEMA} (key 'schema'/'sections'); delete it and rerun")
    return report


def merge_sections(report: dict, sections: dict[str, dict]) -> dict:
    """The report with `sections` replacing those of the same name, and the goals recomputed."""
    merged = {**report.get("sections", {}), **sections}
    ordered = {name: merged[name] for name in SECTION_ORDER if name in merged}
    return {"schema": SCHEMA, "sections": ordered, "goals": goals(ordered)}


def write_report(results_dir: Path, report: dict) -> tuple[Path, Path]:
    json_path, md_path = results_dir / "bench.json", results_dir / "bench.md"
    write_json_atomic(json_path, report)
    write_text_atomic(md_path, render_markdown(report))
    return json_path, md_path


def _result(sections: dict, name: str) -> dict | None:
    section = sections.get(name)
    if not section or "skipped" in section["result"]:
        return None
    return section["result"]


def _goal(text: str, measured: float | None, target: float, at_least: bool) -> dict:
    met = None if measured is None else (measured >= target if at_least else measured <= target)
    return {"goal": text, "measured": measured, "target": ("≥ " if at_least else "≤ ") + f"{target:g}", "met": met}


def goals(sections: dict) -> list[dict]:
    """Every benchmark goal, with the measured value and whether it was met."""
    found = []
    adapter = _result(sections, "adapter_step")
    if adapter:
        for shape in adapter["shapes"]:
            for scope in ("layer", "adapter_only"):
                ratios = shape[scope]["ratios"]
                where = f"{shape['shape']} q/v, {scope.replace('_', ' ')} step"
                found.append(_goal(f"NOLA cached time / LoRA time, {where}",
                                   ratios["nola_cached_over_lora"], 1.05, False))
                found.append(_goal(f"reference NOLA time / NOLA cached time, {where}",
                                   ratios["reference_over_nola_cached"], 10, True))
    training = _result(sections, "training")
    if training:
        for name in ("ours_lora", "ours_nola"):
            ratios = training.get("ratios", {}).get(f"{name}_over_hf")
            if ratios:
                found.append(_goal(f"{name} tokens/s / transformers+peft tokens/s", ratios["tokens_per_s"], 1.3, True))
                found.append(_goal(f"{name} peak memory / transformers+peft peak memory",
                                   ratios["peak_bytes"], 0.8, False))
            found.append(_goal(f"{name} model FLOP/s / measured fp32 matmul peak",
                               training["contenders"][name]["flop_utilisation"], 0.5, True))
    output = (_result(sections, "training") or {}).get("output_layer")
    if output:
        width = output["config"]["n_embd"]
        for name in ("lora", "nola"):
            found.append(_goal(f"chunked output layer + loss / full logits, peak memory, {name} step (width {width})",
                               output["chunked_over_full"][name]["peak_bytes"], 0.5, False))
            found.append(_goal(f"chunked output layer + loss / full logits, tokens/s, {name} step (width {width})",
                               output["chunked_over_full"][name]["tokens_per_s"], 1.2, True))
        mini = output.get("bf16_mini", {})
        if "skipped" not in mini:
            found.append(_goal("mini NOLA step, bf16 + chunked loss / fp32 full logits, tokens/s",
                               mini["bf16_chunked_over_fp32_full"], 1.3, True))
            found.append(_goal("mini pretraining step, bf16 + chunked loss / fp32 full logits, tokens/s",
                               mini["pretrain_bf16_chunked_over_fp32_full"], 1.0, True))
    decode = _result(sections, "decode")
    if decode and decode.get("speedup") is not None:
        found.append(_goal("beam search tokens/s / transformers generate() tokens/s", decode["speedup"], 3, True))
        if decode.get("speedup_over_exact") is not None:
            found.append(_goal("generate(early_stopping='never') time / ours (both exact)",
                               decode["speedup_over_exact"], 3, True))
        trained = decode.get("trained", {})
        if trained.get("speedup") is not None:
            found.append(_goal("the same, trained mini base on real E2E prompts", trained["speedup"], 3, True))
        if trained.get("speedup_over_exact") is not None:
            found.append(_goal("generate(early_stopping='never') time / ours, trained mini base, real E2E prompts",
                               trained["speedup_over_exact"], 3, True))
    many = _result(sections, "multi_adapter")
    if many:
        throughput = many["throughput"]
        where = f"{throughput['adapters']:,} adapters resident, {throughput['prompts']} prompts"
        found.append(_goal(f"mixed batch (an adapter per prompt) / one merged adapter, tokens/s ({where})",
                           throughput["mixed_over_merged"], 0.8, True))
        found.append(_goal(f"mixed batch / merge-decode-unmerge per adapter, tokens/s ({where})",
                           throughput["mixed_over_naive"], 5, True))
        server = many.get("server", {})
        if "errors" in server:
            found.append(_goal("server load test: failed requests", server["errors"], 0, False))
    serving = _result(sections, "serving")
    if serving:
        varied = serving["varied_max_tokens"]
        found.append(_goal(f"{varied['requests']} concurrent requests differing only in max_tokens / the same sent "
                           "one after another (time)", varied["concurrent_over_sequential"], 0.5, False))
        mixed = serving["mixed_lengths"]
        found.append(_goal("serving: failed requests (varied max_tokens, mixed lengths)",
                           varied["errors"] + mixed["joining"]["errors"] + mixed["static"]["errors"], 0, False))
    soaked = _result(sections, "soak")
    if soaked:
        found.append(_goal("soak: errors other than the deliberate ones", sum(soaked["unexpected_errors"].values()),
                           0, False))
        found.append(_goal("soak: answers differing from the library's decode of their adapter version",
                           soaked["verified"]["mismatches"] + soaked["verified"]["unknown_versions"], 0, False))
        found.append(_goal("soak: resident memory growth, first to last minute", soaked["rss_growth"], 0.1, False))
    gpu = _result(sections, "gpu")
    if gpu:
        device = gpu["machine"]["device_name"]
        for model in gpu["models"]:
            if model["model"] == "gpt2-medium":
                found.append(_goal(f"projected 5-epoch GPT-2 M NOLA E2E run on {device} (s; goal on an H100)",
                                   model["contenders"]["nola"]["projected_paper_run_s"], 180, False))
    return found


def render_markdown(report: dict) -> str:
    sections = report["sections"]
    lines = ["# Benchmarks (`make bench`)", "",
             "Medians over alternating repeats in one process; ratios are of medians. Peak memory: tensors alive "
             "at the worst moment of a step (resident weights, buffers and optimizer state + the step's own peak).",
             ""]
    lines += _goals_table(report.get("goals", []))
    for name in SECTION_ORDER:
        if name not in sections:
            continue
        section = sections[name]
        lines += [f"## {name}", "", _machine_line(section), ""] + _busy_warning(section)
        result = section["result"]
        if "skipped" in result:
            lines += [f"skipped: {result['skipped'].removeprefix('skipped: ')}", ""]
            continue
        lines += RENDERERS[name](result)
    return "\n".join(lines).rstrip() + "\n"


def _machine_line(section: dict) -> str:
    machine = section["machine"]
    load = section.get("load_average_before"), section.get("load_average_after")
    return (f"{section['date']} · {machine['device_name']} · {machine['cpu_cores']} cores, "
            f"{machine['torch_threads']} torch threads · torch {machine['torch']} · "
            f"transformers {machine['transformers']} · peft {machine['peft']}"
            f" · load average (1/5/15 min) before {load[0]}, after {load[1]} · {section['duration_s']:.0f} s")


def _busy_warning(section: dict) -> list[str]:
    """A note when more threads wanted to run than the machine has cores."""
    cores = section["machine"]["cpu_cores"]
    loads = [load[0] for load in (section.get("load_average_before"), section.get("load_average_after")) if load]
    if not loads or max(loads) <= cores:
        return []
    return [f"**The machine was busy** (1-minute load average up to {max(loads)} on {cores} cores, this run's own "
            "threads included): times are inflated and noisy; compare ratios, and rerun on an idle machine for "
            "absolute figures.", ""]


def _goals_table(found: list[dict]) -> list[str]:
    if not found:
        return []
    lines = ["## Goals", "", "| goal | measured | target | met |", "|---|---:|---:|:---:|"]
    for goal in found:
        met = {True: "yes", False: "**no**", None: "n/a"}[goal["met"]]
        lines.append(f"| {goal['goal']} | {_num(goal['measured'])} | {goal['target']} | {met} |")
    return lines + [""]


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def _mib(value: int) -> str:
    return f"{value / MIB:,.1f}"


def _adapter_step(result: dict) -> list[str]:
    lines = [f"Batch {result['batch']} × {result['seq_len']} tokens, {result['dtype']} on {result['device']}. "
             "`layer`: the adapted c_attn with its frozen base matmuls (what one layer costs in training); "
             "`adapter only`: the same adapters without the base matmuls (what the adapter adds).", ""]
    for shape in result["shapes"]:
        lines += [f"### {shape['shape']} (d = {shape['n_embd']}; NOLA rank {shape['nola_rank']}, {shape['num_basis']} "
                  f"bases; LoRA rank {shape['lora_rank']})", "",
                  "| scope | contender | median ms | min ms | peak MiB | resident MiB | step MiB |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for scope in ("layer", "adapter_only"):
            for name, row in shape[scope]["contenders"].items():
                lines.append(f"| {scope} | {name} | {row['median_s'] * 1e3:.2f} | {row['min_s'] * 1e3:.2f} | "
                             f"{_mib(row['peak_bytes'])} | {_mib(row['resident_bytes'])} | {_mib(row['step_bytes'])} |")
        lines += [""]
        for scope in ("layer", "adapter_only"):
            ratios = ", ".join(f"{key} {_num(value)}" for key, value in shape[scope]["ratios"].items())
            lines.append(f"- ratios ({scope}): {ratios}")
        lines += [f"- NOLA basis cache: {_mib(shape['basis_cache_bytes_per_layer'])} MiB per layer, "
                  f"{_mib(shape['basis_cache_bytes_model'])} MiB for all {shape['n_layer']} layers (float32)",
                  f"- max |output difference| NOLA cached / regenerated / reference: "
                  f"{shape['max_abs_output_difference_nola_vs_reference']:.2g}",
                  "- trainable parameters per layer: "
                  + ", ".join(f"{name} {count:,}" for name, count in shape["trainable"].items()),
                  ""]
    return lines


def _training(result: dict) -> list[str]:
    config, batch, peak = result["config"], result["batch"], result["matmul_peak"]
    lines = [f"GPT-2 width {config['n_embd']}, {config['n_layer']} layers, vocabulary {config['vocab_size']:,}; "
             f"{batch['sequences']} E2E-like sequences padded to {batch['padded_length']} ({batch['tokens']} tokens, "
             f"{batch['completion_tokens']} in the loss); {result['dtype']} on {result['device']}. "
             f"Measured {peak['dtype']} matmul peak: {peak['peak_flops'] / 1e9:.1f} GFLOP/s ({peak['size']}³).", "",
             "| contender | median s | tokens/s | peak MiB | resident MiB | step MiB | FLOP utilisation |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in result["contenders"].items():
        utilisation = row.get("flop_utilisation")
        lines.append(f"| {name} | {row['median_s']:.3f} | {row['tokens_per_s']:.1f} | {_mib(row['peak_bytes'])} | "
                     f"{_mib(row['resident_bytes'])} | {_mib(row['step_bytes'])} | "
                     f"{'—' if utilisation is None else f'{utilisation:.1%}'} |")
    lines.append("")
    for name, ratios in result.get("ratios", {}).items():
        lines.append(f"- {name}: tokens/s ×{_num(ratios['tokens_per_s'])}, peak memory ×{_num(ratios['peak_bytes'])}")
    if "hf_peft_lora" in result:
        lines.append(f"- transformers + peft: {result['hf_peft_lora']}")
    for key, value in result.get("checks", {}).items():
        lines.append(f"- {key}: {value:.2g}")
    lines += ["", "Where one step of ours_lora spends its time (operators by self time):", "",
              "| operator | self s | share | calls |", "|---|---:|---:|---:|"]
    lines += [f"| `{row['op']}` | {row['self_s']:.3f} | {row['share']:.1%} | {row['calls']} |"
              for row in result["profile_ours_lora"]]
    return lines + [""] + (_output_layer(result["output_layer"]) if "output_layer" in result else [])


def _output_layer(result: dict) -> list[str]:
    shape, batch = result["config"], result["batch"]
    lines = ["### the output layer: full logits against the fused, chunked loss", "",
             f"Width {shape['n_embd']}, {shape['n_head']} heads, {shape['n_layer']} layers, the full vocabulary; "
             f"{batch['sequences']} sequences × {batch['padded_length']} tokens, {batch['completion_tokens']} "
             f"completion tokens; train.loss_chunk_tokens={result['chunk_tokens']}; fp32.", "",
             "| contender | median s | tokens/s | peak MiB |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {row['median_s']:.3f} | {row['tokens_per_s']:.0f} | {_mib(row['peak_bytes'])} |"
              for name, row in result["contenders"].items()]
    lines.append("")
    for name, ratios in result["chunked_over_full"].items():
        extra = "".join(f"; {key.replace('_over_hf_tokens_per_s', '')} / transformers+peft tokens/s "
                        f"×{_num(value)}" for key, value in ratios.items() if key.endswith("_over_hf_tokens_per_s"))
        lines.append(f"- {name}: chunked / full tokens/s ×{_num(ratios['tokens_per_s'])}, peak memory "
                     f"×{_num(ratios['peak_bytes'])}{extra}")
    mini = result.get("bf16_mini", {})
    if "skipped" in mini:
        return lines + ["", f"bf16 on the mini: skipped ({mini['skipped']}).", ""]
    shape = mini["config"]
    lines += ["", f"The mini's adaptation step (width {shape['n_embd']}, {shape['n_layer']} layers, {mini['adapter']}, "
              "E2E-like batch of 8):", "", "| precision, loss | median ms | tokens/s |", "|---|---:|---:|"]
    lines += [f"| {name.replace('_', ', ')} | {row['median_s'] * 1e3:.1f} | {row['tokens_per_s']:.0f} |"
              for name, row in mini["contenders"].items()]
    return lines + ["", f"- bf16 + chunked / fp32 full logits: ×{_num(mini['bf16_chunked_over_fp32_full'])}; "
                    f"bf16 / fp32 both chunked: ×{_num(mini['bf16_chunked_over_fp32_chunked'])}; "
                    f"bf16 / fp32 both with full logits: ×{_num(mini['bf16_full_over_fp32_full'])}; "
                    f"pretraining step (every weight trains), bf16 + chunked / fp32 full logits: "
                    f"×{_num(mini['pretrain_bf16_chunked_over_fp32_full'])}", ""]


def _decode(result: dict) -> list[str]:
    settings = result["settings"]
    lines = [f"Random GPT-2 `{result['model']}`, {result['prompts']} E2E-like prompts in one batch, beam "
             f"{settings['beam']}, length penalty {settings['length_penalty']}, no-repeat n-gram "
             f"{settings['no_repeat_ngram_size']}, up to {settings['max_new_tokens']} new tokens, eos "
             f"{settings['eos_ids']}; {result['threads']} torch threads.", "",
             *_decoder_rows(result["contenders"])]
    floor = result.get("vocab_projection_floor")
    if floor:
        lines.append(f"| *vocab projection floor* | {floor['median_s']:.3f} | {floor['min_s']:.3f} | – | – |")
    lines += ["", f"- ours / transformers tokens/s: ×{_num(result['speedup'])}; transformers / ours time: "
                  f"×{_num(result['time_ratio_transformers_over_ours'])}; generate(early_stopping='never') / ours "
                  f"time (both exact): ×{_num(result.get('speedup_over_exact'))}"]
    if floor:
        lines.append(f"- floor = only the full-vocabulary logit matmuls any exact beam search must do for these searches "
                     f"(nothing else): ours takes ×{_num(floor['ours_over_floor'])} the floor, transformers "
                     f"×{_num(floor['transformers_over_floor'])}, so no exact decoder can be more than "
                     f"×{_num(floor['transformers_over_floor'])} faster than generate() on this benchmark")
    lines += [f"- max |logit difference| ours vs transformers: {result['max_abs_logit_difference']:.2g}", ""]
    return lines + _trained_decode(result.get("trained"))


def _trained_decode(trained: dict | None) -> list[str]:
    if not trained:
        return []
    lines = ["### trained model, real prompts", ""]
    if "skipped" in trained:
        return lines + [f"skipped: {trained['skipped']}", ""]
    lines += [f"`{trained['model']}` ({trained['data']}: {trained['prompts']} contexts in one batch), the same settings; "
              f"{trained['threads']} torch threads. Hypotheses end here, so the two algorithms stop at different "
              "steps: LoRA's search (ours, exactly) only once no live beam can still win, generate() when its "
              "heuristic says so.", "", *_decoder_rows(trained["contenders"])]
    return lines + ["", f"- ours / transformers tokens/s: ×{_num(trained['speedup'])}; generate(early_stopping="
                    f"'never') time / ours: ×{_num(trained.get('speedup_over_exact'))}", ""]


def _decoder_rows(contenders: dict) -> list[str]:
    """The table of one decode race: header, then a row per contender."""
    return ["| contender | median s | min s | generated tokens | tokens/s |", "|---|---:|---:|---:|---:|",
            *(f"| {name} | {row['median_s']:.3f} | {row['min_s']:.3f} | {row['generated_tokens']} | "
              f"{row['tokens_per_s']:.1f} |" for name, row in contenders.items())]


def _gpu(result: dict) -> list[str]:
    peak, nominal = result["matmul_peak"], result.get("nominal_bf16_peak_flops")
    lines = [f"{result['machine']['device_name']}, float32 weights with {result['autocast']} autocast. Measured bf16 "
             f"matmul peak {peak['peak_flops'] / 1e12:.0f} TFLOP/s"
             + (f"; nominal {nominal / 1e12:.0f} TFLOP/s." if nominal else "."), "",
             "| model | adapter | sequences/step | step ms | tokens/s | MFU (measured peak) | MFU (nominal) | "
             "peak GiB | projected 5-epoch E2E run |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for model in result["models"]:
        for name, row in model["contenders"].items():
            nominal_mfu = row["mfu_nominal_peak"]
            lines.append(
                f"| {model['model']} | {name} | {model['batch_size']} ({model['grad_accum']} micro-batches) | "
                f"{row['median_s'] * 1e3:.2f} | {row['tokens_per_s']:,.0f} | {row['mfu_measured_peak']:.1%} | "
                f"{'—' if nominal_mfu is None else f'{nominal_mfu:.1%}'} | {row['peak_bytes'] / 2**30:.2f} | "
                f"{row['projected_paper_run_s'] / 60:.1f} min ({model['paper_run_steps']:,} steps) |")
    return lines + [""]


def _multi_adapter(result: dict) -> list[str]:
    t = result["throughput"]
    lines = [f"{t['model']}: {t['adapters']:,} NOLA adapters (rank {t['adapter']['rank']}, "
             f"{t['adapter']['num_basis_a']}+{t['adapter']['num_basis_b']} bases, q,v) saved and loaded into one "
             f"bank ({t['save_s']:.1f} s to save, {t['load_s']:.1f} s to load), sharing {t['bases']} bases "
             f"({t['shared_basis_bytes'] / MIB:.1f} MiB). Per adapter: {t['adapter_file_bytes']:,} bytes on disk, "
             f"{t['adapter_resident_bytes']:,} resident ({t['bank_resident_bytes'] / MIB:.1f} MiB for all). "
             f"{t['prompts']} prompts, beam {t['beam']}, {t['max_new_tokens']} new tokens, {t['threads']} threads; "
             "mixed = one batch with a different adapter per prompt (factors materialised cold inside the timing), "
             "merged = the same batch with one adapter merged, naive = load + merge + decode + unmerge per prompt.",
             "", *_decoder_rows(t["contenders"]), "",
             f"- mixed / merged tokens/s: ×{_num(t['mixed_over_merged'])}; mixed / naive: ×{_num(t['mixed_over_naive'])}",
             ""]
    server = result.get("server", {})
    if "skipped" in server:
        return lines + [f"server load test skipped: {server['skipped']}", ""]
    return lines + [
        f"Server load test ({server['model']}, {server['adapters']} adapters + base, 127.0.0.1): {server['clients']} "
        f"concurrent clients, {server['requests']} requests of {server['max_tokens']} tokens at beam {server['beam']}: "
        f"{server['requests_per_s']:.1f} requests/s, p50 {server['p50_s'] * 1e3:.0f} ms, p99 {server['p99_s'] * 1e3:.0f} "
        f"ms, {server['errors']} errors, {server['decode_batches']} decode batches.", ""]


def _serving(result: dict) -> list[str]:
    varied, mixed = result["varied_max_tokens"], result["mixed_lengths"]
    lines = [f"{result['model']}, {result['adapters']} NOLA adapters, the app on 127.0.0.1, {result['threads']} "
             "threads.", "",
             f"- {varied['requests']} requests differing only in max_tokens ({min(varied['max_tokens'])}-"
             f"{max(varied['max_tokens'])}), beam {varied['beam']}: one after another {varied['sequential_s']:.2f} s, "
             f"all at once {varied['concurrent_s']:.2f} s (×{_num(varied['concurrent_over_sequential'])}); "
             f"same answers both ways: {'yes' if varied['same_answers'] else 'NO'}; {varied['errors']} errors.",
             f"- mixed lengths: {mixed['clients']} clients, each {mixed['requests_per_client']} requests alternating "
             f"max_tokens {mixed['short_max_tokens']} and {mixed['long_max_tokens']}, beam {mixed['beam']}:", "",
             "| queued prompts | short p50 (ms) | short p99 (ms) | long p50 (ms) | long p99 (ms) | requests/s | errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for key, label in (("joining", "join the running search"), ("static", "wait for the batch to end")):
        row = mixed[key]
        lines.append(f"| {label} | {row['short_p50_s'] * 1e3:.0f} | {row['short_p99_s'] * 1e3:.0f} | "
                     f"{row['long_p50_s'] * 1e3:.0f} | {row['long_p99_s'] * 1e3:.0f} | {row['requests_per_s']:.1f} | "
                     f"{row['errors']} |")
    return lines + ["", f"Short requests' p50, waiting / joining: ×{_num(mixed['short_p50_static_over_joining'])}.", ""]


def _soak(result: dict) -> list[str]:
    changes, checks = result["changes"], result["verified"]
    deliberate = ", ".join(f"{kind}: {count}" for kind, count in sorted(result["deliberate_errors"].items())) or "none"
    unexpected = ", ".join(f"{kind}: {count}" for kind, count in sorted(result["unexpected_errors"].items())) or "none"
    return [f"{result['model']}, the app on 127.0.0.1, {result['threads']} threads; {result['clients']} clients for "
            f"{result['duration_s']:.0f} s, beam {result['beam']}, max_tokens {result['max_tokens']}.", "",
            f"- adapters: {result['adapters_at_start']} at the start, {result['adapters_at_end']} at the end; "
            f"{changes['added']} added, {changes['replaced']} replaced (copied over file by file), "
            f"{changes['removed']} removed while serving; two broken directories throughout.",
            f"- {result['requests']} requests, {result['requests_per_s']:.1f}/s; answered {result['answered']}: "
            f"p50 {result['p50_s'] * 1e3:.0f} ms, p99 {result['p99_s'] * 1e3:.0f} ms.",
            f"- deliberate errors (broken or removed adapters): {deliberate}; any other error: {unexpected}.",
            f"- resident memory (server and clients, one process), peak of the first / last "
            f"{result['rss_window_s']:.0f} s: {_mib(result['rss_first_bytes'])} / {_mib(result['rss_last_bytes'])} MiB "
            f"({result['rss_growth']:+.1%}).",
            f"- every answer checked against the library's decode of its adapter version: {checks['checked']} checked, "
            f"{checks['mismatches']} different, {checks['unknown_versions']} naming an unknown version.", ""]


RENDERERS = {"adapter_step": _adapter_step, "training": _training, "decode": _decode,
             "multi_adapter": _multi_adapter, "serving": _serving, "soak": _soak, "gpu": _gpu}
