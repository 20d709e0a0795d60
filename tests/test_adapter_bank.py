"""Many adapters on one base (nola.adapters.bank): every row of a mixed batch decodes as if alone.

The reference is the plain path: a fresh base with one adapter loaded and merged into its weights
(`load_adapter` + `merge_adapters`), decoding one prompt at a time.
"""

from __future__ import annotations

import copy
import random
import re

import pytest

from nola.adapters.bank import AdapterBank, UnknownAdapter
from nola.decode.beam import search
from nola.decode.config import SearchSettings
from nola.errors import NolaError
from nola.model import GPT2Config, base_fingerprint, init_gpt2
from bank_support import ADAPTERS, merged_model, save_random_adapters, tiny_base


@pytest.fixture(scope="module")
def base():
    return tiny_base()


@pytest.fixture(scope="module")
def saved(base, tmp_path_factory):
    return save_random_adapters(base, tmp_path_factory.mktemp("adapters"))


@pytest.mark.slow
@pytest.mark.parametrize("beam", [1, 4])
def test_mixed_batch_equals_each_prompt_alone_with_its_adapter_merged(base, saved, beam):
    rng = random.Random(beam)
    vocab = base.config.vocab_size
    names = [*ADAPTERS, None]
    prompts = [[rng.randrange(vocab) for _ in range(rng.randint(2, 9))] for _ in range(56)]
    assigned = [names[i % len(names)] for i in range(len(prompts))]
    rng.shuffle(assigned)
    settings = SearchSettings(beam=beam, max_new_tokens=8, no_repeat_ngram_size=3, eos_ids=(5,))

    model = copy.deepcopy(base)
    bank = AdapterBank(model, base_fingerprint(base))
    for name in ADAPTERS:
        bank.add(name, saved / name)
    mixed = search(model, prompts, settings, batch_size=16, adapters=assigned)

    references = {name: merged_model(base, saved / name if name else None) for name in names}
    for prompt, name, hypothesis in zip(prompts, assigned, mixed):
        [alone] = search(references[name], [prompt], settings, batch_size=1)
        assert hypothesis.tokens == alone.tokens, name
        assert hypothesis.score == pytest.approx(alone.score, rel=1e-4, abs=1e-5)
    assert sum(name is None for name in assigned) >= 6 and len(set(assigned)) == len(names)


def test_shared_bases_are_held_once_and_the_cache_is_bounded(base, saved):
    model = copy.deepcopy(base)
    bank = AdapterBank(model, base_fingerprint(base), cache_bytes=1)
    for name in ("nola_a", "nola_b"):
        bank.add(name, saved / name)
    bank.factors(["nola_a", "nola_b"])
    # reference init: q-A, q-B, v-A, v-B bases shared by every layer, and by both adapters
    assert bank.shared_bases == 4
    assert bank.cached_bytes > 0  # the batch in use stays even above the bound ...
    bank.factors(["nola_a"])
    assert bank.cached_names == ["nola_a"]  # ... and the least recently used one goes once it is not needed
    assert bank.adapters["nola_a"].resident_bytes == 2 * 2 * 2 * 16 * 4  # 2 layers, q and v, k + l coefficients
    with pytest.raises(UnknownAdapter, match="no adapter named 'nope'"):
        bank.factors(["nope"])


def test_an_adapter_for_another_base_is_refused_naming_its_directory(base, saved, tmp_path):
    other = init_gpt2(GPT2Config.named("tiny"), 1)
    bank = AdapterBank(other, base_fingerprint(other))
    with pytest.raises(NolaError, match=f"{saved / 'lora_qv' / 'adapter_config.json'}: adapter was trained on base"):
        bank.add("x", saved / "lora_qv")
    with pytest.raises(NolaError, match=f"{tmp_path / 'missing' / 'adapter_config.json'} not found"):
        bank.add("y", tmp_path / "missing")
    with pytest.raises(NolaError, match="needs a model with an adapter bank"):
        search(base, [[1, 2]], SearchSettings(beam=1, max_new_tokens=2), adapters=["x"])


