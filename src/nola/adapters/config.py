"""Schema of the Hydra `adapter` group (conf/adapter/*.yaml): what is adapted and how.

Hyper-parameters follow the papers' GPT-2 scripts:
- LoRA (Hu et al., ICLR 2022, §4 and microsoft/LoRA `examples/NLG` E2E commands): the q and v
  slices of the fused `c_attn`, rank 4, α = 32, dropout 0.1 on the adapter input; ΔW = (α/r)·B·A.
- NOLA (Koohpayegani et al., ICLR 2024, §3 and `gpt/scripts/finetune_gpt2*_e2e_qv_nola.sh`): the
  same ΔW with A = A0 + Σᵢ αᵢAᵢ and B = Σⱼ βⱼBⱼ over frozen random bases; GPT-2 M: rank 8, α 8,
  512 bases for A and for B; GPT-2 L: 256 bases, α 2. The paper's MLP variant adapts `mlp.c_fc` and
  `mlp.c_proj` too (`modules`).

NOLA's initialisation (`init`):
- `reference`, what UCDvision/NOLA `gpt/examples/NLG/src/model_nola.py` actually runs and the
  paper's numbers come from: `GPT2LMModel.__init__` applies `_init_weights` after the adapters are
  built and `NOLALinear` subclasses `nn.Linear`, so the frozen offsets A0 and B0 are N(0, 0.02)
  (B = B0 + Σⱼ βⱼBⱼ, ΔW ≠ 0 at the start); the block is built once and deep-copied for every layer,
  so every layer uses the same bases (one set each for q-A, q-B, v-A, v-B). Here A0 and B0 are
  drawn per layer from recorded seeds, and the shared bases are held once in memory.
- `paper`, the method as the paper and its README write it: A0 = LoRA's kaiming-uniform init,
  B0 = 0 (ΔW = 0 at the start), bases drawn per layer. Adapters saved before `init` existed are
  `paper` adapters.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

from nola.errors import NolaError

KINDS = ("none", "lora", "nola", "full")
NOLA_INITS = ("reference", "paper")
LEGACY_NOLA_INIT = "paper"  # what an adapter file without an `init` key was trained with
QKV_SLOTS = ("q", "k", "v")  # row blocks of GPT-2's fused c_attn: [0:d] q, [d:2d] k, [2d:3d] v
MODULE_PATHS = {  # config name -> path inside a transformer block
    "c_attn": "attn.c_attn",
    "attn.c_proj": "attn.c_proj",
    "mlp.c_fc": "mlp.c_fc",
    "mlp.c_proj": "mlp.c_proj",
}
# Fields that change what the adapter tensors are; the rest (dropout, caching, quantization) do not,
# nor does base_seed: it seeds a new adapter's init and bases, and a saved adapter brings its own seeds.
STRUCTURAL_FIELDS = ("kind", "rank", "alpha", "targets", "modules", "num_basis_a", "num_basis_b", "init")


@dataclass
class AdapterConfig:
    """Adapter hyper-parameters (one Hydra node).

    kind: none (frozen base), lora, nola, or full (every weight trains).
    rank, alpha: ΔW = (alpha / rank)·B·A (LoRA §4.1; NOLA §3 keeps the same scaling).
    dropout: dropout on the adapter's input (LoRA's GPT-2 scripts: 0.1; NOLA's: none).
    targets: which of q, k, v of the fused `c_attn` get an adapter (an enable mask).
    modules: which projections are adapted: c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj.
    num_basis_a, num_basis_b: NOLA's k bases for A and l bases for B (k + l trainable per matrix).
    base_seed: the seed every NOLA basis (and LoRA's A init) is derived from, with the module name.
    init: NOLA's frozen offsets and basis sharing, reference or paper (see the module docstring).
    cache_bases: keep NOLA's bases in memory (fast); False regenerates them in every forward and
        backward (saves (k + l)·r·d values per adapted matrix).
    quant_bits: store NOLA coefficients as quant_bits-bit integers (NOLA §4, Table 4); None = float.
    """

    kind: str = "none"
    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q", "v"])
    modules: list[str] = field(default_factory=lambda: ["c_attn"])
    num_basis_a: int = 512
    num_basis_b: int = 512
    base_seed: int = 0
    init: str = "reference"
    cache_bases: bool = True
    quant_bits: Optional[int] = None

    def __post_init__(self) -> None:
        self.targets = list(self.targets)
        self.modules = list(self.modules)
        self.validate()

    def validate(self) -> None:
        """Raise NolaError naming the offending `adapter.<key>` and what is allowed."""
        if self.kind not in KINDS:
            raise NolaError(f"adapter.kind={self.kind!r} is unknown; use one of {', '.join(KINDS)}")
        if self.kind not in ("lora", "nola"):
            return
        if self.rank < 1:
            raise NolaError(f"adapter.rank={self.rank}: the rank must be at least 1")
        if self.alpha <= 0:
            raise NolaError(f"adapter.alpha={self.alpha}: alpha must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise NolaError(f"adapter.dropout={self.dropout}: use a probability in [0, 1)")
        if not self.modules:
            raise NolaError("adapter.modules is empty; adapt at least one of " + ", ".join(MODULE_PATHS))
        for module in self.modules:
            if module not in MODULE_PATHS:
                raise NolaError(f"adapter.modules: unknown target module {module!r}; known: {', '.join(MODULE_PATHS)}")
        if len(set(self.modules)) != len(self.modules):
            raise NolaError(f"adapter.modules={self.modules} lists a module twice")
        if "c_attn" in self.modules:
            unknown = [t for t in self.targets if t not in QKV_SLOTS]
            if unknown or not self.targets:
                raise NolaError(f"adapter.targets={self.targets}: use a non-empty subset of q, k, v for c_attn")
            if len(set(self.targets)) != len(self.targets):
                raise NolaError(f"adapter.targets={self.targets} lists a slot twice")
        if self.kind == "nola":
            if self.init not in NOLA_INITS:
                raise NolaError(f"adapter.init={self.init!r} is unknown; use one of {', '.join(NOLA_INITS)}")
            for key in ("num_basis_a", "num_basis_b"):
                if getattr(self, key) < 1:
                    raise NolaError(f"adapter.{key}={getattr(self, key)}: NOLA needs at least one basis")
        if self.quant_bits is not None:
            if self.kind != "nola":
                raise NolaError("adapter.quant_bits applies to NOLA coefficients only; set it to null for " + self.kind)
            if not 2 <= self.quant_bits <= 8:
                raise NolaError(f"adapter.quant_bits={self.quant_bits}: use 2..8 bits or null")
        if not 0 <= self.base_seed < 2**63:
            raise NolaError(f"adapter.base_seed={self.base_seed}: use a non-negative 63-bit integer")

    @property
    def scale(self) -> float:
        """LoRA's α/r scaling of ΔW (Hu et al., 2022, §4.1)."""
        return self.alpha / self.rank

    def slots(self, module: str) -> list[str]:
        """The adapted row blocks of one module: q/k/v for c_attn, the single block "w" otherwise."""
        return [t for t in QKV_SLOTS if t in self.targets] if module == "c_attn" else ["w"]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def same_structure(self, other: AdapterConfig) -> bool:
        """True when both configs define the same adapter tensors and the same function (`init`
        matters for NOLA only)."""
        keys = [key for key in STRUCTURAL_FIELDS if key != "init" or self.kind == "nola"]
        return all(getattr(self, key) == getattr(other, key) for key in keys)


def as_adapter_config(config: Any) -> AdapterConfig:
    """An AdapterConfig from itself, a Hydra DictConfig (the `adapter` node) or a plain mapping."""
    if isinstance(config, AdapterConfig):
        return config
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(config, DictConfig):
            config = OmegaConf.to_container(config, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra, a dependency
        pass
    if not isinstance(config, dict):
        raise NolaError(f"adapter config must be a mapping, got {type(config).__name__}")
    known = {f.name for f in fields(AdapterConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise NolaError(f"adapter config: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    return AdapterConfig(**config)
