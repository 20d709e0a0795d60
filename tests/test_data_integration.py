"""The real datasets (../shared/data): counts, and byte-equality with LoRA's own pipeline.

Counts are those LoRA's pipeline sees on these files (microsoft/LoRA examples/NLG). The sha256
digests were measured by running microsoft/LoRA @ c4593f0 `examples/NLG/src/` on the same raw files:
`format_converting_{e2e,webnlg,dart}.py` (its JSON-lines output), `gpt2_encode.py --add_bos
--add_eos` (token ids) and `gpt2_decode.py` (E2E reference file; WebNLG/DART `--ref_type ...
--ref_num 6 --tokenize --lower`, WebNLG also `--filter seen|unseen`).
"""

from __future__ import annotations

import hashlib
import json

import pytest

from nola.data import build_sequences, load_examples, load_reference_groups, load_tokenized, reference_files
from nola.data.prepare import prepare
from nola.data.references import group_references
from nola.tokenizer import load_tokenizer

pytestmark = pytest.mark.integration

LORA_FORMATTED_SHA256 = {
    ("e2e", "train"): "c17ccba9343fb718710d9cd8a510352fd16db22144861e12fb1bfad950cdd5d4",
    ("e2e", "valid"): "b8aea8e7c862d1c3db3279bb494131d838e0fb1223597ed070f3cf9dde50ed69",
    ("e2e", "test"): "9f774414e4dc88271fa2982ec21c8c1e2344c6c54d474e0e3ef8c8d677a49c9c",
    ("webnlg", "train"): "1b1f3d9e702d148e99d5ff0dab83732ff772a2c384700fca417e60a52b2647f7",
    ("webnlg", "valid"): "f92c32802d38cb520103e6edaa620da31b11db399fc81db8d02f83e7af33d3cd",
    ("webnlg", "test"): "755e5cf84869516aa4fcd7b34e783b3bd76136cc366ff50f4c3e94af9c70bdba",
    ("dart", "train"): "8bb206b0d5b416ca72b5d543071a0ea8439420a4a6a4c8cf567e347847eee735",
    ("dart", "valid"): "79cd5c51462e6db68653e3807bb51d0da4be9515efa4f8ea67d88b5ed439d994",
    ("dart", "test"): "42ad404f533d373a196c89dfc607acbea1e82e039b459b004601d2e272ed6433",
}
LORA_TOKEN_IDS_SHA256 = {
    ("e2e", "test"): "32b4c41133c61d714642e128498a153b1864390f3b353981a95b62b442fbe07d",
    ("webnlg", "test"): "b50d00068fd609be5ffbfd4789f80bf44fde03088569c37563e9732fdcd1b6b5",
    ("dart", "test"): "e5328040dffe17774279795c9cf2b4f9d02d3e3368e7e9d01a92173ee6b83a0d",
}
LORA_REFERENCE_SHA256 = {
    ("e2e", "valid", "multi_ref"): "630bbb25eb4b48c94fdd37c0e2d646e87faa31adc78a17ab9917ae1965a64490",
    ("e2e", "test", "multi_ref"): "cda3fdb4ce7f50ed7926e9e5c98e311b83b221f5b6cdb93ef97cc3c664334cc4",
    ("webnlg", "test", 0): "5c72a1104a9c139660ff7689f3e1920ec1323fe7cfb31eb45a8335cd5b10e245",
    ("webnlg", "test", 5): "62307dd160682907e21a85399aabfebd846fcb64bc7bb414a71b4130fc09b0d2",
    ("webnlg", "test", "seen0"): "d022683e57a5d2adf85226c814881641f6af6a7638a5867a6648d2b5510b0b9b",
    ("webnlg", "test", "unseen0"): "ca55a1297a20b5aea49db27bc093ed88c6f6facc7734d459688791dd578994da",
    ("dart", "valid", 0): "2f40301efdff33bb502867f811418fa8ebc72111e271314353efbfeb2d221db1",
    ("dart", "test", 0): "42e0951732ea6374cbe51ce1ba9273e2b363dbd8172ab41317db156548616e75",
    ("dart", "test", 5): "0c2ff9b87125e33eddc8965212689757297dae69fb0c71cb805b9e29d700aed9",
}
EXAMPLE_COUNTS = {
    "e2e": {"train": 42_061, "valid": 4_672, "test": 4_693},
    "webnlg": {"train": 18_025, "valid": 2_258, "test": 4_928},
    "dart": {"train": 62_659, "valid": 6_980, "test": 12_552},
}


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.fixture(scope="module")
def prepared(shared_data, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("prepared")
    summary = prepare(["e2e", "webnlg", "dart"], data_dir, mirror=shared_data, tokenize=False, progress=False)
    return data_dir, summary


@pytest.mark.parametrize("task", EXAMPLE_COUNTS)
def test_example_counts(prepared, task):
    _, summary = prepared
    assert {split: stats["examples"] for split, stats in summary[task]["splits"].items()} == EXAMPLE_COUNTS[task]


def test_reference_group_counts(prepared):
    data_dir, summary = prepared
    assert len(load_reference_groups(data_dir, "e2e", "test")) == 630
    assert len(load_reference_groups(data_dir, "e2e", "valid")) == 547
    assert max(len(g.references) for g in load_reference_groups(data_dir, "e2e", "test")) == 45
    webnlg = load_reference_groups(data_dir, "webnlg", "test")
    assert (len(webnlg), sum(g.seen for g in webnlg), sum(not g.seen for g in webnlg)) == (1_862, 971, 891)
    assert len(load_reference_groups(data_dir, "dart", "test")) == 4_159
    assert summary["webnlg"]["splits"]["train"]["lexicalisations_not_good"] == 18_102 - 18_025


def test_reference_files_line_counts(prepared):
    data_dir, _ = prepared
    e2e = reference_files(data_dir, "e2e", "test").multi_ref.read_text(encoding="utf-8")
    blocks = e2e.rstrip("\n").split("\n\n")
    assert len(blocks) == 630 and sum(len(block.split("\n")) for block in blocks) == 4_693
    webnlg = reference_files(data_dir, "webnlg", "test")
    assert webnlg.categories.read_text(encoding="utf-8").split().count("seen") == 971
    for path, lines in [
        (webnlg.references[3], 1_862),
        (webnlg.subsets["seen"][3], 971),
        (webnlg.subsets["unseen"][3], 891),
    ]:
        assert path.read_text(encoding="utf-8").count("\n") == lines


@pytest.mark.parametrize(("task", "split"), list(LORA_FORMATTED_SHA256))
def test_examples_equal_lora_converter_output(prepared, task, split):
    data_dir, _ = prepared
    lines = []
    for example in load_examples(data_dir, task, split):
        record = {"context": example.context, "completion": example.completion}
        if task == "webnlg":
            record["cate"] = example.seen
        lines.append(json.dumps(record) + "\n")
    assert sha256_text("".join(lines)) == LORA_FORMATTED_SHA256[task, split]


@pytest.mark.parametrize("key", list(LORA_REFERENCE_SHA256), ids=str)
def test_reference_files_equal_lora_gpt2_decode_output(prepared, key):
    data_dir, _ = prepared
    task, split, which = key
    files = reference_files(data_dir, task, split)
    if which == "multi_ref":
        path = files.multi_ref
    elif isinstance(which, int):
        path = files.references[which]
    else:
        path = files.subsets[which[:-1]][int(which[-1])]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == LORA_REFERENCE_SHA256[key]


@pytest.mark.parametrize(("task", "split"), list(LORA_TOKEN_IDS_SHA256))
def test_token_ids_equal_lora_gpt2_encode_and_fit_512(prepared, shared_data, task, split):
    data_dir, _ = prepared
    tokenizer = load_tokenizer(shared_data / "vocab")
    tokenized = load_tokenized(data_dir, task, split, tokenizer)
    lines = "".join(
        json.dumps({"context": tokenized.context(i).tolist(), "completion": tokenized.completion(i).tolist()}) + "\n"
        for i in range(len(tokenized))
    )
    assert sha256_text(lines) == LORA_TOKEN_IDS_SHA256[task, split]
    sequences = build_sequences(tokenized, max_seq_len=512)
    assert (len(sequences), sequences.num_truncated, sequences.num_dropped) == (len(tokenized), 0, 0)
    assert load_tokenized(data_dir, task, split, tokenizer).from_cache


def test_webnlg_dev_context_under_two_categories_keeps_the_first(prepared):
    data_dir, _ = prepared
    examples = load_examples(data_dir, "webnlg", "valid")
    categories: dict[str, set[str]] = {}
    for example in examples:
        categories.setdefault(example.context, set()).add(example.category)
    shared = [context for context, cats in categories.items() if len(cats) > 1]
    assert shared  # the real dev split has such contexts (all of seen categories)
    groups = {group.context: group for group in group_references(examples)}
    first = {}
    for example in examples:
        first.setdefault(example.context, example.category)
    assert all(groups[context].category == first[context] for context in shared)
