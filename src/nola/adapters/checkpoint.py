"""Adapter-only checkpoints: `adapter.safetensors` + `adapter_config.json`, loaded strictly.

The tensors are exactly `adapter_params(model)`: LoRA's A and B, NOLA's coefficients (optionally
bit-packed, see `quantize`), or every weight for full fine-tuning. NOLA's bases are never stored: the
JSON records the seed of every frozen matrix, the adapter config, the base architecture and the
base fingerprint (`nola.model.base_fingerprint`); loading refuses any mismatch with a NolaError.

The config is written after the weights and records their sha256 (`weights_sha256`), so a reader
can tell a directory whose files belong together from one caught half-way through a copy or a
replacement: such a directory (config without weights, unreadable JSON, truncated weights, weights
that are not the ones the config names) raises `IncompleteAdapter`, which a server treats as
"being written, retry" while the files are still changing.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import nn

from nola.adapters.config import LEGACY_NOLA_INIT, AdapterConfig, as_adapter_config
from nola.adapters.inject import (
    adapter_config_of,
    adapter_params,
    count_trainable,
    inject_adapters,
    is_merged,
    nola_seeds,
    nola_slots,
)
from nola.adapters.quantize import dequantize_vectors, packed_length, quantize_coefficients_, quantize_vectors
from nola.adapters.targets import check_saved_seeds, plan_layers
from nola.fileio import atomic_path, read_bytes, sha256_file, write_text_atomic
from nola.errors import NolaError
from nola.model import GPT2
from nola.model import base_fingerprint as fingerprint_of

WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"
FORMAT = "nola-adapter"
FORMAT_VERSION = 1
QUANTIZED_PREFIX = "nola_coefficients"  # quantized files: <prefix>.packed/.min/.step, vectors in adapter_params order


class IncompleteAdapter(NolaError):
    """An adapter directory whose files are missing, unreadable or do not belong together: it is
    corrupt, or still being written (a copy or replacement caught half-way)."""


ARCHITECTURE_FIELDS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
# safetensors writes tensors by dtype (this order), then by name; see `safetensors_file_bytes`.
SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.uint8: "U8",
}


def adapter_tensors(model: nn.Module, quant_bits: int | None = None) -> dict[str, torch.Tensor]:
    """What the adapter file holds, by name: `adapter_params`, or NOLA coefficients bit-packed."""
    params = adapter_params(model)
    if quant_bits is None:
        return {name: param.detach() for name, param in params.items()}
    if adapter_config_of(model).kind != "nola":
        raise NolaError("only NOLA coefficients can be stored quantized (adapter.quant_bits)")
    stored = quantize_vectors(list(params.values()), quant_bits)
    return {f"{QUANTIZED_PREFIX}.{part}": value for part, value in stored.items()}


def quantize_adapter_(model: nn.Module, bits: int) -> None:
    """Round NOLA's coefficients to `bits`-bit levels in place (what a quantized file restores)."""
    if adapter_config_of(model).kind != "nola":
        raise NolaError("only NOLA coefficients can be quantized")
    quantize_coefficients_(adapter_params(model), bits)


