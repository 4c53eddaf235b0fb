"""Put a verified LoRA adapter on a loaded model, or take it off again, without reloading the base."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.utils import linear_to_lora_layers

from .adapters import Adapter, check_fits
from .layout import ModelLayout


def remove_adapter(model: nn.Module) -> None:
    """Replace every LoRA layer by the base linear layer it wraps."""
    wrapped = [(name, module.linear) for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    if wrapped:
        model.update_modules(tree_unflatten(wrapped))


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """The LoRA layers on the model now, by path: enough to mount this adapter again later."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoRALinear)]


def mount_layers(model: nn.Module, layers: list[tuple[str, LoRALinear]]) -> None:
    """Serve another adapter's LoRA layers (from `lora_layers`): they wrap the same base layers,
    so switching moves references only, no weights."""
    remove_adapter(model)
    if layers:
        model.update_modules(tree_unflatten(layers))


def apply_adapter(model: nn.Module, adapter: Adapter, layout: ModelLayout) -> None:
    """Add LoRA layers as the adapter's config says, check it was trained for the model's Q/K
    layout and every tensor fits, then load them."""
    layout.check(adapter)
    spec = adapter.spec
    if spec.num_layers > len(model.layers):
        raise ValueError(f"adapter {adapter.path} wants {spec.num_layers} layers, the model has {len(model.layers)}")
    parameters = {"rank": spec.rank, "scale": spec.scale, "dropout": spec.dropout}
    if spec.keys:
        parameters["keys"] = list(spec.keys)
    linear_to_lora_layers(model, spec.num_layers, parameters)
    expected = {
        name: tuple(value.shape)
        for name, value in tree_flatten(model.trainable_parameters())
        if name.endswith((".lora_a", ".lora_b"))
    }
    if not expected:
        expected = {
            name: tuple(value.shape)
            for name, value in tree_flatten(model.parameters())
            if name.endswith((".lora_a", ".lora_b"))
        }
    check_fits(adapter, expected)
    try:
        weights = mx.load(str(adapter.path / "adapters.safetensors"))
    except Exception as error:
        raise ValueError(f"adapter {adapter.path}: cannot read weights ({error})") from error
    dtype = next(v.dtype for n, v in tree_flatten(model.parameters()) if n.endswith("lora_a"))
    bad = [name for name, value in weights.items() if not bool(mx.all(mx.isfinite(value)))]
    if bad:
        raise ValueError(f"adapter {adapter.path}: non-finite values in {bad[:3]}")
    model.load_weights([(name, value.astype(dtype)) for name, value in weights.items()], strict=False)
    mx.eval(model.parameters())
