"""`make bench`'s `soak` section: the server for minutes while its adapters change under it.

The app (`nola.serve.app.create_app`) runs on 127.0.0.1 over the mini shapes with random weights
(tiny with `--quick`) and starts with `adapters` NOLA and LoRA adapters. For `duration_s` seconds,
`clients` client threads send completion requests (random adapter, prompt and `max_tokens`) while a
mutator changes the directory every `change_every_s` seconds, as operators do:
- add: a new adapter written under a dot-name (not served) and renamed into place;
- replace: a new version copied file by file over a served one (weights first, then config: the
  server sees the directory half-written and must keep serving the old version until it is whole);
- remove: a served adapter's directory deleted.
Two broken directories sit there throughout (truncated weights; an adapter for another base), and
a share of the requests asks for them or for removed adapters: the deliberate errors.

Measured: requests/s, p50/p99 latency, errors by kind (deliberate ones apart from any other),
the process's resident memory (server and clients share it) sampled every second, compared between
the first and the last minute. Afterwards every answer is checked against the library: the adapter
version its `system_fingerprint` names (a copy of every version written is kept) loaded into a
fresh base and the prompt decoded by `nola.decode.beam.search`.
"""

from __future__ import annotations

import copy
import random
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from nola.adapters import inject_adapters, load_adapter, save_adapter
from nola.adapters.checkpoint import CONFIG_FILE, WEIGHTS_FILE, adapter_digest
from nola.adapters.config import AdapterConfig
from nola.fileio import move_into_place
from nola.bench.serving import percentile, post, running_server, cannot_serve
from nola.decode.beam import search
from nola.decode.config import SearchSettings
from nola.decode.hypotheses import context_prompts, hypothesis_text
from nola.model import GPT2Config, base_fingerprint, init_gpt2

KINDS = {  # a fourth of the adapters LoRA, the rest NOLA on two basis seeds (shared and not)
    "nola": dict(kind="nola", rank=4, alpha=4.0, num_basis_a=64, num_basis_b=64, base_seed=0),
    "nola_b": dict(kind="nola", rank=4, alpha=4.0, num_basis_a=64, num_basis_b=64, base_seed=1),
    "lora": dict(kind="lora", rank=4, alpha=8.0, targets=["q", "v"], base_seed=0),
}
FOODS = ("Thai", "French", "Indian", "Italian", "Japanese", "English", "Chinese", "Fast food")
AREAS = ("riverside", "city centre")
BROKEN = ("broken-truncated", "broken-other-base")
DELIBERATE_SHARE = 0.06  # of requests asking for a broken or a removed adapter