def save_adapter(
    model: nn.Module,
    directory: str | Path,
    *,
    base_fingerprint: str,
    model_name: str,
    extra: dict[str, Any] | None = None,
    quantize: bool = True,
) -> Path:
    """Write `adapter.safetensors` and `adapter_config.json` into `directory` (each atomically).

    `base_fingerprint` is that of the base the adapter was trained on (taken before training).
    NOLA coefficients are stored with `adapter.quant_bits` bits when it is set and `quantize` is True.
    """
    config = adapter_config_of(model)
    bits = config.quant_bits if quantize else None
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.to("cpu").contiguous() for name, tensor in adapter_tensors(model, bits).items()}
    document = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model_name": model_name,
        "architecture": {key: getattr(model.config, key) for key in ARCHITECTURE_FIELDS},
        "base_fingerprint": base_fingerprint,
        "adapter": config.to_dict(),
        "coefficient_bits": bits,
        "trainable_params": count_trainable(model),
        "seeds": nola_seeds(model),
        "extra": extra or {},
    }
    try:
        json.dumps(document)
    except TypeError as err:  # before any file is written
        raise NolaError(f"save_adapter: `extra` must hold JSON values only ({err})") from None
    with atomic_path(directory / WEIGHTS_FILE) as path:
        save_file(tensors, str(path))
        document["weights_sha256"] = sha256_file(path)
    write_text_atomic(directory / CONFIG_FILE, json.dumps(document, indent=1) + "\n")  # last: a config names complete weights only
    return directory


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """The parsed `adapter_config.json` of a saved adapter (checked to be one of ours)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise IncompleteAdapter(f"{path} not found; expected a directory written by nola.adapters.save_adapter")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise IncompleteAdapter(f"{path}: not valid JSON ({err}); the file is corrupt or still being written") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise NolaError(f"{path}: not a NOLA adapter config (format != {FORMAT!r})")
    if document.get("version") != FORMAT_VERSION:
        raise NolaError(f"{path}: adapter format version {document.get('version')} is not supported (expected {FORMAT_VERSION})")
    for key in ("architecture", "base_fingerprint", "adapter", "coefficient_bits", "seeds"):
        if key not in document:
            raise NolaError(f"{path}: missing key {key!r}")
    return document


def load_adapter(model: GPT2, directory: str | Path) -> AdapterConfig:
    """Load a saved adapter into `model` (injecting it first if the model has none); strict.

    Refuses: another architecture or base weights (fingerprint), a different adapter structure,
    missing/unexpected tensors, wrong shapes (e.g. a coefficient vector of the wrong length).
    """
    directory = Path(directory)
    if is_merged(model):
        raise NolaError("the model's adapters are merged; unmerge_adapters(model) before loading an adapter")
    document, config = open_adapter(directory, model.config, fingerprint_of(model))
    config_path = directory / CONFIG_FILE
    current = model.adapter_config
    if current is None or current.kind == "none":  # a bare base takes the saved adapter's configuration
        inject_adapters(model, config)
    elif current.kind == config.kind == "nola" and current.init != config.init:
        raise NolaError(
            f"{config_path}: this NOLA adapter was trained with adapter.init={config.init} (files written before "
            f"the init setting existed are {LEGACY_NOLA_INIT}), the model is built with adapter.init={current.init}; "
            f"rerun with adapter.init={config.init}"
        )
    elif not current.same_structure(config):
        raise NolaError(f"{config_path}: adapter config {config.to_dict()} differs from the model's {current.to_dict()}")
    _apply_seeds(model, document["seeds"], config_path)
    _copy_tensors(model, directory / WEIGHTS_FILE, document)
    return config


def open_adapter(directory: str | Path, architecture, fingerprint: str) -> tuple[dict[str, Any], AdapterConfig]:
    """adapter_config.json of `directory` and its AdapterConfig, checked against a base with this
    architecture (a GPT2Config) and fingerprint; a mismatch is a NolaError naming the file."""
    directory = Path(directory)
    document = read_adapter_config(directory)
    config_path = directory / CONFIG_FILE
    for key in ARCHITECTURE_FIELDS:
        saved, have = document["architecture"].get(key), getattr(architecture, key)
        if saved != have:
            raise NolaError(f"{config_path}: adapter is for a base with {key}={saved}, this model has {key}={have}")
    if document["base_fingerprint"] != fingerprint:
        raise NolaError(
            f"{config_path}: adapter was trained on base {document['base_fingerprint']} "
            f"({document.get('model_name')}), this model's base is {fingerprint}; load the matching base weights"
        )
    return document, _saved_config(document, config_path)


def _saved_config(document: dict, config_path: Path) -> AdapterConfig:
    """The saved adapter config; a NOLA file without `init` predates that setting and is `paper`."""
    saved = dict(document["adapter"]) if isinstance(document["adapter"], dict) else document["adapter"]
    if isinstance(saved, dict) and saved.get("kind") == "nola" and "init" not in saved:
        saved["init"] = LEGACY_NOLA_INIT
    try:
        return as_adapter_config(saved)
    except NolaError as err:
        raise NolaError(f"{config_path}: {err}") from None
    except TypeError as err:
        raise NolaError(f"{config_path}: invalid adapter config ({err})") from None


def _apply_seeds(model: nn.Module, saved: object, config_path: Path) -> None:
    config = adapter_config_of(model)
    seeds = check_saved_seeds(saved, plan_layers(model, config), config, str(config_path))
    for name, slot in nola_slots(model).items():
        slot.set_seeds(seeds[name])


def _copy_tensors(model: nn.Module, path: Path, document: dict[str, Any]) -> None:
    params = adapter_params(model)
    values = read_adapter_tensors({name: (param.dtype, tuple(param.shape)) for name, param in params.items()},
                                  path, document)
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(values[name])


TensorSpecs = dict[str, tuple[torch.dtype, tuple[int, ...]]]


def stored_specs(trainable: TensorSpecs, bits: int | None) -> TensorSpecs:
    """(dtype, shape) of every tensor the adapter file holds for trainable tensors of these (dtype,
    shape) (in `adapter_params` order): themselves, or with `bits` the three tensors of
    `quantize_vectors` (bit-packed levels, one min and one step per vector). What `adapter_tensors` writes."""
    if bits is None:
        return dict(trainable)
    counts = [math.prod(shape) for _, shape in trainable.values()]
    return {f"{QUANTIZED_PREFIX}.packed": (torch.uint8, (sum(packed_length(count, bits) for count in counts),)),
            f"{QUANTIZED_PREFIX}.min": (torch.float32, (len(counts),)),
            f"{QUANTIZED_PREFIX}.step": (torch.float32, (len(counts),))}


def read_adapter_tensors(trainable: TensorSpecs, path: Path, document: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The stored values of the trainable tensors `trainable` names (in `adapter_params` order), shaped
    like them (dequantized when the config `document` says the file holds bit-packed NOLA
    coefficients); strict about names, shapes and finite values, and about the file being the one the
    config's `weights_sha256` names (files written before that field existed are read without it).
    Their (dtype, shape) come from the adapter's schema (`nola.adapters.targets`) or a model's parameters."""
    bits = document["coefficient_bits"]
    data = read_bytes(path, missing=IncompleteAdapter, hint="not found; the adapter directory is incomplete")
    try:
        stored = load_safetensors(data)
    except SafetensorError as err:
        raise IncompleteAdapter(f"{path}: cannot read the adapter weights, the file is corrupt or truncated ({err})") from None
    want_sha256 = document.get("weights_sha256")
    if want_sha256 is not None and hashlib.sha256(data).hexdigest() != want_sha256:
        raise IncompleteAdapter(f"{path} is not the file its {CONFIG_FILE} names (weights_sha256 differs): "
                                "the adapter is being replaced or was copied in part")
    expected = stored_specs(trainable, bits)
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing:
        raise NolaError(
            f"{path}: missing tensor {missing[0]!r} ({len(missing)} missing); was it saved with another adapter config?"
        )
    if unexpected:
        raise NolaError(f"{path}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected)")
    for name, (dtype, shape) in expected.items():
        # a float file may hold another float dtype (cast on copy); packed files hold exactly theirs
        wrong_dtype = stored[name].dtype != dtype if bits is not None else not stored[name].is_floating_point()
        if tuple(stored[name].shape) != shape or wrong_dtype:
            raise NolaError(
                f"{path}: tensor {name!r} is {stored[name].dtype} {tuple(stored[name].shape)}; this model needs "
                f"{dtype} {shape} (a coefficient vector of the wrong length, or another config)"
            )
    if bits is None:
        values = [stored[name] for name in trainable]
    else:
        parts = {key.removeprefix(QUANTIZED_PREFIX + "."): value for key, value in stored.items()}
        values = dequantize_vectors(parts, bits, [math.prod(shape) for _, shape in trainable.values()])
    for name, value in zip(trainable, values):
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise NolaError(f"{path}: tensor {name!r} holds NaN or infinite values; the adapter is corrupt")
    return {name: value.reshape(shape) for (name, (_, shape)), value in zip(trainable.items(), values)}


