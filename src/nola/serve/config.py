"""Schema of the Hydra `serve` group (conf/serve/default.yaml): `python -m nola.serve`'s settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from nola.errors import NolaError


@dataclass
class ServeConfig:
    """An OpenAI-compatible completions server over one base and many adapters (`nola.serve`).

    adapters_dir: each subdirectory holding an adapter_config.json is an adapter, named after the
        subdirectory; rescanned every `rescan_s` seconds and whenever a request names an unknown
        adapter, so adapters added at runtime are served without a restart (null: the base only).
    host, port: where to listen.
    batch_window_ms: how long the first queued prompt waits for others to join its batch.
    max_batch: prompts decoded together at most (each with its own adapter and search settings).
    join_running: queued prompts join the running search between steps (continuous batching);
        false: they wait until the running batch is done (static batching, for comparison).
    max_queue: prompts waiting at most; a request that would exceed it is answered 503.
    max_prompts_per_request: the longest `prompt` list one request may send.
    cache_mb: bound of the materialised adapter factors (LRU; coefficients always stay resident).
    drain_timeout_s: on SIGTERM, how long in-flight requests may take before the server exits anyway.
    """

    adapters_dir: Optional[str] = None
    host: str = "127.0.0.1"
    port: int = 8000
    batch_window_ms: float = 5.0
    max_batch: int = 32
    join_running: bool = True
    max_queue: int = 256
    max_prompts_per_request: int = 64
    rescan_s: float = 2.0
    cache_mb: float = 256.0
    drain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise NolaError(f"serve.port={self.port} must be a TCP port (0-65535)")
        for key in ("max_batch", "max_queue", "max_prompts_per_request"):
            if getattr(self, key) < 1:
                raise NolaError(f"serve.{key}={getattr(self, key)} must be at least 1")
        for key in ("batch_window_ms", "rescan_s", "cache_mb", "drain_timeout_s"):
            if getattr(self, key) < 0:
                raise NolaError(f"serve.{key}={getattr(self, key)} must not be negative")
