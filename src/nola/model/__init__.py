"""GPT-2: the architecture (`gpt2`), checkpoint loading (`loading`) and hub downloads (`hub`)."""

from nola.model.gpt2 import GPT2, NAMED_CONFIGS, GPT2Config, KVCache, hf_config_dict, init_gpt2
from nola.model.loading import base_fingerprint, load_gpt2, to_hf_state_dict

__all__ = [
    "GPT2",
    "GPT2Config",
    "KVCache",
    "NAMED_CONFIGS",
    "base_fingerprint",
    "hf_config_dict",
    "init_gpt2",
    "load_gpt2",
    "to_hf_state_dict",
]
