"""The LoRA tensors an adapter spec creates on a base model, without loading its weights: the adapter
registry checks an adapter against them before registering or serving it. Here, not in training's
registry, because it needs MLX and the registry runs in the bot's threads.

Also the one rule for which linear layers get LoRA (`lora_keys`): training applies it, and the
pipeline compares its outcome with the production adapter's before continuing that adapter.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from .adapters import AdapterError, LoraSpec


def local_model_folder(base_model) -> Path:
    """The base model's folder: a path as given, a hub id in mlx-lm's local cache."""
    folder = Path(base_model)
    if not folder.is_dir():  # a hub id: mlx-lm's local cache
        from mlx_lm.utils import hf_repo_to_path

        folder = hf_repo_to_path(str(base_model))
    return folder


def lora_keys(block) -> list[str]:
    """The linear layers of a transformer block that get LoRA: every one of them, by name."""
    import mlx.nn as nn

    return sorted(name for name, module in block.named_modules() if isinstance(module, (nn.Linear, nn.QuantizedLinear)))


def lora_layout(model_folder: Path, num_layers: int) -> tuple[int, list[str]]:
    """How many blocks a run asking for `num_layers` puts LoRA on, and on which of their layers,
    for this base model (from a lazily built copy: no weights read)."""

    def work():
        from mlx_lm.utils import load_model

        model, _ = load_model(Path(model_folder), lazy=True)
        return min(num_layers, len(model.layers)), lora_keys(model.layers[-1])

    return _on_own_thread(work, f"cannot read the layers of {model_folder}")


def expected_lora_shapes(model_folder: Path, spec: LoraSpec) -> dict[str, tuple[int, ...]]:
    """The LoRA tensors `spec` creates on the base model, from a lazily built copy (no weights read)."""

    def work():
        from mlx.utils import tree_flatten
        from mlx_lm.tuner.utils import linear_to_lora_layers
        from mlx_lm.utils import load_model

        model, _ = load_model(Path(model_folder), lazy=True)
        if spec.num_layers > len(model.layers):
            raise AdapterError(
                f"the adapter wants LoRA on {spec.num_layers} layers, the base model "
                f"{Path(model_folder).name} has {len(model.layers)}"
            )
        parameters = {"rank": spec.rank, "scale": spec.scale, "dropout": spec.dropout}
        if spec.keys:
            parameters["keys"] = list(spec.keys)
        linear_to_lora_layers(model, spec.num_layers, parameters)
        return {
            name: tuple(value.shape)
            for name, value in tree_flatten(model.parameters())
            if name.endswith((".lora_a", ".lora_b"))
        }

    return _on_own_thread(work, f"cannot check the adapter against {model_folder}")


def _on_own_thread(work: Callable, failure: str):
    """`work()`'s result, its MLX work done on a throwaway thread that clears its streams at the end:
    callers may be bot threads, and a thread that ran MLX ops without clearing them makes MLX abort
    at exit. An AdapterError passes as it is; any other error becomes one saying `failure`."""
    result: list = []

    def run() -> None:
        import mlx.core as mx

        try:
            result.append(work())
        except BaseException as error:
            result.append(error)
        finally:
            mx.clear_streams()

    thread = threading.Thread(target=run, name="lora-shapes")
    thread.start()
    thread.join()
    if isinstance(result[0], AdapterError):
        raise result[0]
    if isinstance(result[0], BaseException):
        raise AdapterError(f"{failure}: {type(result[0]).__name__}: {result[0]}") from result[0]
    return result[0]
