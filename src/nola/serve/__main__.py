"""`python -m nola.serve [hydra overrides]`: serve one base and every adapter of a directory.

    python -m nola.serve model=gpt2-medium serve.adapters_dir=runs/served serve.port=8000
    curl localhost:8000/v1/completions -d '{"model": "e2e", "prompt": "name : Zizzi | food : Thai"}'

Needs the `serve` extra (`pip install -e ".[serve]"`: FastAPI, uvicorn, prometheus-client). On a
network: `NOLA_API_KEY=... python -m nola.serve serve.host=0.0.0.0` (a non-loopback host without a
key is refused unless serve.allow_unauthenticated=true). A shell: the configuration is typed
once and `nola.serve.server.build_server` builds the base (as decoding builds it, on
`serve.device`: by default the training device), its adapter bank (every subdirectory of
`serve.adapters_dir` an adapter named after it) and the app. SIGTERM (or Ctrl-C) stops accepting connections, lets in-flight
requests finish (at most serve.drain_timeout_s), then exits. The API: `nola.serve.app`.
"""

from __future__ import annotations

import logging
import signal
import sys

import hydra
from omegaconf import DictConfig

from nola.allocator import keep_freed_memory
from nola.config import CONF_DIR, launch, typed_config
from nola.errors import exit_on_user_error
from nola.serve.server import build_server


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    import uvicorn

    keep_freed_memory()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app, serve_cfg = build_server(typed_config(cfg))
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
