"""Load a base model for serving or training, with the weight dtype that is fast on this device.

MLX's CPU quantized matmul is slow, so on CPU 4-bit weights are dequantized to float32 (the
numbers behind this are in `bench/`); on Metal/CUDA they stay quantized.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .backend import blas_in_use, choose_device, use_device
from .layout import ModelLayout, layout_of
from .modelstore import ModelNotFound, model_name, resolve_model

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says which file and why."""


@dataclass(frozen=True)
class ModelInfo:
    model_id: str  # short human name: folder name or hub id
    path: str  # what mlx_lm.load received
    device: str  # "cpu" | "gpu"
    dtype: str  # "float32", "bfloat16", "float16" or "quantized"
    blas: str
    layout: ModelLayout  # what an adapter must have been trained for


def load_base(model_path: str, models_root: Path, device: str = "auto", cpu_dtype: str = "float32"):
    """Return (model, tokenizer, ModelInfo) for MODEL_PATH (empty = embedded default)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.utils import dequantize_model, load

    reference = resolve_model(model_path, models_root)
    chosen = choose_device(device)
    use_device(chosen)
    try:
        model, tokenizer, config = load(reference, return_config=True)
    except FileNotFoundError as error:
        raise ModelNotFound(f"model {reference}: {error}") from error
    except Exception as error:
        raise ModelLoadError(f"cannot load model {reference}: {type(error).__name__}: {error}") from error

    quantized = any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules())
    dtype = "quantized" if quantized else _dtype_name(model)
    if chosen == "cpu" and quantized and cpu_dtype != "quantized":
        model = dequantize_model(model)
        dtype = cpu_dtype
    if dtype != "quantized" and dtype != _dtype_name(model):
        model.set_dtype(getattr(mx, dtype))
    mx.eval(model.parameters())
    blas = blas_in_use()
    model_id = model_name(reference)
    info = ModelInfo(model_id, reference, chosen, dtype, blas.name, ModelLayout(model_id, layout_of(config), config))
    log.info(
        "model %s on %s, weights %s, BLAS %s (%s)", info.model_id, chosen, dtype, blas.name, blas.path or blas.reason
    )
    return model, tokenizer, info


def _dtype_name(model) -> str:
    from mlx.utils import tree_flatten

    for name, value in tree_flatten(model.parameters()):
        if name.endswith("weight") and value.ndim == 2:
            return str(value.dtype).removeprefix("mlx.core.")
    return "float32"
