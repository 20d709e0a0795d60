"""Corpus BLEU (Papineni et al. 2002) and NIST (Doddington 2002) as the official tools compute them.

eval/README.md describes the official tools:
- `e2e_bleu`, `e2e_nist`: tuetschek/e2e-metrics `metrics/pymteval.py` (`measure_scores.py -p`):
  BLEU-4 with the closest reference length (ties: the shorter one) and a tiny floor on zero counts;
  NIST-5 with information weights from all references of the corpus (the Python port: it differs
  from the Perl mteval when reference counts vary).
- `multi_bleu_detok`: Moses `multi-bleu-detok.perl` as GenerationEval runs it for WebNLG and DART.

Quirks of the originals are kept, each noted where it happens. Inputs are token lists; lowercasing
and tokenization belong to the caller (`nola.metrics.tokenize`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

Tokens = Sequence[str]
NGram = tuple[str, ...]

BLEU_ORDER = 4
NIST_ORDER = 5
PYMTEVAL_TINY = 1e-15  # pymteval floors zero hits to this ...
PYMTEVAL_SMALL = 1e-9  # ... and zero n-gram totals to this
PYMTEVAL_EMPTY_LENGTH = 1e-5  # pymteval's candidate length when it is 0, in the brevity penalty
NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2  # mteval-v13a: penalty 0.5 at 2/3 of the reference length
PERL_LOG_ZERO = -9999999999  # multi-bleu-detok.perl `my_log(0)`


def ngram_counts(tokens: Tokens, n: int) -> Counter[NGram]:
    """Counts of the n-grams of `tokens`, in order of first appearance."""
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def max_reference_counts(references: Sequence[Tokens], n: int) -> dict[NGram, int]:
    """For every n-gram of any reference, its largest count in a single reference (BLEU's clip)."""
    merged: dict[NGram, int] = {}
    for reference in references:
        for ngram, count in ngram_counts(reference, n).items():
            if count > merged.get(ngram, 0):
                merged[ngram] = count
    return merged


def clipped_hits(hypothesis_counts: Counter[NGram], clip: dict[NGram, int]) -> dict[NGram, int]:
    """The hypothesis n-grams found in a reference, each counted at most `clip` times."""
    hits = {ngram: min(count, clip.get(ngram, 0)) for ngram, count in hypothesis_counts.items()}
    return {ngram: count for ngram, count in hits.items() if count}


def closest_reference_length(references: Sequence[Tokens], hypothesis_length: int) -> int:
    """The reference length closest to the hypothesis length; on a tie, the shorter."""
    return min((abs(len(ref) - hypothesis_length), len(ref)) for ref in references)[1]


SEGMENT_FIELDS = ("hits_1", "hits_2", "hits_3", "hits_4", "hypothesis_length", "reference_length")
BLEU_VARIANTS = ("pymteval", "multi-bleu-detok")


def bleu_segment_stats(references: Sequence[Tokens], hypothesis: Tokens) -> tuple[int, ...]:
    """One segment's BLEU sufficient statistics (`SEGMENT_FIELDS`): clipped n-gram hits for n = 1..4,
    the hypothesis length and the closest reference length.

    Corpus BLEU is a function of their sums (`corpus_bleu`), which is what makes a bootstrap over
    segments cheap (`nola.stats`): the n-gram totals follow from the hypothesis lengths.
    """
    hits = [sum(clipped_hits(ngram_counts(hypothesis, n), max_reference_counts(references, n)).values())
            for n in range(1, BLEU_ORDER + 1)]
    return (*hits, len(hypothesis), closest_reference_length(references, len(hypothesis)))


def ngram_totals(variant: str, hypothesis_length: int) -> list[int]:
    """A segment's n-gram totals for n = 1..4: pymteval counts len - n + 1, which goes negative for
    outputs shorter than n (a quirk kept); multi-bleu-detok counts the n-grams there are."""
    if variant == "pymteval":
        return [hypothesis_length - n + 1 for n in range(1, BLEU_ORDER + 1)]
    return [max(hypothesis_length - n + 1, 0) for n in range(1, BLEU_ORDER + 1)]


def segment_sums_row(variant: str, segment: Sequence[int]) -> list[int]:
    """The ten numbers one segment adds to corpus BLEU's sums: hits 1..4, n-gram totals 1..4
    (`ngram_totals`), hypothesis length, reference length."""
    if variant not in BLEU_VARIANTS:
        raise ValueError(f"unknown BLEU variant {variant!r}; one of {BLEU_VARIANTS}")
    hits, lengths = segment[:BLEU_ORDER], segment[BLEU_ORDER:BLEU_ORDER + 2]
    return [*hits, *ngram_totals(variant, segment[BLEU_ORDER]), *lengths]


def bleu_from_sums(variant: str, sums: Sequence[float]) -> float:
    """Corpus BLEU-4 (a fraction) from the corpus sums of `segment_sums_row`."""
    hits, totals = [int(x) for x in sums[:BLEU_ORDER]], [int(x) for x in sums[BLEU_ORDER:2 * BLEU_ORDER]]
    hypothesis_length, reference_length = int(sums[2 * BLEU_ORDER]), int(sums[2 * BLEU_ORDER + 1])
    if variant == "pymteval":
        return _pymteval_bleu(hits, totals, reference_length)
    return _multi_bleu_detok(hits, totals, hypothesis_length, reference_length)


def corpus_bleu(variant: str, segments: Sequence[Sequence[int]]) -> float:
    """Corpus BLEU-4 (a fraction) from per-segment `bleu_segment_stats`, as `variant` computes it:
    pymteval (`e2e_bleu`) or multi-bleu-detok (`multi_bleu_detok`)."""
    sums = [0] * (2 * BLEU_ORDER + 2)
    for segment in segments:
        for index, value in enumerate(segment_sums_row(variant, segment)):
            sums[index] += value
    return bleu_from_sums(variant, sums)


def _pymteval_bleu(hits: list[int], totals: list[int], reference_length: int) -> float:
    """pymteval `BLEUScore.score`: no smoothing, zero counts floored, brevity penalty on
    candidate length (its 1-gram total) <= reference length."""
    brevity_penalty = 1.0
    if totals[0] <= reference_length:
        brevity_penalty = math.exp(1.0 - reference_length / (float(totals[0]) or PYMTEVAL_EMPTY_LENGTH))
    log_precision_sum = 0.0
    for n_hits, n_total in zip(hits, totals):
        log_precision_sum += math.log(max(float(n_hits), PYMTEVAL_TINY) / max(float(n_total), PYMTEVAL_SMALL))
    return brevity_penalty * math.exp((1.0 / BLEU_ORDER) * log_precision_sum)


def _multi_bleu_detok(hits: list[int], totals: list[int], hypothesis_length: int, reference_length: int) -> float:
    """multi-bleu-detok.perl: exact totals, `my_log(0)` for a zero precision, the brevity penalty
    only when the output is strictly shorter; 0 where the script dies or prints BLEU = 0."""
    if reference_length == 0 or hypothesis_length == 0:
        return 0.0
    brevity_penalty = 1.0
    if hypothesis_length < reference_length:
        brevity_penalty = math.exp(1 - reference_length / hypothesis_length)
    log_sum = 0.0
    for correct, total in zip(hits, totals):
        precision = correct / total if total else 0
        log_sum += math.log(precision) if precision else PERL_LOG_ZERO
    return brevity_penalty * math.exp(log_sum / BLEU_ORDER)


def e2e_bleu(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens]) -> float:
    """pymteval `BLEUScore` (max n 4, no smoothing) over lowercased mteval-v13a tokens: the closest
    reference length (ties: the shorter one), n-gram totals len - n + 1, a tiny floor on zero counts."""
    return corpus_bleu("pymteval", [bleu_segment_stats(refs, hyp) for refs, hyp in zip(references, hypotheses, strict=True)])


