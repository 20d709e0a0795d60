"""Corpus METEOR 1.5 (Denkowski & Lavie 2014) as pycocoevalcap and GenerationEval run it (eval/README.md).

One Java process: `java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm`. Each segment is sent as
`SCORE ||| ref_1 ||| ... ||| ref_k ||| hypothesis` and answers with its statistics; one
`EVAL ||| stats_1 ||| ... ||| stats_n` line then returns the n segment scores and the corpus score
(aggregated statistics, not a mean of segment scores). This is pycocoevalcap's `Meteor`
(tuetschek/e2e-metrics). GenerationEval's file mode (`hyp refs -l en -norm -r 6`) aggregates the
same statistics: on the WebNLG 2017 submissions both give the same number to the last digit.
Subsets (WebNLG seen/unseen) are further `EVAL` lines over their segments' statistics, which is what
a separate run on the subset's files computes.

Loading the paraphrase table takes the jar several seconds, so `MeteorProcess` starts it at once and
lets the caller do other work before `score` is called.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import IO

from nola.errors import NolaError
from nola.metrics.java import METEOR_JAR, METEOR_PARAPHRASES, describe_failure, java_executable, pycocoevalcap_file

METEOR_OPTIONS = ("-stdio", "-l", "en", "-norm")
JAVA_HEAP = "-Xmx2G"  # pycocoevalcap and GenerationEval both run the jar with a 2 GB heap
LINE_BREAKS = str.maketrans({"\n": " ", "\r": " "})  # a line break inside a text would desynchronize the protocol


def score_line(references: Sequence[str], hypothesis: str) -> str:
    """pycocoevalcap `Meteor._stat`'s request; it cleans the hypothesis only."""
    hypothesis = hypothesis.replace("|||", "").replace("  ", " ")
    return " ||| ".join(("SCORE", " ||| ".join(references), hypothesis)).translate(LINE_BREAKS)


class MeteorProcess:
    """A running meteor-1.5.jar in stdio mode; use as a context manager, `score` once."""

    def __init__(self) -> None:
        java = java_executable()
        jar = pycocoevalcap_file(*METEOR_JAR)
        pycocoevalcap_file(*METEOR_PARAPHRASES)
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen([java, "-jar", JAVA_HEAP, str(jar), "-", "-", *METEOR_OPTIONS], cwd=jar.parent,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)

    def __enter__(self) -> MeteorProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        for stream in (self._process.stdin, self._process.stdout, self._stderr):
            if stream is not None:
                stream.close()

    def score(self, references: Sequence[Sequence[str]], hypotheses: Sequence[str],
              subsets: Mapping[str, Sequence[int]] | None = None) -> dict[str, float]:
        """Corpus METEOR of all segments ("all"), or of each subset of segment indices (in order)."""
        if len(references) != len(hypotheses):
            raise ValueError(f"{len(references)} reference groups for {len(hypotheses)} hypotheses")
        subsets = {"all": range(len(hypotheses))} if subsets is None else subsets
        if not all(subsets.values()):
            raise NolaError("METEOR needs at least one hypothesis in every set it scores")
        requests = [score_line(refs, hyp) for refs, hyp in zip(references, hypotheses)]
        try:
            return self._run_protocol(requests, subsets)
        except (OSError, ValueError) as err:
            self._process.kill()
            self._process.wait()
            self._stderr.seek(0)
            message = self._stderr.read().decode("utf-8", "replace") or str(err)
            raise describe_failure("METEOR (meteor-1.5.jar)", self._process.returncode, message) from None

    def _run_protocol(self, requests: list[str], subsets: Mapping[str, Sequence[int]]) -> dict[str, float]:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        writer = threading.Thread(target=_write_lines, args=(stdin, requests), daemon=True)
        writer.start()  # no round trip per segment: those are slow on a loaded machine
        stats = [_read_line(stdout) for _ in requests]
        writer.join()
        scores = {}
        for name, indices in subsets.items():
            _write_lines(stdin, ["EVAL ||| " + " ||| ".join(stats[index] for index in indices)])
            for _ in indices:
                float(_read_line(stdout))  # the segment scores
            scores[name] = float(_read_line(stdout))
        return scores


def meteor(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> float:
    """Corpus METEOR 1.5 (English, normalized) of `hypotheses` against their reference lists."""
    with MeteorProcess() as process:
        return process.score(references, hypotheses)["all"]


def _write_lines(stream: IO[bytes], lines: list[str]) -> None:
    try:
        stream.write("".join(line + "\n" for line in lines).encode("utf-8"))
        stream.flush()
    except BrokenPipeError:
        pass  # the reader sees the closed output and reports the failure


def _read_line(stream: IO[bytes]) -> str:
    line = stream.readline()
    if not line:
        raise ValueError("METEOR stopped answering")
    return line.decode("utf-8").strip()
