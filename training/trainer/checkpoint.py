"""Checkpoints that continue a run bit for bit, written atomically and verified before use.

A checkpoint is a folder `checkpoints/step-0000200/` holding the adapter weights, the optimizer state
(its step drives the LR schedule), the numpy RNG state and the loop's position in the data order, plus
`index.json` with a SHA-256 per file. It is built in a hidden staging folder, fsynced and renamed
into place, so a crash leaves either the whole checkpoint or none. On load the newest checkpoint
that verifies is used; a corrupt one is reported and skipped, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map_with_path

from common.files import fsync_tree, replace_dir, sha256_file

from ..errors import UsageError
from .lora import CONFIG_FILE, adapter_weights

log = logging.getLogger(__name__)

ADAPTERS = "adapters.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
INDEX = "index.json"


class CheckpointError(UsageError, RuntimeError):
    """No checkpoint can be used (none, or all corrupt)."""


class FingerprintMismatch(UsageError, ValueError):
    """The run was started with other settings, data or base model; resuming would mix them."""


@dataclass
class Progress:
    """The loop's own state: where it is, what it has seen, how evaluation is going."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    position: int = 0  # next index into `order`
    order: list[int] = field(default_factory=list)  # this epoch's batch permutation
    numpy_rng: dict = field(default_factory=dict)  # bit_generator.state after drawing `order`
    best_val_loss: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # evaluations since the last improvement
    last_val_loss: float | None = None
    trained_tokens: int = 0
    metrics: list[dict] = field(default_factory=list)  # every metrics.jsonl record so far


@dataclass
class Loaded:
    path: Path
    progress: Progress
    adapters: dict
    optimizer: dict


def fingerprint(
    training: dict, dataset_hash: str, model_id: str, dtype: str, system_prompt: str, start_weights: str | None = None
) -> dict:
    """What must be equal for a resume to be the same run (`start_weights`: the sha256 of a warm
    start's adapter weights, where it lives does not matter)."""
    return {
        "training": training,
        "dataset": dataset_hash,
        "base_model": f"{model_id} ({dtype})",
        "system_prompt_sha256": hashlib.sha256(system_prompt.encode()).hexdigest()[:16],
        "start_weights": start_weights,
    }


def differences(saved: dict, current: dict) -> list[str]:
    """Human lines naming what changed, with settings spelled as environment variables."""
    lines = []
    for name in sorted(set(saved["training"]) | set(current["training"])):
        old, new = saved["training"].get(name), current["training"].get(name)
        if old != new:
            lines.append(f"TRAIN_{name.upper()}: {old!r} → {new!r}")
    for key, label in (
        ("dataset", "dataset content_hash"),
        ("base_model", "base model"),
        ("system_prompt_sha256", "SYSTEM_PROMPT (sha256)"),
        ("start_weights", "TRAIN_INIT_ADAPTER weights (sha256)"),
    ):
        if saved.get(key) != current.get(key):
            lines.append(f"{label}: {saved.get(key)} → {current.get(key)}")
    return lines


def save(root: Path, model, optimizer, progress: Progress, fingerprint_: dict, adapter_config: dict, keep: int) -> Path:
    """Write checkpoints/step-NNNNNNN atomically, then prune to the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{progress.step:07d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        mx.save_safetensors(str(staging / ADAPTERS), adapter_weights(model), metadata={"format": "mlx"})
        mx.save_safetensors(str(staging / OPTIMIZER), dict(tree_flatten(optimizer.state)))
        (staging / CONFIG_FILE).write_text(json.dumps(adapter_config, indent=2, default=str))
        state = {"fingerprint": fingerprint_, "progress": asdict(progress), "saved_at": time.time()}
        (staging / STATE).write_text(json.dumps(state))
        files = {p.name: _digest(p) for p in sorted(staging.iterdir())}
        (staging / INDEX).write_text(json.dumps({"step": progress.step, "files": files}, indent=2))
        fsync_tree(staging)
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    prune(root, keep)
    return target


def prune(root: Path, keep: int) -> None:
    for old in checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*"):  # staging folders of a save that was killed
        shutil.rmtree(stale, ignore_errors=True)


def checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders, oldest first."""
    return sorted(p for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []


def verify(folder: Path) -> str | None:
    """None when every file matches index.json, else what is wrong."""
    try:
        index = json.loads((folder / INDEX).read_text())
        files = index["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{INDEX} unreadable ({error})"
    for name in (ADAPTERS, OPTIMIZER, STATE, CONFIG_FILE):
        if name not in files:
            return f"{INDEX} does not list {name}"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, expected {expected['bytes']}"
        if _digest(path)["sha256"] != expected["sha256"]:
            return f"{name} checksum mismatch"
    return None


def load_latest(root: Path, current: dict) -> Loaded:
    """The newest checkpoint that verifies; refuses when it belongs to other settings/data/model."""
    found = checkpoints(root)
    if not found:
        raise CheckpointError(f"no checkpoint in {root}; start a new run instead of resuming")
    for folder in reversed(found):
        problem = verify(folder)
        if problem is None:
            try:
                state = json.loads((folder / STATE).read_text())
                adapters = mx.load(str(folder / ADAPTERS))
                optimizer = mx.load(str(folder / OPTIMIZER))
            except Exception as error:  # verified bytes that still do not parse: treat as corrupt
                problem = f"unreadable ({type(error).__name__}: {error})"
        if problem is not None:
            log.warning("checkpoint %s is corrupt: %s; falling back to the previous one", folder.name, problem)
            continue
        changed = differences(state["fingerprint"], current)
        if changed:
            raise FingerprintMismatch(
                f"cannot resume from {folder}: the run was started with different inputs ("
                + "; ".join(changed)
                + "). Restore them, or start a new run without --resume"
            )
        log.info("resuming from %s", folder)
        return Loaded(folder, Progress(**state["progress"]), adapters, optimizer)
    raise CheckpointError(
        f"all {len(found)} checkpoint(s) in {root} are corrupt; nothing safe to resume from, start a new run"
    )


def restore(loaded: Loaded, model, optimizer) -> None:
    """Put the saved weights and optimizer state back; shapes and names must match. (MLX's RNG
    needs no saving: the loop reseeds it from (seed, step) before every step.)"""
    expected = adapter_weights(model)
    if set(expected) != set(loaded.adapters) or any(expected[k].shape != loaded.adapters[k].shape for k in expected):
        raise CheckpointError(f"{loaded.path}: adapter tensors do not match the model's LoRA layers")
    model.load_weights(list(loaded.adapters.items()), strict=False)
    optimizer.init(model.trainable_parameters())
    if set(k for k, _ in tree_flatten(optimizer.state)) != set(loaded.optimizer):
        raise CheckpointError(f"{loaded.path}: optimizer state does not match the model's LoRA layers")
    optimizer.state = tree_map_with_path(lambda path, _: loaded.optimizer[path], optimizer.state)
    optimizer.init(model.trainable_parameters())  # marks it initialised; keeps the loaded values
    mx.eval(model.parameters(), optimizer.state)


def _digest(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}
