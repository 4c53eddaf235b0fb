"""The LoRA tensors an adapter spec creates on a base model, without loading its weights: the adapter
registry checks an adapter against them before registering or serving it. Here, not in training's
registry, because it needs MLX and the registry runs in the bot's threads.
"""

from __future__ import annotations

import threading
from pathlib import Path

from .adapters import AdapterError, LoraSpec


def local_model_folder(base_model) -> Path:
    """The base model's folder: a path as given, a hub id in mlx-lm's local cache."""
    folder = Path(base_model)
    if not folder.is_dir():  # a hub id: mlx-lm's local cache
        from mlx_lm.utils import hf_repo_to_path

        folder = hf_repo_to_path(str(base_model))
    return folder


def expected_lora_shapes(model_folder: Path, spec: LoraSpec) -> dict[str, tuple[int, ...]]:
    """The LoRA tensors `spec` creates on the base model, from a lazily built copy (no weights read).

    MLX work runs on a throwaway thread that clears its streams at the end: callers may be bot
    threads, and a thread that ran MLX ops without clearing them makes MLX abort at exit.
    """
    result: list = []

    def work() -> None:
        import mlx.core as mx

        try:
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
            result.append(
                {
                    name: tuple(value.shape)
                    for name, value in tree_flatten(model.parameters())
                    if name.endswith((".lora_a", ".lora_b"))
                }
            )
        except BaseException as error:
            result.append(error)
        finally:
            mx.clear_streams()

    thread = threading.Thread(target=work, name="lora-shapes")
    thread.start()
    thread.join()
    if isinstance(result[0], AdapterError):
        raise result[0]
    if isinstance(result[0], BaseException):
        raise AdapterError(
            f"cannot check the adapter against {model_folder}: {type(result[0]).__name__}: {result[0]}"
        ) from result[0]
    return result[0]
