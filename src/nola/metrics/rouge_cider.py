"""ROUGE-L and CIDEr as pycocoevalcap computes them (tuetschek/e2e-metrics' copy).

Both read PTB-tokenized, lowercased text with punctuation removed (`tokenize.ptb_tokenize`).
- ROUGE-L (Lin 2004, β = 1.2): per segment F from the best LCS precision and the best LCS recall
  over the references (each maximum taken separately); the corpus score is the mean.
- CIDEr-D style (Vedantam et al. 2015): TF-IDF n-gram vectors (n = 1..4) with document frequencies
  from the evaluated references, hypothesis weights clipped at the reference's, a Gaussian length
  penalty (σ = 6), mean over n and references, ×10; the corpus score is the mean.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

ROUGE_BETA = 1.2  # pycocoevalcap Rouge: "updated the value below based on discussion with Hovey"
CIDER_ORDER = 4
CIDER_SIGMA = 6.0
CIDER_SCALE = 10.0

NGram = tuple[str, ...]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (bit-parallel, Allison & Dix 1986)."""
    masks: dict[str, int] = defaultdict(int)
    for position, token in enumerate(a):
        masks[token] |= 1 << position
    full = (1 << len(a)) - 1
    row = full
    for token in b:
        matches = row & masks.get(token, 0)
        row = ((row + matches) | (row - matches)) & full
    return len(a) - row.bit_count()


def rouge_l_segment(references: Sequence[str], hypothesis: str) -> float:
    """pycocoevalcap `Rouge.calc_score` (tokens from `split(" ")`, so "" is one empty token)."""
    candidate = hypothesis.split(" ")
    precisions, recalls = [], []
    for reference in references:
        tokens = reference.split(" ")
        common = lcs_length(tokens, candidate)
        precisions.append(common / float(len(candidate)))
        recalls.append(common / float(len(tokens)))
    precision, recall = max(precisions), max(recalls)
    if precision == 0 or recall == 0:
        return 0.0
    return ((1 + ROUGE_BETA**2) * precision * recall) / float(recall + ROUGE_BETA**2 * precision)


def rouge_l(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> float:
    """Corpus ROUGE-L: the mean of the segment scores."""
    scores = [rouge_l_segment(refs, hyp) for refs, hyp in zip(references, hypotheses, strict=True)]
    return float(np.mean(np.array(scores)))


def _cider_counts(sentence: str) -> Counter[NGram]:
    words = sentence.split()
    return Counter(tuple(words[i:i + n]) for n in range(1, CIDER_ORDER + 1) for i in range(len(words) - n + 1))


class _TfIdf:
    """One sentence's TF-IDF vectors per n-gram order, their norms and its "length".

    The length is pycocoevalcap's: it adds up the counts of order index 1, i.e. it is the number of
    bigrams, not words.
    """

    def __init__(self, counts: Counter[NGram], document_frequency: Counter[NGram], log_documents: float):
        self.vectors: list[dict[NGram, float]] = [{} for _ in range(CIDER_ORDER)]
        squares = [0.0] * CIDER_ORDER
        self.length = 0
        for ngram, term_frequency in counts.items():
            order = len(ngram) - 1
            weight = float(term_frequency) * (log_documents - math.log(max(1.0, document_frequency[ngram])))
            self.vectors[order][ngram] = weight
            squares[order] += weight**2
            if order == 1:
                self.length += term_frequency
        self.norms = [math.sqrt(square) for square in squares]


def _cider_similarity(hyp: _TfIdf, ref: _TfIdf) -> np.ndarray:
    penalty = math.e ** (-(float(hyp.length - ref.length) ** 2) / (2 * CIDER_SIGMA**2))
    values = np.zeros(CIDER_ORDER)
    for order in range(CIDER_ORDER):
        ref_vector = ref.vectors[order]
        value = 0.0
        for ngram, weight in hyp.vectors[order].items():
            ref_weight = ref_vector.get(ngram, 0.0)
            value += min(weight, ref_weight) * ref_weight
        if hyp.norms[order] != 0 and ref.norms[order] != 0:
            value /= hyp.norms[order] * ref.norms[order]
        values[order] = value * penalty
    return values


def cider_d(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> float:
    """Corpus CIDEr (pycocoevalcap `CiderScorer`, n = 4, σ = 6), document frequencies from `references`."""
    reference_counts = [[_cider_counts(ref) for ref in refs] for refs in references]
    document_frequency: Counter[NGram] = Counter()
    for counts in reference_counts:
        document_frequency.update({ngram for ref in counts for ngram in ref})
    log_documents = math.log(float(len(reference_counts)))
    scores = []
    for counts, hypothesis in zip(reference_counts, hypotheses, strict=True):
        hyp = _TfIdf(_cider_counts(hypothesis), document_frequency, log_documents)
        total = np.zeros(CIDER_ORDER)
        for ref_counts in counts:
            total += _cider_similarity(hyp, _TfIdf(ref_counts, document_frequency, log_documents))
        scores.append(float(np.mean(total)) / len(counts) * CIDER_SCALE)
    return float(np.mean(np.array(scores)))
