"""Java helpers for the two jars the official scorers run: METEOR 1.5 and the Stanford PTB tokenizer.

Both jars come with the PyPI wheel `pycocoevalcap==1.2` (the same files, byte for byte, that
tuetschek/e2e-metrics commits: meteor-1.5.jar, data/paraphrase-en.gz, stanford-corenlp-3.4.1.jar).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from nola.errors import NolaError

INSTALL_JAVA = "install a Java runtime (e.g. `apt-get install default-jre-headless`) and put `java` on PATH"
METEOR_JAR = ("meteor", "meteor-1.5.jar")
METEOR_PARAPHRASES = ("meteor", "data", "paraphrase-en.gz")
CORENLP_JAR = ("tokenizer", "stanford-corenlp-3.4.1.jar")


def java_executable() -> str:
    """The `java` on PATH, or a NolaError saying how to install one."""
    java = shutil.which("java")
    if java is None:
        raise NolaError(f"`java` not found: METEOR and the PTB tokenizer are Java programs; {INSTALL_JAVA}")
    return java


def pycocoevalcap_file(*parts: str) -> Path:
    """A file shipped inside the installed pycocoevalcap package (e.g. its METEOR jar)."""
    spec = importlib.util.find_spec("pycocoevalcap")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location, *parts)
        if path.is_file():
            return path
    raise NolaError(f"{'/'.join(parts)} not found in the pycocoevalcap package; run `pip install pycocoevalcap==1.2`")


def describe_failure(what: str, returncode: int | None, stderr: str) -> NolaError:
    """A one-line error for a jar that failed, with the last line it printed to stderr."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    detail = f": {lines[-1][:200]}" if lines else ""
    return NolaError(f"{what} failed (exit status {returncode}){detail}; check the Java runtime ({INSTALL_JAVA})")
