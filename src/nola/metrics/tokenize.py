"""The tokenizers the official scorers apply before counting (eval/README.md).

- `mteval_13a`: the mteval-v13a / multi-bleu-detok punctuation tokenizer, in the two flavours the
  official tools run: tuetschek/e2e-metrics' Python port (`metrics/pymteval.py`, Unicode regexes)
  and Moses' `multi-bleu-detok.perl` (byte strings: only ASCII counts as whitespace).
- `ptb_tokenize`: the Stanford PTB tokenizer jar as pycocoevalcap runs it (`-preserveLines
  -lowerCase`), then pycocoevalcap's punctuation filter.
- `treebank_tokenize`: what GenerationEval's `nltk.word_tokenize` gives on LoRA's already split text.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from nltk.tokenize import NLTKWordTokenizer

from nola.errors import NolaError
from nola.metrics.java import CORENLP_JAR, describe_failure, java_executable, pycocoevalcap_file

MTEVAL_RULES = [
    (re.compile(r"<skipped>"), ""),
    (re.compile(r"-\n"), ""),
    (re.compile(r"\n"), " "),
    (re.compile(r"&quot;"), '"'),
    (re.compile(r"&amp;"), "&"),
    (re.compile(r"&lt;"), "<"),
    (re.compile(r"&gt;"), ">"),
]
MTEVAL_WESTERN_RULES = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # punctuation
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period and comma unless preceded by a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # period and comma unless followed by a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # dash after a digit
]
UNICODE_SPACES = re.compile(r"\s+")
ASCII_SPACES = re.compile(r"\s+", re.ASCII)
ASCII_WHITESPACE = " \t\n\r\f\v"

# pycocoevalcap/tokenizer/ptbtokenizer.py: tokens dropped after PTB tokenization (case-sensitive,
# so the lowercased "-lrb-"/"-rrb-" of parentheses stay, as they do there).
PTB_PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                             ".", "?", "!", ",", ":", "-", "--", "...", ";"])
PTB_MAIN_CLASS = "edu.stanford.nlp.process.PTBTokenizer"
# Characters the PTB tokenizer treats as line ends; pycocoevalcap only replaces "\n", so any of
# these in a sentence would shift every later line. They become spaces here.
PTB_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\u2028\u2029]")


def _mteval_normalize(text: str, spaces: re.Pattern[str]) -> str:
    for pattern, replacement in MTEVAL_RULES:
        text = pattern.sub(replacement, text)
    text = f" {text} "
    for pattern, replacement in MTEVAL_WESTERN_RULES:
        text = pattern.sub(replacement, text)
    return spaces.sub(" ", text)


def mteval_13a(text: str) -> list[str]:
    """e2e-metrics' `NGramScore.tokenize`: mteval-v13a rules, then `strip().split(' ')`.

    Like there, an empty sentence gives one empty token.
    """
    return _mteval_normalize(text, UNICODE_SPACES).strip().split(" ")


def mteval_13a_perl(text: str) -> list[str]:
    """multi-bleu-detok.perl's `tokenization` + `split`: the same rules, ASCII whitespace only."""
    normalized = _mteval_normalize(text, ASCII_SPACES).strip(ASCII_WHITESPACE)
    return normalized.split(" ") if normalized else []


def ptb_tokenize(sentences: list[str]) -> list[str]:
    """Stanford PTB-tokenize and lowercase every sentence in one Java run; drop punctuation tokens.

    pycocoevalcap: `java -cp stanford-corenlp-3.4.1.jar edu.stanford.nlp.process.PTBTokenizer
    -preserveLines -lowerCase FILE`, one sentence per line, then tokens in `PTB_PUNCTUATION` are
    removed and the rest joined with single spaces.
    """
    if not sentences:
        return []
    java = java_executable()
    jar = pycocoevalcap_file(*CORENLP_JAR)
    with tempfile.TemporaryDirectory(prefix="nola-ptb-") as tmp:
        source = Path(tmp) / "sentences.txt"
        source.write_text("\n".join(PTB_LINE_BREAKS.sub(" ", s) for s in sentences), encoding="utf-8")
        result = subprocess.run([java, "-cp", str(jar), PTB_MAIN_CLASS, "-preserveLines", "-lowerCase", str(source)],
                                capture_output=True, check=False)
    if result.returncode != 0:
        stderr = result.stderr.decode("utf-8", "replace")
        raise describe_failure("the Stanford PTB tokenizer", result.returncode, stderr)
    lines = result.stdout.decode("utf-8").split("\n")
    if len(lines) != len(sentences):
        raise NolaError(f"the Stanford PTB tokenizer returned {len(lines)} lines for {len(sentences)} sentences; "
                        "check the sentences for unusual control characters")
    return [" ".join(token for token in line.rstrip().split(" ") if token not in PTB_PUNCTUATION) for line in lines]


def treebank_tokenize(text: str) -> list[str]:
    """GenerationEval's `nltk.word_tokenize(text)` on text LoRA's `--tokenize` already split.

    word_tokenize first splits sentences with the punkt model, which can't be downloaded here. On
    text already split at every non-word character the sentence split changes no token, so this is
    NLTK's word tokenizer alone (it still turns `"` into ``` `` ``` and `cannot` into `can not`).
    """
    return NLTKWordTokenizer().tokenize(text)