def resident_bytes() -> int:
    """This process's resident set size (VmRSS), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmRSS in /proc/self/status")


class AdapterWriter:
    """Writes adapter versions with random weights and keeps a copy of each, by digest."""

    def __init__(self, base, live: Path, versions: Path, seed: int) -> None:
        self.live, self.versions = live, versions
        self.fingerprint = base_fingerprint(base)
        self.models = {}
        for kind, settings in KINDS.items():
            model = copy.deepcopy(base)
            inject_adapters(model, AdapterConfig(**settings))
            self.models[kind] = model
        self.generator = torch.Generator().manual_seed(seed)
        self.count = 0

    def stage(self, kind: str) -> Path:
        """A new version of a `kind` adapter in a dot-named directory (never served), copied to versions/."""
        model = self.models[kind]
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.copy_(torch.randn(param.shape, generator=self.generator) * 0.3)
        self.count += 1
        staging = save_adapter(model, self.live / f".staging-{self.count}", base_fingerprint=self.fingerprint,
                               model_name="soak")
        shutil.copytree(staging, self.versions / adapter_digest(staging))
        return staging


class Mutator(threading.Thread):
    """Adds, replaces and removes adapters every `every_s` seconds until `stop` is set."""

    def __init__(self, writer: AdapterWriter, names: dict[str, str], every_s: float, floor: int,
                 stop: threading.Event, seed: int) -> None:
        super().__init__(name="soak-mutator", daemon=True)
        self.writer, self.names, self.every_s, self.floor, self.stop = writer, names, every_s, floor, stop
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.removed: set[str] = set()
        self.counts = {"added": 0, "replaced": 0, "removed": 0}
        self.next_index = len(names)

    def live(self) -> list[str]:
        with self.lock:
            return sorted(self.names)

    def removed_names(self) -> list[str]:
        with self.lock:
            return sorted(self.removed)

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            roll = self.rng.random()
            if roll < 0.5:
                self.replace()
            elif roll < 0.75 or len(self.names) <= self.floor:
                self.add()
            else:
                self.remove()

    def add(self) -> None:
        kind = self.rng.choice(sorted(KINDS))
        name = f"adapter-{self.next_index:04d}"
        self.next_index += 1
        move_into_place(self.writer.stage(kind), self.writer.live / name)
        with self.lock:
            self.names[name] = kind
        self.counts["added"] += 1

    def replace(self) -> None:
        with self.lock:
            name = self.rng.choice(sorted(self.names))
            kind = self.names[name]
        staging = self.writer.stage(kind)
        for file in (WEIGHTS_FILE, CONFIG_FILE):  # as `cp` would: one file, then the other
            shutil.copyfile(staging / file, self.writer.live / name / file)
        shutil.rmtree(staging)
        self.counts["replaced"] += 1

    def remove(self) -> None:
        with self.lock:
            name = self.rng.choice(sorted(self.names))
            del self.names[name]
            self.removed.add(name)
        shutil.rmtree(self.writer.live / name)
        self.counts["removed"] += 1


def plant_broken(writer: AdapterWriter, base, seed: int) -> None:
    """The two broken directories: truncated weights, and an adapter of another base."""
    truncated = writer.stage("nola")
    data = (truncated / WEIGHTS_FILE).read_bytes()
    (truncated / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    move_into_place(truncated, writer.live / BROKEN[0])
    foreign = writer.live.parent / "foreign"
    foreign.mkdir()
    other = AdapterWriter(init_gpt2(base.config, seed + 1).eval(), foreign, writer.versions, seed + 1)
    move_into_place(other.stage("nola"), writer.live / BROKEN[1])


def verify(base, versions: Path, tokenizer, answers: list[dict], beam: int) -> dict:
    """Every answer against the library's decode of its prompt with the version it names."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for answer in answers:
        groups.setdefault((answer["fingerprint"], answer["max_tokens"]), []).append(answer)
    checked = mismatches = unknown = 0
    models: dict[str, torch.nn.Module] = {}
    for (digest, max_tokens), group in sorted(groups.items()):
        if not (versions / digest).is_dir():
            unknown += len(group)
            continue
        if digest not in models:
            models.clear()  # one version's model at a time
            models[digest] = copy.deepcopy(base)
            load_adapter(models[digest], versions / digest)
        prompts = context_prompts(tokenizer, [answer["prompt"] for answer in group])
        found = search(models[digest], prompts, SearchSettings(beam=beam, max_new_tokens=max_tokens),
                       batch_size=len(prompts))
        for answer, hypothesis in zip(group, found):
            checked += 1
            mismatches += hypothesis_text(tokenizer, hypothesis.tokens) != answer["text"]
    return {"checked": checked, "mismatches": mismatches, "unknown_versions": unknown}


