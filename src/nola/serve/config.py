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
    api_key: the key every endpoint but /health asks for (`Authorization: Bearer <key>`); null: the
        NOLA_API_KEY environment variable, and without either no key is asked for. Never logged.
    allow_unauthenticated: serve a non-loopback host without a key (refused at start otherwise).
    max_body_bytes: the largest request body (413 above it).
    max_tokens_limit: the largest `max_tokens` a request may ask for.
    max_beam: the largest `beam` a request may ask for.
    request_timeout_s: a request not answered by then gets 504 and its prompts are dropped (0: no limit).
    log_prompts: put the prompt text in the access log (off: sizes only).
    device: where the base and the search run (`nola.runtime.pick_device`); by default the training device.
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
    api_key: Optional[str] = None
    allow_unauthenticated: bool = False
    max_body_bytes: int = 1_048_576
    max_tokens_limit: int = 512
    max_beam: int = 16
    request_timeout_s: float = 300.0
    log_prompts: bool = False
    device: str = "${train.device}"

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise NolaError(f"serve.port={self.port} must be a TCP port (0-65535)")
        for key in ("max_batch", "max_queue", "max_prompts_per_request", "max_body_bytes", "max_tokens_limit",
                    "max_beam"):
            if getattr(self, key) < 1:
                raise NolaError(f"serve.{key}={getattr(self, key)} must be at least 1")
        for key in ("batch_window_ms", "rescan_s", "cache_mb", "drain_timeout_s", "request_timeout_s"):
            if getattr(self, key) < 0:
                raise NolaError(f"serve.{key}={getattr(self, key)} must not be negative")


def resolved_api_key(serve_cfg: ServeConfig, environ) -> str | None:
    """serve.api_key, else NOLA_API_KEY from `environ`, else None (no key asked for)."""
    return serve_cfg.api_key or environ.get("NOLA_API_KEY") or None


def check_exposure(serve_cfg: ServeConfig, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without a key, unless serve.allow_unauthenticated says so."""
    import ipaddress

    host = serve_cfg.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and api_key is None and not serve_cfg.allow_unauthenticated:
        raise NolaError(f"serve.host={host} is reachable from other machines but no API key is set: set "
                        "serve.api_key or NOLA_API_KEY (clients send Authorization: Bearer <key>), or "
                        "serve.allow_unauthenticated=true if that is meant")