def nist_length_penalty(system_length: int, average_reference_length: float) -> float:
    """mteval's NIST brevity penalty: exp(-β log²(ratio)) below ratio 1."""
    ratio = system_length / float(average_reference_length)
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    return math.exp(-NIST_BETA * math.log(ratio) ** 2)


def e2e_nist(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens]) -> float:
    """pymteval `NISTScore` (max n 5) over lowercased mteval-v13a tokens.

    An n-gram's information is log2(count of its (n-1)-gram prefix / its count), counted over every
    reference of the corpus (unigrams: over the total reference length).
    """
    reference_counts: list[Counter[NGram]] = [Counter() for _ in range(NIST_ORDER + 1)]
    segment_hits: list[list[dict[NGram, int]]] = [[] for _ in range(NIST_ORDER)]
    candidate_totals = [0] * NIST_ORDER
    average_reference_length = 0.0
    for refs, hyp in zip(references, hypotheses, strict=True):
        for n in range(1, NIST_ORDER + 1):
            candidate_totals[n - 1] += len(hyp) - n + 1
            segment_hits[n - 1].append(clipped_hits(ngram_counts(hyp, n), max_reference_counts(refs, n)))
            for ref in refs:
                reference_counts[n].update(ngram_counts(ref, n))
        reference_words = sum(len(ref) for ref in refs)
        reference_counts[0][()] += reference_words
        average_reference_length += reference_words / float(len(refs))

    def information(ngram: NGram) -> float:
        return math.log(reference_counts[len(ngram) - 1][ngram[:-1]] / float(reference_counts[len(ngram)][ngram]), 2)

    nist_sum = 0.0
    for n in range(NIST_ORDER):
        hit_information = 0.0
        for hits in segment_hits[n]:
            hit_information += sum(information(ngram) * count for ngram, count in hits.items())
        # pymteval divides unguarded (a zero total crashes it); a zero total can only come with no hits
        nist_sum += hit_information / candidate_totals[n] if candidate_totals[n] else 0.0
    return nist_length_penalty(candidate_totals[0], average_reference_length) * nist_sum


def multi_bleu_detok(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens]) -> float:
    """Moses multi-bleu-detok.perl BLEU-4 as a fraction (the script prints 100× it, to 2 decimals).

    Unlike pymteval: exact n-gram totals, no floor (a zero precision gives 0 via `my_log(0)`), and
    the brevity penalty only when the output is strictly shorter. Where the script dies or prints
    `BLEU = 0` (empty output or references) this returns 0.0.
    """
    segments = [bleu_segment_stats(refs, hyp) for refs, hyp in zip(references, hypotheses, strict=True)]
    return corpus_bleu("multi-bleu-detok", segments)
