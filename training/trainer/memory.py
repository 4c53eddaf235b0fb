"""Pick batch size, sequence length and gradient checkpointing that fit the memory budget.

The estimate is deliberately simple and on the safe side: weights + LoRA state (weights, grads,
AdamW moments, accumulation buffer) + activations kept for the backward pass + the logits, which
for a 49k vocabulary cost more per token than all the blocks together. Only blocks that carry
LoRA keep activations: the frozen blocks below them need no backward pass.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import mlx.core as mx
from mlx.utils import tree_flatten

from ..errors import UsageError

log = logging.getLogger(__name__)

GB = 1024**3
OVERHEAD = 0.35 * GB  # the Python process, tokenizer, MLX allocator slack
SAFETY = 1.25  # multiply the activation estimate: allocator fragmentation, temporaries
MIN_SEQ = 64


class MemoryBudgetError(UsageError, RuntimeError):
    """Even the smallest configuration does not fit the budget."""


@dataclass(frozen=True)
class ModelShape:
    weight_bytes: int
    lora_params: int
    layers: int
    lora_layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int
    dtype_bytes: int


@dataclass(frozen=True)
class MemoryPlan:
    batch_size: int  # micro-batch actually run
    grad_accumulation: int  # micro-batches per optimizer step (keeps the wanted effective batch)
    max_seq_length: int
    grad_checkpoint: bool
    estimated_gb: float
    budget_gb: float
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def model_shape(model, lora_layers: int) -> ModelShape:
    """Read the sizes the estimate needs from a loaded mlx-lm model (after LoRA is applied)."""
    args = getattr(model, "args", None)
    params = tree_flatten(model.parameters())
    hidden = _arg(args, "hidden_size", "dim", "d_model") or params[0][1].shape[-1]
    vocab = _arg(args, "vocab_size") or max(v.shape[0] for _, v in params if v.ndim == 2)
    heads = _arg(args, "num_attention_heads", "n_heads") or max(1, hidden // 64)
    weights = sum(v.nbytes for _, v in params)
    return ModelShape(
        weight_bytes=weights,
        lora_params=sum(v.size for _, v in tree_flatten(model.trainable_parameters())),
        layers=len(model.layers),
        lora_layers=min(lora_layers, len(model.layers)),
        hidden=hidden,
        intermediate=_arg(args, "intermediate_size", "hidden_dim", "ffn_dim") or 4 * hidden,
        heads=heads,
        vocab=vocab,
        dtype_bytes=max(2, min(4, weights // max(1, sum(v.size for _, v in params)))) if weights else 4,
    )


def _arg(args, *names):
    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def estimate_bytes(shape: ModelShape, batch: int, seq: int, checkpoint: bool) -> int:
    """Peak bytes of one training step on a batch × seq micro-batch."""
    tokens = batch * seq
    per_block = shape.dtype_bytes * (10 * shape.hidden + 4 * shape.intermediate + 2 * shape.heads * seq)
    if checkpoint:  # keep block inputs only; one block's activations live during its recompute
        blocks = tokens * (shape.lora_layers * shape.dtype_bytes * shape.hidden + per_block)
    else:
        blocks = tokens * shape.lora_layers * per_block
    logits = tokens * shape.vocab * 4 * 4  # fp32 logits, log-softmax, its gradient, a temporary
    lora_state = shape.lora_params * 4 * 5  # weights, grads, two AdamW moments, accumulation
    return int(shape.weight_bytes + lora_state + OVERHEAD + SAFETY * (blocks + logits))


def default_budget_gb() -> float:
    """Available RAM minus a margin for the OS and the bot (10% of total, at least 1 GB).
    Read before the model is loaded: the estimate counts the weights itself."""
    import psutil

    memory = psutil.virtual_memory()
    return max(0.0, (memory.available - max(GB, 0.1 * memory.total)) / GB)


def plan(
    shape: ModelShape,
    *,
    batch_size: int,
    grad_accumulation: int,
    max_seq_length: int,
    longest: int,
    grad_checkpoint: str,
    budget_gb: float,
) -> MemoryPlan:
    """First fitting option, fastest first: the wanted batch, then smaller batches with more
    accumulation (same effective batch), checkpointing only when needed (it costs ~30% compute),
    and as a last resort a shorter max sequence length (truncates the longest examples)."""
    budget = budget_gb * GB
    seq = min(max_seq_length, max(longest, 2))
    checkpoints = {"on": [True], "off": [False], "auto": [False, True]}[grad_checkpoint]
    divisors = [b for b in range(batch_size, 0, -1) if batch_size % b == 0]
    seqs = [seq] + [s for s in (seq // 2**i for i in range(1, 8)) if s >= MIN_SEQ]
    for length in seqs:
        for micro in divisors:
            for checkpoint in checkpoints:
                need = estimate_bytes(shape, micro, length, checkpoint)
                if need <= budget:
                    reason = _why(batch_size, micro, seq, length, checkpoint, grad_checkpoint, need, budget)
                    return MemoryPlan(
                        micro,
                        grad_accumulation * (batch_size // micro),
                        length,
                        checkpoint,
                        round(need / GB, 3),
                        round(budget_gb, 3),
                        reason,
                    )
    smallest = estimate_bytes(shape, 1, seqs[-1], checkpoints[-1])
    raise MemoryBudgetError(
        f"not enough memory to train: even batch 1 × {seqs[-1]} tokens"
        f"{' with gradient checkpointing' if checkpoints[-1] else ''} needs ~{smallest / GB:.2f} GB "
        f"(base weights alone {shape.weight_bytes / GB:.2f} GB) but the budget is {budget_gb:.2f} GB; "
        "raise TRAIN_MEMORY_BUDGET_GB (default: available RAM minus a margin) or free memory"
    )


def _why(wanted, micro, longest, length, checkpoint, setting, need, budget) -> str:
    parts = [f"estimated {need / GB:.2f} of {budget / GB:.2f} GB"]
    if micro < wanted:
        parts.append(f"batch {wanted} does not fit: {wanted // micro} micro-batches of {micro} per step")
    if checkpoint:
        parts.append("gradient checkpointing " + ("requested" if setting == "on" else "needed to fit"))
    if length < longest:
        parts.append(f"max_seq_length cut from {longest} to {length} to fit (long examples are truncated)")
    return "; ".join(parts)


def apply_limits(plan_: MemoryPlan, device: str) -> None:
    """On Metal, cap MLX's allocations at the budget and wire what the GPU may keep resident."""
    if device != "gpu" or not mx.metal.is_available():
        return
    budget = int(plan_.budget_gb * GB)
    mx.set_memory_limit(budget)
    wired = min(budget, int(mx.device_info().get("max_recommended_working_set_size", budget)))
    try:
        mx.set_wired_limit(wired)
    except Exception as error:  # older macOS cannot wire memory; training works without it
        log.warning("could not set the Metal wired limit: %s", error)
    log.info("Metal memory limit %.2f GB, wired limit %.2f GB", budget / GB, wired / GB)


def peak_gb() -> float:
    return mx.get_peak_memory() / GB
