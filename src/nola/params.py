"""Trainable parameters and adapter file size of a configuration, without allocating any weights.

    python -m nola.params model=gpt2-medium adapter=nola [adapter.num_basis_a=1024 ...]

prints one JSON line {"trainable": N, "adapter_file_bytes": B}. The model is built on PyTorch's
`meta` device (shapes only) and adapted exactly as training adapts it; N counts `adapter_params`
and B is the exact size of the `adapter.safetensors` that `save_adapter` would write for it
(quantized when `adapter.quant_bits` is set). Paper rows: GPT-2 M LoRA r=4 on q,v 393,216
(Hu et al., 2022, Table 3); GPT-2 M NOLA rank 8, 512 bases 49,152; GPT-2 L 256 bases 36,864
(Koohpayegani et al., 2024, Table 1).
"""

from __future__ import annotations

import json
import sys

from nola.adapters.count import count_adapter
from nola.errors import exit_on_user_error

USAGE = "usage: python -m nola.params model=<name> adapter=<name> [hydra overrides, e.g. adapter.rank=4]"


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    overrides = sys.argv[1:] if argv is None else list(argv)
    if any(arg in ("-h", "--help") for arg in overrides):
        print(USAGE)
        return
    from nola.config import load_config

    cfg = load_config(overrides)
    print(json.dumps(count_adapter(cfg.model.name, cfg.adapter)))


if __name__ == "__main__":
    main()
