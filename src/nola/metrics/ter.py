"""TER as GenerationEval computes it with `pyter` (PyPI pyter3 0.3), exactly, but fast (eval/README.md).

pyter's TER (Snover et al. 2006, simplified): while some shift lowers the Levenshtein distance,
apply the best one. The candidate shifts move `hyp[i:i+k]` to position `j` of the remaining words,
for every `i != j` with `hyp[i] == ref[j]` and `k` the longest run of matches from there; the best
is the largest drop, ties going to the lexicographically largest shifted sentence (pyter sorts
(drop, words) pairs and takes the last). TER = (shifts + final distance) / reference length.

pyter recomputes a dynamic-programming table per candidate in pure Python. Here a distance is
Myers' bit-parallel algorithm (one pass of integer operations per hypothesis word; Hyyrö 2001's
form for the distance between whole strings), and a candidate resumes from the state of the prefix
it shares with the current sentence. The integers are the same, so the scores are too.

GenerationEval keeps, per hypothesis, the minimum over its references and averages; an empty
reference scores 1 (as would any pyter error). This is not sacrebleu's tercom-style TER.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

EMPTY_REFERENCE_TER = 1.0  # GenerationEval `ter_score`: `if len(ref) == 0: ter_score = 1`

# (VP, VN, distance): Myers' vertical delta bit vectors after some prefix of the hypothesis, and
# the distance of that prefix to the whole reference.
State = tuple[int, int, int]


class _Reference:
    """A reference prepared for bit-parallel distances: one match bit vector per word."""

    def __init__(self, words: Sequence[str]):
        self.words = list(words)
        self.length = len(self.words)
        self.mask = (1 << self.length) - 1
        self.top = 1 << (self.length - 1)
        self.match_bits: dict[str, int] = defaultdict(int)
        self.positions: dict[str, list[int]] = defaultdict(list)
        for index, word in enumerate(self.words):
            self.match_bits[word] |= 1 << index
            self.positions[word].append(index)

    def start(self) -> State:
        return self.mask, 0, self.length

    def advance(self, state: State, words: Sequence[str]) -> State:
        """The state after reading `words` on from `state` (Myers 1999, Hyyrö 2001 Fig. 3)."""
        vp, vn, distance = state
        mask, top = self.mask, self.top
        for word in words:
            eq = self.match_bits.get(word, 0)
            xv = eq | vn
            xh = (((eq & vp) + vp) ^ vp) | eq
            ph = vn | (~(xh | vp) & mask)
            mh = vp & xh
            if ph & top:
                distance += 1
            elif mh & top:
                distance -= 1
            ph = ((ph << 1) | 1) & mask  # row 0 of the table grows by one per word
            mh = (mh << 1) & mask
            vp = mh | (~(xv | ph) & mask)
            vn = ph & xv
        return vp, vn, distance

    def prefix_states(self, words: Sequence[str]) -> list[State]:
        states = [self.start()]
        for word in words:
            states.append(self.advance(states[-1], (word,)))
        return states


def _best_shift(words: list[str], reference: _Reference) -> tuple[int, list[str]] | None:
    """pyter `_shift`: the largest distance drop over all candidate shifts and its sentence."""
    states = reference.prefix_states(words)
    distance = states[-1][2]
    best: tuple[int, list[str]] | None = None
    for start, word in enumerate(words):
        for target in reference.positions.get(word, ()):
            if target == start:
                continue
            span = 1
            while (start + span < len(words) and target + span < reference.length
                   and words[start + span] == reference.words[target + span]):
                span += 1
            remaining = words[:start] + words[start + span:]
            shifted = remaining[:target] + words[start:start + span] + remaining[target:]
            shared = min(start, target, len(remaining))
            drop = distance - reference.advance(states[shared], shifted[shared:])[2]
            if best is None or (drop, shifted) > best:
                best = (drop, shifted)
    return best


def ter(hypothesis: Sequence[str], reference: Sequence[str]) -> float:
    """pyter.ter(hypothesis, reference); an empty reference gives GenerationEval's 1.0."""
    if not reference:
        return EMPTY_REFERENCE_TER
    prepared = _Reference(reference)
    words = list(hypothesis)
    shifts = 0
    while (best := _best_shift(words, prepared)) is not None and best[0] > 0:
        words = best[1]
        shifts += 1
    return (shifts + prepared.advance(prepared.start(), words)[2]) / prepared.length


def _lower_bound(hypothesis: Sequence[str], reference: Sequence[str]) -> float:
    """No shift sequence does better: the distance is at least max(n, m) minus the common words."""
    if not reference:
        return EMPTY_REFERENCE_TER
    common = sum((Counter(hypothesis) & Counter(reference)).values())
    return (max(len(hypothesis), len(reference)) - common) / len(reference)


def min_ter(hypothesis: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """The smallest TER of `hypothesis` over `references` (GenerationEval's per-sentence score).

    Repeated references are scored once, and a reference whose lower bound can't beat the best so
    far is skipped: the minimum is unchanged.
    """
    unique = list(dict.fromkeys(tuple(ref) for ref in references))
    best = float("inf")
    for bound, reference in sorted((_lower_bound(hypothesis, ref), ref) for ref in unique):
        if bound >= best:
            break
        best = min(best, ter(hypothesis, reference))
    return best


def corpus_ter(references: Sequence[Sequence[Sequence[str]]], hypotheses: Sequence[Sequence[str]]) -> float:
    """GenerationEval `ter_score`: the mean over sentences of the minimum TER over references."""
    scores = [min_ter(hyp, refs) for refs, hyp in zip(references, hypotheses, strict=True)]
    return sum(scores) / len(scores)
