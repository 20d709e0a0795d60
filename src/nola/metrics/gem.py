"""WebNLG and DART scores as LoRA's pipeline computes them, on the scales GenerationEval prints.

microsoft/LoRA examples/NLG: `gpt2_decode.py --ref_type webnlg|dart --ref_num 6 --tokenize --lower`
writes lowercased text split at every non-word character, six references per instance (a group
with fewer repeats its first, extra ones are dropped), then WebNLG/GenerationEval `eval.py -nr 6
-m bleu,meteor,ter` scores the files:
- BLEU: multi-bleu-detok.perl on those files (mteval-v13a tokens), 0-100 as it prints it;
- METEOR: meteor-1.5.jar `-l en -norm -r 6` on `nltk.word_tokenize`d text;
- TER: pyter per (hypothesis, reference) pair on the same tokens, minimum over the references,
  averaged over instances.
GenerationEval reads files with `read().split('\\n')`, so a trailing newline adds an empty
instance (its METEOR then fails, microsoft/LoRA#138, and TER gains a spurious 1); only the real
instances are scored here. WebNLG reports each metric on seen (S) and unseen (U) categories and
all (A), LoRA's `--filter seen|unseen|all`: each subset is scored as a corpus of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from nola.data.references import GEM_NUM_REFS, gem_tokenize
from nola.metrics.bleu_nist import bleu_segment_stats, multi_bleu_detok
from nola.metrics.e2e import check_groups
from nola.metrics.meteor import MeteorProcess
from nola.metrics.ter import min_ter
from nola.metrics.tokenize import mteval_13a_perl, treebank_tokenize

GEM_BLEU_SCALE = 100.0  # GenerationEval parses multi-bleu-detok.perl's "BLEU = 46.52"

TER_PROGRESS_MIN = 500  # show a TER progress bar from this many instances on


def lora_references(references: Sequence[Sequence[str]], num_refs: int = GEM_NUM_REFS) -> list[list[str]]:
    """LoRA `--ref_num`: exactly `num_refs` per group, the first repeated where some are missing."""
    return [[gem_tokenize(refs[index] if index < len(refs) else refs[0]) for index in range(num_refs)]
            for refs in references]


def score_gem_subsets(references: Sequence[Sequence[str]], hypotheses: Sequence[str], subsets: Mapping[str, Sequence[int]],
                      *, num_refs: int = GEM_NUM_REFS) -> dict[str, dict[str, float]]:
    """BLEU, METEOR and TER of each subset of instances (indices in order), one METEOR run for all."""
    check_groups(references, hypotheses)
    refs = lora_references(references, num_refs)
    hyps = [gem_tokenize(hyp) for hyp in hypotheses]
    texts = {text for group in refs for text in group} | set(hyps)  # padded references repeat
    with MeteorProcess() as meteor, ThreadPoolExecutor(max_workers=1) as background:
        words = {text: treebank_tokenize(text) for text in texts}
        word_refs = [[words[ref] for ref in group] for group in refs]
        word_hyps = [words[hyp] for hyp in hyps]
        scoring = background.submit(meteor.score, [[" ".join(ref) for ref in group] for group in word_refs],
                                    [" ".join(hyp) for hyp in word_hyps], subsets)
        bleu_tokens = {text: mteval_13a_perl(text) for text in texts}
        bleu_refs = [[bleu_tokens[ref] for ref in group] for group in refs]
        bleu_hyps = [bleu_tokens[hyp] for hyp in hyps]
        pairs = tqdm(zip(word_hyps, word_refs), total=len(hyps), desc="TER", unit="sent",
                     disable=None if len(hyps) >= TER_PROGRESS_MIN else True)
        ters = [min_ter(hyp, group) for hyp, group in pairs]
        meteors = scoring.result()
    scores = {}
    for name, indices in subsets.items():
        scores[name] = {
            "BLEU": GEM_BLEU_SCALE * multi_bleu_detok([bleu_refs[i] for i in indices], [bleu_hyps[i] for i in indices]),
            "METEOR": meteors[name],
            "TER": sum(ters[i] for i in indices) / len(indices),
        }
    return scores


def gem_bleu_segments(references: Sequence[Sequence[str]], hypotheses: Sequence[str], *,
                      num_refs: int = GEM_NUM_REFS) -> list[tuple[int, ...]]:
    """Per-instance BLEU statistics (`bleu_segment_stats`) on the tokens `score_gem_subsets`' BLEU uses."""
    check_groups(references, hypotheses)
    refs = lora_references(references, num_refs)
    return [bleu_segment_stats([mteval_13a_perl(ref) for ref in group], mteval_13a_perl(gem_tokenize(hyp)))
            for group, hyp in zip(refs, hypotheses)]


def score_gem(references: Sequence[Sequence[str]], hypotheses: Sequence[str], *,
              num_refs: int = GEM_NUM_REFS) -> dict[str, float]:
    """BLEU, METEOR, TER of `hypotheses` (one per group of raw references), GenerationEval style."""
    return score_gem_subsets(references, hypotheses, {"all": range(len(hypotheses))}, num_refs=num_refs)["all"]


def score_webnlg(references: Sequence[Sequence[str]], hypotheses: Sequence[str], seen: Sequence[bool], *,
                 num_refs: int = GEM_NUM_REFS) -> dict[str, dict[str, float]]:
    """{"all": ..., "seen": ..., "unseen": ...} (a subset without instances is left out)."""
    if len(seen) != len(hypotheses):
        raise ValueError(f"{len(seen)} seen flags for {len(hypotheses)} hypotheses")
    subsets = {"all": range(len(hypotheses)),
               "seen": [i for i, flag in enumerate(seen) if flag],
               "unseen": [i for i, flag in enumerate(seen) if not flag]}
    return score_gem_subsets(references, hypotheses, {name: idx for name, idx in subsets.items() if idx},
                             num_refs=num_refs)
