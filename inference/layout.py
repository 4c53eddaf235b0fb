"""Q/K layouts: the order of a llama-style model's query and key rows, and so the order a LoRA
adapter's q_proj/k_proj outputs were trained in.

- `hf`: Hugging Face's (RoPE rotates each head's first half against its second half,
  `rope_traditional: false`). What transformers, PEFT, mlx-lm's checkpoints and
  `mlx_lm.fuse --export-gguf` expect.
- `interleaved`: llama.cpp's, as GGUF files store Q/K (each head's rows in adjacent pairs, RoPE on
  those pairs, `rope_traditional: true`). Converter 1 wrote the embedded model this way.

A model's layout is its config's `rope_traditional`. An adapter records the layout it was trained
for in adapter_config.json (`qk_layout`); one that does not predates the record and was trained
for its base model's layout then: the interleaved one when its `base_model` is the converter-1
folder of the model now served (see `inference.modelstore.first_conversion_name`), else the
model's own. Applied to a model of another layout, an adapter would answer garbage, so it is
refused; `migrated_files` rewrites it for the other layout.

The layouts differ by a permutation P of Q/K's output rows inside each head: W' = P·W. With
mlx-lm's LoRA (y = x·Wᵀ + s·(x·A)·B, A of shape (in, r), B of shape (r, out)) the migrated adapter
is B' = B·Pᵀ (B's columns in the new row order) and A unchanged: the same function, to float
rounding. The row order moves whole rows, so it applies to packed quantized weights as well.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .adapters import CONFIG_FILE, VERSION_FILE, WEIGHTS_FILE, Adapter, AdapterError
from .gguf import qk_row_order
from .modelstore import first_conversion_name

HF, INTERLEAVED = "hf", "interleaved"
LAYOUTS = {
    HF: "Hugging Face's Q/K layout",
    INTERLEAVED: "llama.cpp's interleaved Q/K layout (GGUF order, rope_traditional)",
}
LAYOUT_KEY = "qk_layout"  # in adapter_config.json
# The LoRA tensors whose output columns follow Q/K's rows, and the config keys of their head count.
_PERMUTED = {
    "self_attn.q_proj.lora_b": ("num_attention_heads",),
    "self_attn.k_proj.lora_b": ("num_key_value_heads", "num_attention_heads"),
}
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}
_UNSIGNED = {8: np.uint64, 4: np.uint32, 2: np.uint16}


def layout_of(config: dict) -> str:
    """A model's Q/K layout, from its config.json."""
    return INTERLEAVED if config.get("rope_traditional") else HF


@dataclass(frozen=True)
class ModelLayout:
    """What an adapter must have been trained for to be applied to a model."""

    model: str  # the model folder's name (or hub id)
    qk_layout: str
    config: dict

    @classmethod
    def of_folder(cls, folder: Path, name: str | None = None) -> ModelLayout:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        return cls(name or Path(folder).name, layout_of(config), config)

    def trained_for(self, adapter: Adapter) -> str:
        """The layout `adapter` was trained for (its record, else what it was before records)."""
        if adapter.qk_layout:
            if adapter.qk_layout not in LAYOUTS:
                raise AdapterError(f"adapter {adapter.path}: unknown {LAYOUT_KEY} {adapter.qk_layout!r}")
            return adapter.qk_layout
        if adapter.base_model and adapter.base_model == first_conversion_name(self.model):
            return INTERLEAVED
        return self.qk_layout

    def needs_migration(self, adapter: Adapter) -> bool:
        """Trained on this model in its other layout (so `migrated_files` makes it fit)."""
        same_model = adapter.base_model is not None and adapter.base_model in (
            self.model,
            first_conversion_name(self.model),
        )
        return same_model and self.trained_for(adapter) != self.qk_layout

    def check(self, adapter: Adapter) -> None:
        """Refuse an adapter trained for another layout: it would answer garbage."""
        trained = self.trained_for(adapter)
        if trained == self.qk_layout:
            return
        if not self.needs_migration(adapter):
            fix = f"it was trained on {adapter.base_model or 'another model'}: use an adapter trained on this one"
        elif (adapter.path / VERSION_FILE).is_file():
            fix = "migrate it: python -m training migrate"
        else:
            fix = f"migrate it: python -m training migrate --adapter {adapter.path}"
        raise AdapterError(
            f"adapter {adapter.version} was trained for {LAYOUTS[trained]}, the base model {self.model} "
            f"has {LAYOUTS[self.qk_layout]}: refused (it would answer garbage); {fix}"
        )


def migrated_files(adapter: Adapter, layout: ModelLayout) -> dict[str, bytes]:
    """The adapter's two files rewritten for `layout`'s model: the q_proj/k_proj lora_b columns in
    its row order (the safetensors header and every other byte unchanged), and the config
    recording the layout and the model."""
    if layout.trained_for(adapter) == layout.qk_layout:
        raise AdapterError(f"adapter {adapter.version} already has the layout of {layout.model}: nothing to migrate")
    source = adapter.path / WEIGHTS_FILE
    raw = source.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    data = bytearray(raw)
    start = 8 + header_len
    for name, entry in header.items():
        suffix = next((s for s in _PERMUTED if name.endswith("." + s)), None)
        if suffix is None:
            continue
        heads = next((int(layout.config[key]) for key in _PERMUTED[suffix] if key in layout.config), 0)
        size = _DTYPE_BYTES.get(entry["dtype"])
        if not heads or size is None or len(entry["shape"]) != 2:
            raise AdapterError(f"adapter {adapter.path}: cannot reorder {name} ({entry['dtype']} {entry['shape']})")
        first, last = (start + offset for offset in entry["data_offsets"])
        columns = np.frombuffer(raw, dtype=_UNSIGNED[size], count=(last - first) // size, offset=first)
        order = qk_row_order(entry["shape"][1], heads, to_hf=layout.qk_layout == HF)
        data[first:last] = np.ascontiguousarray(columns.reshape(entry["shape"])[:, order]).tobytes()
    config = json.loads((adapter.path / CONFIG_FILE).read_text(encoding="utf-8"))
    config |= {"base_model": layout.model, LAYOUT_KEY: layout.qk_layout}
    return {WEIGHTS_FILE: bytes(data), CONFIG_FILE: (json.dumps(config, indent=2) + "\n").encode()}
