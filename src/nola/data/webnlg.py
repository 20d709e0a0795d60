"""WebNLG challenge 2017 (Gardent et al., INLG 2017) from the corpus-reader JSON of microsoft/LoRA.

`examples/NLG/data/webnlg_challenge_2017/{train,dev,test}.json` is `{"entries": [{"1": entry}, ...]}`.
As in LoRA's `format_converting_webnlg.py` (microsoft/LoRA examples/NLG): the context is the entry's
`modifiedtripleset` linearised as `subj : property : obj | ...` (DBpedia underscores kept), there is
one example per lexicalisation whose comment is "good", and the category decides seen/unseen.
"""

from __future__ import annotations

from pathlib import Path

from nola.fileio import expect_type, json_field, read_json
from nola.data.records import ConvertedSplit, Example, linearize_triples
from nola.errors import NolaError

RAW_FILES = {
    "train": "webnlg_challenge_2017/train.json",
    "valid": "webnlg_challenge_2017/dev.json",
    "test": "webnlg_challenge_2017/test.json",
}
# The ten DBpedia categories of the training data; the test set adds five unseen ones (microsoft/LoRA examples/NLG).
SEEN_CATEGORIES = frozenset(
    {
        "Airport",
        "Astronaut",
        "Building",
        "City",
        "ComicsCharacter",
        "Food",
        "Monument",
        "SportsTeam",
        "University",
        "WrittenWork",
    }
)
GOOD_COMMENT = "good"


def convert_webnlg(path: str | Path) -> ConvertedSplit:
    """Read one WebNLG split; a missing or mistyped key raises a NolaError naming its key path."""
    path = Path(path)
    root = expect_type(read_json(path), dict, where="the top level", path=path)
    entries = json_field(root, "entries", list, where="the top level", path=path)
    examples = []
    not_good = 0
    for index, wrapper in enumerate(entries):
        where = f"entries[{index}]"
        expect_type(wrapper, dict, where=where, path=path)
        if len(wrapper) != 1:
            raise NolaError(f"{path}: {where} should hold exactly one numbered entry, found {len(wrapper)} keys")
        ((entry_id, entry),) = wrapper.items()
        where = f"{where}.{entry_id}"
        expect_type(entry, dict, where=where, path=path)
        category = json_field(entry, "category", str, where=where, path=path)
        context = linearize_triples(read_triples(entry, where, path))
        lexicalisations = json_field(entry, "lexicalisations", list, where=where, path=path)
        for lex_index, lex in enumerate(lexicalisations):
            lex_where = f"{where}.lexicalisations[{lex_index}]"
            expect_type(lex, dict, where=lex_where, path=path)
            comment = json_field(lex, "comment", str, where=lex_where, path=path)
            text = json_field(lex, "lex", str, where=lex_where, path=path)
            if comment != GOOD_COMMENT:
                not_good += 1
                continue
            if not text.strip():
                raise NolaError(f"{path}: {lex_where}.lex is empty")
            examples.append(Example(context, text, category=category, seen=category in SEEN_CATEGORIES))
    if not examples:
        raise NolaError(f"{path}: no lexicalisation with comment 'good'; is this the right file?")
    return ConvertedSplit(examples=examples, notes={"lexicalisations_not_good": not_good})


def read_triples(entry: dict, where: str, path: Path) -> list[tuple[str, str, str]]:
    """The entry's modifiedtripleset as (subject, property, object) strings."""
    triples = json_field(entry, "modifiedtripleset", list, where=where, path=path)
    if not triples:
        raise NolaError(f"{path}: {where}.modifiedtripleset is empty")
    result = []
    for index, triple in enumerate(triples):
        triple_where = f"{where}.modifiedtripleset[{index}]"
        expect_type(triple, dict, where=triple_where, path=path)
        result.append(
            tuple(
                json_field(triple, key, str, where=triple_where, path=path) for key in ("subject", "property", "object")
            )
        )
    return result