def adapter_files_signature(directory: str | Path) -> tuple | None:
    """(inode, mtime_ns, size) of the config and of the weights file (None for a missing one): what
    changes when an adapter directory is written; None when the directory holds neither."""
    directory = Path(directory)
    found = []
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            stat = (directory / name).stat()
            found.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
        except OSError:
            found.append(None)
    return None if found == [None, None] else tuple(found)


def adapter_digest(directory: str | Path) -> str:
    """A short sha256 of an adapter's config and weights bytes: the name of this version of it."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            digest.update((directory / name).read_bytes())
        except FileNotFoundError:
            raise IncompleteAdapter(f"{directory / name} not found; the adapter directory is incomplete") from None
    return digest.hexdigest()[:16]


def safetensors_file_bytes(specs: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> int:
    """The exact size of the safetensors file `save_file` writes for these (dtype, shape) tensors.

    Layout: u64 header length, a compact JSON header (tensors ordered by dtype then name, with byte
    offsets) padded with spaces to a multiple of 8, then the raw data. Checked against real files in
    tests/test_params.py.
    """
    order = list(SAFETENSORS_DTYPES)
    header: dict[str, Any] = {}
    offset = 0
    for name, (dtype, shape) in sorted(specs.items(), key=lambda item: (order.index(item[1][0]), item[0])):
        size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"))
    return len(struct.pack("<Q", 0)) + (len(text) + 7) // 8 * 8 + offset


def adapter_file_bytes(model: nn.Module, quant_bits: int | None = None) -> int:
    """Size of the `adapter.safetensors` that save_adapter writes for `model`; works on the meta device."""
    trainable = {name: (param.dtype, tuple(param.shape)) for name, param in adapter_params(model).items()}
    return safetensors_file_bytes(stored_specs(trainable, quant_bits))
