"""E2E NLG challenge (Novikova et al., SIGDIAL 2017) in LoRA's `MR||reference` text layout.

Each line of microsoft/LoRA `examples/NLG/data/e2e/{train,valid,test}.txt` is
`name : The Vaults | Type : pub | ...||The Vaults pub near ...`. As in LoRA's
`format_converting_e2e.py`, the line is stripped, the MR is the context and the text is the
completion (microsoft/LoRA examples/NLG). Unlike it, a malformed line is an error instead of a crash or a silently
misread example.
"""

from __future__ import annotations

from pathlib import Path

from nola.fileio import read_utf8
from nola.data.records import ConvertedSplit, Example
from nola.errors import NolaError

RAW_FILES = {"train": "e2e/train.txt", "valid": "e2e/valid.txt", "test": "e2e/test.txt"}
SEPARATOR = "||"


def convert_e2e(path: str | Path) -> ConvertedSplit:
    """Read one E2E split: every line must be `MR||reference` with both parts non-empty."""
    path = Path(path)
    lines = read_utf8(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    examples = []
    for number, raw_line in enumerate(lines, 1):
        line = raw_line.strip()
        if not line:
            raise NolaError(f"{path}:{number}: empty line; every line must be `MR||reference`")
        parts = line.split(SEPARATOR)
        if len(parts) != 2:
            found = "no" if len(parts) == 1 else str(len(parts) - 1)
            raise NolaError(
                f"{path}:{number}: expected one `{SEPARATOR}` between the MR and the reference, found {found}"
            )
        meaning, text = parts
        if not meaning.strip():
            raise NolaError(f"{path}:{number}: empty MR before `{SEPARATOR}`")
        if not text.strip():
            raise NolaError(f"{path}:{number}: empty reference after `{SEPARATOR}`")
        examples.append(Example(context=meaning, completion=text))
    if not examples:
        raise NolaError(f"{path}: no examples; is this the right file?")
    return ConvertedSplit(examples=examples, notes={})