def run(*, quick: bool = False, seed: int = 0, vocab_dir: str | Path = "data/vocab", duration_s: float | None = None,
        adapters: int = 20, clients: int | None = None, change_every_s: float | None = None,
        beam: int | None = None, repeats: int | None = None, warmup: int | None = None) -> dict:
    """The `soak` section (module docstring); `repeats`/`warmup` are not used (one timed run)."""
    missing = cannot_serve(vocab_dir)
    if missing:
        return {"skipped": missing}
    from nola.tokenizer import load_tokenizer

    duration_s = duration_s or (8.0 if quick else 180.0)
    clients = clients or (3 if quick else 8)
    change_every_s = change_every_s or (0.5 if quick else 1.5)
    beam = beam or (2 if quick else 4)
    lengths = (2, 4) if quick else (4, 8, 16)
    tokenizer = load_tokenizer(vocab_dir)
    base = init_gpt2(GPT2Config.named("tiny" if quick else "mini"), seed).eval().requires_grad_(False)
    with tempfile.TemporaryDirectory(prefix="nola-bench-soak-") as tmp:
        live, versions = Path(tmp) / "adapters", Path(tmp) / "versions"
        live.mkdir()
        writer = AdapterWriter(base, live, versions, seed)
        names = {}
        for index in range(adapters):
            kind = "lora" if index % 4 == 3 else ("nola", "nola_b")[index % 2]
            move_into_place(writer.stage(kind), live / f"adapter-{index:04d}")
            names[f"adapter-{index:04d}"] = kind
        plant_broken(writer, base, seed)
        stop = threading.Event()
        mutator = Mutator(writer, names, change_every_s, adapters, stop, seed)
        answers: list[dict] = []
        outcomes: list[tuple[str, int, str, float]] = []  # (name, status, error type, seconds)
        memory: list[tuple[float, int]] = []
        record = threading.Lock()

        def client(index: int) -> None:
            local = random.Random(seed * 1000 + index)
            while not stop.is_set():
                if local.random() < DELIBERATE_SHARE:
                    name = local.choice(list(BROKEN) + mutator.removed_names())
                else:
                    name = local.choice(mutator.live())
                prompt = (f"name : Place {local.randrange(10**4)} | food : {local.choice(FOODS)} | "
                          f"area : {local.choice(AREAS)}")
                max_tokens = local.choice(lengths)
                status, answer, seconds = post(port, {"model": name, "prompt": prompt, "max_tokens": max_tokens,
                                                      "beam": beam}, timeout=120)
                kind = answer.get("error", {}).get("type", "") if status != 200 else ""
                with record:
                    outcomes.append((name, status, kind, seconds))
                    if status == 200:
                        answers.append({"fingerprint": answer["system_fingerprint"], "prompt": prompt,
                                        "max_tokens": max_tokens, "text": answer["choices"][0]["text"]})

        with running_server(base, live, vocab_dir, max_batch=32, batch_window_ms=5.0, rescan_s=0.5) as (port, _):
            post(port, {"model": "adapter-0000", "prompt": "name : Warm", "max_tokens": 2, "beam": beam})
            threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
            started = time.monotonic()
            mutator.start()
            for thread in threads:
                thread.start()
            while (elapsed := time.monotonic() - started) < duration_s:
                memory.append((elapsed, resident_bytes()))
                time.sleep(min(1.0, duration_s - elapsed))
            stop.set()
            for thread in threads:
                thread.join(180)
            mutator.join(60)
            elapsed = time.monotonic() - started
            memory.append((elapsed, resident_bytes()))
        deliberate_names = set(BROKEN) | mutator.removed
        errors: dict[str, int] = {}
        unexpected: dict[str, int] = {}
        for name, status, kind, _ in outcomes:
            if status == 200:
                continue
            key = f"{status} {kind}".strip()
            target = errors if name in deliberate_names else unexpected
            target[key] = target.get(key, 0) + 1
        latencies = [seconds for _, status, _, seconds in outcomes if status == 200]
        window = min(60.0, duration_s / 3)
        first = max(value for at, value in memory if at <= window)
        last = max(value for at, value in memory if at >= elapsed - window)
        checks = verify(base, versions, tokenizer, answers, beam)
        versions_written = writer.count
    return {
        "model": f"{'tiny' if quick else 'mini'} shapes, random weights", "threads": torch.get_num_threads(),
        "duration_s": elapsed, "clients": clients, "beam": beam, "max_tokens": list(lengths),
        "adapters_at_start": adapters, "adapters_at_end": len(mutator.live()), "changes": mutator.counts,
        "versions_written": versions_written,
        "requests": len(outcomes), "answered": len(latencies), "requests_per_s": len(outcomes) / elapsed,
        "p50_s": statistics.median(latencies), "p99_s": percentile(latencies, 0.99),
        "deliberate_errors": errors, "unexpected_errors": unexpected,
        "rss_window_s": window, "rss_first_bytes": first, "rss_last_bytes": last, "rss_growth": last / first - 1,
        "verified": checks,
    }
