"""`make bench`'s `serving` section: what the server's batching does with what clients really send.

The served app (`nola.serve.app.create_app`) runs in a uvicorn thread on a free port of 127.0.0.1
over the mini shapes with random weights and a few NOLA adapters; clients are threads speaking
HTTP, as the official `openai` client does.
- varied max_tokens: 12 requests that differ only in `max_tokens` (8 to 52), sent at once,
  against the same 12 sent one after another. Goal: concurrent ≤ 0.5× the sequential time.
- mixed lengths: `clients` clients each send short (`max_tokens` 4) and long (48) requests in
  turn; the latency of the short ones with queued prompts joining the running search between
  steps (`serve.join_running=true`) and without (they wait for the running batch to end).
"""

from __future__ import annotations

import copy
import json
import random
import socket
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch

from nola.bench.random_adapters import mini_base_with_adapters
from nola.model import base_fingerprint

SHORT_TOKENS, LONG_TOKENS = 4, 48


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cannot_serve(vocab_dir: str | Path) -> str | None:
    """Why the server benches cannot run here (the serve extra is not installed, or there is no
    GPT-2 vocabulary: their prompts are text), or None."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        return f"{err.name} is not installed (pip install -e '.[serve]')"
    if not (Path(vocab_dir) / "encoder.json").is_file():
        return f"no GPT-2 vocabulary at {vocab_dir} (make data)"
    return None


@contextmanager
def running_server(base, adapters_dir: Path, vocab_dir: str | Path, **serve_settings) -> Iterator[tuple[int, object]]:
    """(port, app): the app over a copy of `base` and the adapters of `adapters_dir`, served on
    127.0.0.1 until the block ends."""
    import uvicorn

    from nola.adapters.bank import AdapterBank
    from nola.serve.app import create_app
    from nola.serve.catalog import AdapterCatalog
    from nola.serve.config import ServeConfig
    from nola.tokenizer import load_tokenizer

    model = copy.deepcopy(base)
    bank = AdapterBank(model, base_fingerprint(base))
    serve_cfg = ServeConfig(adapters_dir=str(adapters_dir), port=free_port(), **serve_settings)
    app = create_app(model, load_tokenizer(vocab_dir), bank, AdapterCatalog(bank, adapters_dir, serve_cfg.rescan_s),
                     serve_cfg)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=serve_cfg.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield serve_cfg.port, app
    finally:
        server.should_exit = True
        thread.join(60)


def post(port: int, body: dict, headers: dict | None = None, timeout: float = 300.0) -> tuple[int, dict, float]:
    """(status, answer, seconds) of one completion request."""
    started = time.perf_counter()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, answer = response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        status, answer = err.code, json.loads(err.read() or b"{}")
    except OSError as err:
        status, answer = 0, {"error": {"message": str(err)}}
    return status, answer, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def bench_varied_max_tokens(base, root: Path, names: list[str], vocab_dir, *, beam: int, quick: bool) -> dict:
    lengths = [4, 6, 8, 10] if quick else [8 + 4 * i for i in range(12)]
    rng = random.Random(1)
    rng.shuffle(lengths)
    bodies = [{"model": names[i % len(names)], "prompt": f"name : Place {i} | food : Thai | area : riverside",
               "max_tokens": tokens, "beam": beam} for i, tokens in enumerate(lengths)]
    with running_server(base, root, vocab_dir, max_batch=32, batch_window_ms=20.0) as (port, _):
        post(port, bodies[0])  # warm-up
        started = time.perf_counter()
        sequential = [post(port, body) for body in bodies]
        sequential_s = time.perf_counter() - started
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
            concurrent = list(pool.map(lambda body: post(port, body), bodies))
        concurrent_s = time.perf_counter() - started
    same = all(a[1]["choices"][0]["text"] == b[1]["choices"][0]["text"] for a, b in zip(sequential, concurrent)
               if a[0] == b[0] == 200)
    return {"requests": len(bodies), "max_tokens": lengths, "beam": beam, "sequential_s": sequential_s,
            "concurrent_s": concurrent_s, "concurrent_over_sequential": concurrent_s / sequential_s,
            "errors": sum(status != 200 for status, _, _ in sequential + concurrent), "same_answers": same}


def bench_mixed_lengths(base, root: Path, names: list[str], vocab_dir, *, beam: int, clients: int, rounds: int,
                        quick: bool) -> dict:
    long_tokens = 12 if quick else LONG_TOKENS
    out = {"clients": clients, "requests_per_client": 2 * rounds, "short_max_tokens": SHORT_TOKENS,
           "long_max_tokens": long_tokens, "beam": beam}
    for join in (True, False):
        with running_server(base, root, vocab_dir, max_batch=64, batch_window_ms=5.0, join_running=join) as (port, _):
            post(port, {"model": names[0], "prompt": "name : Warm", "max_tokens": 2, "beam": beam})

            def client(index: int) -> list[tuple[str, int, float]]:
                seen = []
                for turn in range(2 * rounds):
                    kind = "short" if (turn + index) % 2 == 0 else "long"
                    body = {"model": names[(index + turn) % len(names)], "max_tokens":
                            SHORT_TOKENS if kind == "short" else long_tokens, "beam": beam,
                            "prompt": f"name : Place {index}-{turn} | food : Thai"}
                    status, _, seconds = post(port, body)
                    seen.append((kind, status, seconds))
                return seen

            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=clients) as pool:
                seen = [row for rows in pool.map(client, range(clients)) for row in rows]
            elapsed = time.perf_counter() - started
        short = [seconds for kind, status, seconds in seen if kind == "short" and status == 200]
        long = [seconds for kind, status, seconds in seen if kind == "long" and status == 200]
        out["joining" if join else "static"] = {
            "short_p50_s": statistics.median(short), "short_p99_s": percentile(short, 0.99),
            "long_p50_s": statistics.median(long), "long_p99_s": percentile(long, 0.99),
            "requests_per_s": len(seen) / elapsed, "errors": sum(status != 200 for _, status, _ in seen)}
    out["short_p50_static_over_joining"] = out["static"]["short_p50_s"] / out["joining"]["short_p50_s"]
    return out


def run(*, quick: bool = False, seed: int = 0, vocab_dir: str | Path = "data/vocab", beam: int | None = None,
        repeats: int | None = None, warmup: int | None = None) -> dict:
    """The `serving` section (module docstring); `repeats`/`warmup` are not used (one timed pass each)."""
    missing = cannot_serve(vocab_dir)
    if missing:
        return {"skipped": missing}
    beam = beam or (2 if quick else 10)
    with tempfile.TemporaryDirectory(prefix="nola-bench-serving-") as tmp:
        base, names = mini_base_with_adapters(Path(tmp), 4, seed, quick)
        return {
            "model": f"{'tiny' if quick else 'mini'} shapes, random weights", "adapters": len(names),
            "threads": torch.get_num_threads(),
            "varied_max_tokens": bench_varied_max_tokens(base, Path(tmp), names, vocab_dir, beam=beam, quick=quick),
            "mixed_lengths": bench_mixed_lengths(base, Path(tmp), names, vocab_dir, beam=beam,
                                                 clients=2 if quick else 8, rounds=1 if quick else 3, quick=quick),
        }
