"""The server assembled from its typed configuration: `build_server(cfg)` → (app, serve settings).

The base is built as decoding builds it (`model`, `paths`; on `serve.device`), with no adapter of
its own (`nola.build.base_only`); every subdirectory of `serve.adapters_dir` is an adapter named
after it, loaded into an `nola.adapters.bank.AdapterBank` and kept current by
`nola.serve.catalog.AdapterCatalog`; the HTTP API is `nola.serve.app`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from nola.adapters.config import AdapterConfig
from nola.build import BaseDropout, base_only, build_model
from nola.errors import NolaError
from nola.model.config import ModelConfig
from nola.paths_config import PathsConfig
from nola.runtime import pick_device
from nola.serve.config import ServeConfig, check_exposure, resolved_api_key


class ServeSections(Protocol):
    """The typed sections the server reads (`nola.config.Config` has them all)."""

    serve: ServeConfig
    model: ModelConfig
    adapter: AdapterConfig
    paths: PathsConfig
    train: BaseDropout


def build_server(cfg: ServeSections) -> tuple[Any, ServeConfig]:
    """(app, serve config): the base, its adapter bank, the adapters directory and the app."""
    try:
        import uvicorn  # noqa: F401 - checked here so a missing extra is one clear line

        from nola.serve.app import create_app
        from nola.serve.catalog import AdapterCatalog
    except ImportError as err:
        raise NolaError(f"python -m nola.serve needs the serve extra ({err.name} is missing): "
                        'pip install -e ".[serve]"') from None
    from nola.adapters.bank import AdapterBank

    serve_cfg = cfg.serve
    api_key = resolved_api_key(serve_cfg, os.environ)
    check_exposure(serve_cfg, api_key)
    if serve_cfg.adapters_dir is not None and not Path(serve_cfg.adapters_dir).is_dir():
        raise NolaError(f"serve.adapters_dir={serve_cfg.adapters_dir}: no such directory; create it (adapters can "
                        "be added to it while the server runs)")
    device = pick_device(serve_cfg.device, key="serve.device")
    built = build_model(base_only(cfg), for_training=False, device=device)
    bank = AdapterBank(built.model, built.base_fingerprint, cache_bytes=int(serve_cfg.cache_mb * 2**20))
    catalog = AdapterCatalog(bank, serve_cfg.adapters_dir, serve_cfg.rescan_s)
    return create_app(built.model, built.tokenizer, bank, catalog, serve_cfg, api_key), serve_cfg
