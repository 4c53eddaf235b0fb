"""LoRA layers (mlx-lm's own), gradient checkpointing per block, and adapters in mlx-lm's format.

Adapters are written the way `mlx_lm.load(model, adapter_path=...)` reads them, so the bot, the gate
and `mlx_lm.generate --adapter-path` all load the same folder; a warm-started run reads one back as
its starting weights (`start_from`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.tuner.utils import linear_to_lora_layers

from common.files import fsync_tree, replace_dir
from inference.layout import LAYOUT_KEY
from inference.lora_shapes import lora_keys

from ..errors import UsageError

ADAPTER_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"
LAYOUT = ("rank", "scale", "keys")  # the lora_parameters that give the weights their meaning


class StartAdapterError(UsageError, ValueError):
    """TRAIN_INIT_ADAPTER cannot start this run: unreadable, or LoRA laid out otherwise."""


def apply_lora(model, num_layers: int, rank: int, scale: float, dropout: float) -> dict:
    """Freeze the base and put LoRA on every linear of the last `num_layers` blocks.

    Returns the adapter_config.json content. The LoRA keys are written out explicitly so the
    adapter means the same thing whatever mlx-lm's default becomes.
    """
    num_layers = min(num_layers, len(model.layers))
    keys = lora_keys(model.layers[-1])
    parameters = {"rank": rank, "scale": scale, "dropout": dropout, "keys": keys}
    model.freeze()
    linear_to_lora_layers(model, num_layers, dict(parameters))
    return {"fine_tune_type": "lora", "num_layers": num_layers, "lora_parameters": parameters}


def start_from(model, folder: Path, adapter_config: dict) -> None:
    """Put an adapter's LoRA weights into a model `apply_lora` just prepared (`adapter_config`: what
    it returned, with the base model's Q/K layout). The adapter must be laid out the same (layers,
    Q/K layout, rank, scale, keys): the same numbers on other layers, in another Q/K order or scaled
    otherwise, would be another model."""
    folder = Path(folder)
    try:
        saved = json.loads((folder / CONFIG_FILE).read_text())
        weights = mx.load(str(folder / ADAPTER_FILE))
    except (OSError, ValueError, RuntimeError) as error:
        raise StartAdapterError(f"TRAIN_INIT_ADAPTER {folder}: cannot read the adapter ({error})") from None
    mine, theirs = _layout(adapter_config), _layout(saved if isinstance(saved, dict) else {})
    changed = [f"{name}: {theirs[name]!r}, the run's {mine[name]!r}" for name in mine if mine[name] != theirs[name]]
    expected = adapter_weights(model)
    if not changed and (set(weights) != set(expected) or any(weights[k].shape != expected[k].shape for k in expected)):
        changed.append("its tensors do not match the run's LoRA layers")
    if changed:
        raise StartAdapterError(
            f"TRAIN_INIT_ADAPTER {folder}: laid out otherwise than this run ({'; '.join(changed)}); "
            "train from scratch instead"
        )
    model.load_weights(list(weights.items()), strict=False)
    mx.eval(model.parameters())


def _layout(config: dict) -> dict:
    parameters = config.get("lora_parameters") or {}
    return {"num_layers": config.get("num_layers"), LAYOUT_KEY: config.get(LAYOUT_KEY)} | {
        name: parameters.get(name) for name in LAYOUT
    }


def use_grad_checkpoint(model) -> None:
    """Recompute each block's activations in the backward pass instead of storing them.

    mlx-lm patches the block *class*, which would leak into every model in the process; here each
    block instance gets its own subclass, so parameter names (and adapters) are unchanged.
    """
    for block in model.layers:
        base = type(block)
        if getattr(base, "_checkpointed", False):
            continue

        def call(self, *args, _base=base, **kwargs):
            def inner(params, *args, **kwargs):
                self.update(params)
                return _base.__call__(self, *args, **kwargs)

            return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)

        block.__class__ = type(f"Checkpointed{base.__name__}", (base,), {"__call__": call, "_checkpointed": True})


def adapter_weights(model) -> dict:
    return dict(tree_flatten(model.trainable_parameters()))


def save_adapter(model, folder: Path, config: dict) -> Path:
    """Write adapters.safetensors + adapter_config.json, replacing `folder` atomically."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        mx.save_safetensors(str(staging / ADAPTER_FILE), adapter_weights(model), metadata={"format": "mlx"})
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str))
        fsync_tree(staging)
        replace_dir(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