def test_a_manifest_decodes_several_tasks_in_one_mixed_run(base, saved, tmp_path, vocab_dir, monkeypatch):
    """`decode.manifest`: each entry's hypotheses equal that task's single-adapter decode."""
    import nola.decode.mixed as mixed_module
    from nola.config import load_config
    from nola.data import Example
    from nola.data.records import split_path, write_examples
    from nola.data.references import group_references, write_reference_files
    from nola.decode.stage import decode_from_config
    from nola.decode.mixed import decode_manifest
    from train_support import synthetic_examples

    data = tmp_path / "data"
    for task, seed in (("e2e", 1), ("dart", 2)):
        examples = [Example(**row) for row in synthetic_examples(6, seed)]
        write_examples(split_path(data, task, "test"), examples)
        write_reference_files(data, task, "test", group_references(examples))
    manifest = tmp_path / "mixed.yaml"
    manifest.write_text(f"- {{name: e2e, task: e2e, split: test, adapter_dir: {saved / 'lora_qv'}}}\n"
                        f"- {{name: dart, task: dart, split: test, adapter_dir: {saved / 'nola_a'}}}\n"
                        "- {name: plain, task: e2e, split: test, adapter_dir: null}\n")
    monkeypatch.setattr(mixed_module, "score_groups", lambda task, groups, hypotheses: {"task": task, "n": len(hypotheses)})
    common = ["model=tiny", "model.source=random", f"paths.data_dir={data}", f"paths.vocab_dir={vocab_dir}",
              f"paths.runs_dir={tmp_path}/runs", "train.device=cpu", "decode.beam=3", "decode.max_new_tokens=6"]
    summary = decode_manifest(load_config([*common, f"decode.manifest={manifest}"]), tmp_path / "mixed")
    assert {name: entry["metrics"] for name, entry in summary["entries"].items()} == {
        "e2e": {"task": "e2e", "n": 6}, "dart": {"task": "dart", "n": 6}, "plain": {"task": "e2e", "n": 6}}
    for name, task, adapter in (("e2e", "e2e", saved / "lora_qv"), ("dart", "dart", saved / "nola_a"),
                                ("plain", "e2e", None)):
        single = load_config([*common, f"task={task}", f"decode={task}", "decode.beam=3", "decode.max_new_tokens=6",
                                 f"decode.out_dir={tmp_path / 'single' / name}",
                                 "adapter=none", *([f"decode.adapter_dir={adapter}"] if adapter else [])])
        decode_from_config(single, tmp_path / "single" / name)
        assert (tmp_path / "mixed" / name / "test_hypotheses.txt").read_text() == \
            (tmp_path / "single" / name / "test_hypotheses.txt").read_text()
        assert (tmp_path / "mixed" / name / "scores.json").is_file()


@pytest.mark.parametrize("text, message", [
    ("[]", "non-empty list of entries"),
    ("- {name: a, task: e2e, split: test, adapter_dir: null, extra: 1}", "unknown key 'extra'"),
    ("- {name: a, task: nope, adapter_dir: null}", "key 'task' is 'nope'"),
    ("- {name: a, task: e2e, adapter_dir: /nonexistent}", "holds no adapter_config.json"),
    ("- {name: a, task: e2e, adapter_dir: null}\n- {name: a, task: dart, adapter_dir: null}", "unique"),
])
def test_bad_manifests_are_named(tmp_path, text, message):
    from nola.decode.mixed import read_manifest

    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(NolaError, match=re.escape(message)):
        read_manifest(path, tmp_path)


def test_a_file_whose_seeds_miss_a_slot_is_refused_naming_the_file(base, saved, tmp_path):
    import json
    import shutil

    broken = tmp_path / "nola_a"
    shutil.copytree(saved / "nola_a", broken)
    config_path = broken / "adapter_config.json"
    document = json.loads(config_path.read_text())
    dropped = sorted(document["seeds"])[0]
    del document["seeds"][dropped]
    config_path.write_text(json.dumps(document))
    bank = AdapterBank(copy.deepcopy(base), base_fingerprint(base))
    with pytest.raises(NolaError, match=re.escape(f"{config_path}: seeds do not match") + f".*{re.escape(dropped)}"):
        bank.add("broken", broken)
    assert "broken" not in bank.adapters
