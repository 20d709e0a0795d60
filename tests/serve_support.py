"""Shared by the server tests: a `python -m nola.serve` process on a free port of 127.0.0.1, one
HTTP call, and /metrics read with the Prometheus client's own parser."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bank_support import merged_model
from train_support import subprocess_env

from nola.decode.beam import search
from nola.decode.config import SearchSettings
from nola.decode.hypotheses import context_prompts, hypothesis_text


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call(port: int, path: str, body: dict | bytes | None = None, timeout: float = 120.0,
         key: str | None = None, seen_headers: dict | None = None) -> tuple[int, dict]:
    """(status, JSON answer) of one request; `seen_headers` (if given) receives the answer's headers (lower-case names)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if seen_headers is not None:
                seen_headers.update((k.lower(), v) for k, v in response.headers.items())
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        if seen_headers is not None:
            seen_headers.update((k.lower(), v) for k, v in err.headers.items())
        return err.code, json.loads(err.read())


class Server:
    def __init__(self, root: Path, vocab_dir: Path, adapters_dir: Path, *extra: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.log = (root / f"server-{self.port}.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nola.serve", "model=tiny", "model.source=random", f"paths.vocab_dir={vocab_dir}",
             f"paths.runs_dir={root / 'runs'}", f"serve.adapters_dir={adapters_dir}", f"serve.port={self.port}",
             "train.device=cpu", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env={**subprocess_env(), **(env or {})})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {(root / f'server-{self.port}.log').read_text()}")
            try:
                if call(self.port, "/health", timeout=2)[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("server did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)
        self.log.close()


def metric_values(port: int, key: str | None = None) -> dict[tuple[str, tuple], float]:
    """/metrics parsed by the Prometheus client's own text parser: (sample name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers),
                                timeout=30) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}




def library_text(base, directory: Path | None, tokenizer, context: str, **settings) -> str:
    """The plain single-adapter path: the adapter of `directory` (None: the base alone) merged into a
    fresh base, the context decoded alone, the tokens turned into text as nola.decode does."""
    [prompt] = context_prompts(tokenizer, [context])
    [found] = search(merged_model(base, directory), [prompt], SearchSettings(**settings), batch_size=1)
    return hypothesis_text(tokenizer, found.tokens)
