"""`python -m nola.serve [hydra overrides]`: serve one base and every adapter of a directory.

    python -m nola.serve model=gpt2-medium serve.adapters_dir=runs/served serve.port=8000
    curl localhost:8000/v1/completions -d '{"model": "e2e", "prompt": "name : Zizzi | food : Thai"}'

Needs the `serve` extra (`pip install -e ".[serve]"`: FastAPI, uvicorn, prometheus-client). On a
network: `NOLA_API_KEY=... python -m nola.serve serve.host=0.0.0.0` (a non-loopback host without a
key is refused unless serve.allow_unauthenticated=true). The base is built as
decoding builds it (`model`, `paths`; `train.device`), with no adapter of its own; every
subdirectory of `serve.adapters_dir` is an adapter named after it, loaded into an
`nola.adapters.bank.AdapterBank`. SIGTERM (or Ctrl-C) stops accepting connections, lets in-flight
requests finish (at most serve.drain_timeout_s), then exits. The API: `nola.serve.app`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from nola.allocator import keep_freed_memory
from nola.config import CONF_DIR, launch, typed_config
from nola.errors import NolaError, exit_on_user_error


def build_server(cfg: DictConfig):
    """(app, serve config): the base, its adapter bank, the adapters directory and the app."""
    try:
        import uvicorn  # noqa: F401 - checked here so a missing extra is one clear line
        from nola.serve.app import create_app
        from nola.serve.catalog import AdapterCatalog
    except ImportError as err:
        raise NolaError(f"python -m nola.serve needs the serve extra ({err.name} is missing): "
                        'pip install -e ".[serve]"') from None
    from nola.adapters.bank import AdapterBank
    from nola.build import build_model
    from nola.serve.config import check_exposure, resolved_api_key
    from nola.training.distributed import pick_device

    typed = typed_config(cfg)
    serve_cfg = typed.serve
    api_key = resolved_api_key(serve_cfg, os.environ)
    check_exposure(serve_cfg, api_key)
    if serve_cfg.adapters_dir is not None and not Path(serve_cfg.adapters_dir).is_dir():
        raise NolaError(f"serve.adapters_dir={serve_cfg.adapters_dir}: no such directory; create it (adapters can "
                        "be added to it while the server runs)")
    base_cfg = OmegaConf.merge(cfg, {"adapter": {"kind": "none"}})
    device = pick_device(typed.train.device)
    built = build_model(base_cfg, for_training=False, device=device)
    bank = AdapterBank(built.model, built.base_fingerprint, cache_bytes=int(serve_cfg.cache_mb * 2**20))
    catalog = AdapterCatalog(bank, serve_cfg.adapters_dir, serve_cfg.rescan_s)
    return create_app(built.model, built.tokenizer, bank, catalog, serve_cfg, api_key), serve_cfg


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    import uvicorn

    keep_freed_memory()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app, serve_cfg = build_server(cfg)
    # uvicorn drains on SIGTERM, then re-raises the signal it caught: after a drain, exit with 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(app, host=serve_cfg.host, port=int(serve_cfg.port), log_level="info",
                timeout_graceful_shutdown=int(serve_cfg.drain_timeout_s) or None)


# A server is no run: it writes no run directory (.hydra snapshot, job log file); it logs to stdout.
# First on the command line, so the user's own hydra.* overrides still win.
NO_RUN_DIRECTORY = ("hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=stdout")

if __name__ == "__main__":
    sys.argv[1:1] = NO_RUN_DIRECTORY
    launch(main)
