"""Pick batch size, sequence length and gradient checkpointing that fit the memory budget.

The estimate is deliberately simple and on the safe side: weights + LoRA state (weights, grads,
AdamW moments, accumulation buffer) + activations kept for the backward pass + the logits, which
for a 49k vocabulary cost more per token than all the blocks together. Only blocks that carry
LoRA keep activations: the frozen blocks below them need no backward pass.

`python -m training memory-plan` prints the plan and the estimate's parts for a model described by
its config.json or its dimensions, on a machine of a given RAM: a model or machine not at hand.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..errors import UsageError, parse

log = logging.getLogger(__name__)

GB = 1024**3
OVERHEAD = 0.35 * GB  # the Python process, tokenizer, MLX allocator slack
SAFETY = 1.25  # multiply the activation estimate: allocator fragmentation, temporaries
MIN_SEQ = 64
MARGIN = (1 * GB, 0.10)  # kept free for the OS and the bot: the larger of 1 GB and 10% of the RAM
LORA_STATE_COPIES = 5  # LoRA weights, gradients, two AdamW moments, the accumulation buffer (float32)


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
        dtype_bytes=_compute_bytes(model),
    )


def _compute_bytes(model) -> int:
    """Bytes of one activation: the dtype the linear layers compute in, a quantized layer's scales'
    (its packed uint32 weights say nothing of it)."""
    for _, module in model.named_modules():
        if isinstance(module, nn.QuantizedLinear):
            return module.scales.dtype.size
        if isinstance(module, nn.Linear):
            return module.weight.dtype.size
    return 4


def shape_from_config(config: dict, *, lora_layers: int, lora_rank: int, bits: int | None = None) -> ModelShape:
    """The shape of a llama-family model from its config.json alone, for a model not on this machine.

    Weights: `parameters` if the config gives it, else counted from the dimensions; quantized ones
    (mlx-lm's affine quantization: `quantization` in the config, or `bits` < 16) hold `bits` per weight
    plus a float16 scale and bias per group, and compute in 16 bits; `bits` 16 or 32 are unquantized.
    LoRA goes on every linear of the last `lora_layers` blocks, as training puts it.
    """
    try:
        hidden, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
        intermediate, heads, vocab = (
            int(config["intermediate_size"]),
            int(config["num_attention_heads"]),
            int(config["vocab_size"]),
        )
    except KeyError as missing:
        raise UsageError(f"the model's description lacks {missing.args[0]}") from None
    except (TypeError, ValueError) as error:
        raise UsageError(f"the model's description has a non-integer dimension ({error})") from None
    kv = int(config.get("num_key_value_heads") or heads) * (hidden // heads)
    parameters = parameter_count(config)
    quantization = config.get("quantization") or {}
    bits = bits or int(quantization.get("bits") or (32 if config.get("torch_dtype") == "float32" else 16))
    if bits < 16:
        group = int(quantization.get("group_size") or 64)
        weight_bytes, compute = parameters * (bits + 2 * 16 / group) / 8, 2
    else:
        weight_bytes, compute = parameters * bits / 8, bits // 8
    per_block = 4 * hidden + 2 * (hidden + kv) + 3 * (hidden + intermediate)  # in + out of the 7 linears
    lora_layers = min(lora_layers, layers)
    return ModelShape(
        weight_bytes=int(weight_bytes),
        lora_params=lora_layers * lora_rank * per_block,
        layers=layers,
        lora_layers=lora_layers,
        hidden=hidden,
        intermediate=intermediate,
        heads=heads,
        vocab=vocab,
        dtype_bytes=compute,
    )


def parameter_count(config: dict) -> int:
    """`parameters` when the description gives it, else a llama-family model's, counted from its
    dimensions: embeddings (and an untied output layer), attention and MLP weights, norms."""
    if config.get("parameters"):
        return int(float(config["parameters"]))
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads) * (hidden // heads)
    intermediate, layers = int(config["intermediate_size"]), int(config["num_hidden_layers"])
    embeddings = int(config["vocab_size"]) * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return embeddings + layers * (hidden * (2 * hidden + 2 * kv) + 3 * hidden * intermediate + 2 * hidden) + hidden


def _arg(args, *names):
    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass(frozen=True)
class Estimate:
    """Peak bytes of one training step, part by part."""

    weights: int  # the base model
    lora_state: int  # LORA_STATE_COPIES float32 copies of the LoRA parameters
    activations: int  # what the LoRA blocks keep for the backward pass
    logits: int  # float32 logits, log-softmax, its gradient, a temporary
    safety: int  # (SAFETY - 1) × (activations + logits): fragmentation, temporaries
    overhead: int  # the Python process, tokenizer, allocator slack

    @property
    def total(self) -> int:
        return sum(getattr(self, part.name) for part in fields(self))


def estimate(shape: ModelShape, batch: int, seq: int, checkpoint: bool) -> Estimate:
    """The parts of one training step's peak on a batch × seq micro-batch."""
    tokens = batch * seq
    per_block = shape.dtype_bytes * (10 * shape.hidden + 4 * shape.intermediate + 2 * shape.heads * seq)
    if checkpoint:  # keep block inputs only; one block's activations live during its recompute
        activations = tokens * (shape.lora_layers * shape.dtype_bytes * shape.hidden + per_block)
    else:
        activations = tokens * shape.lora_layers * per_block
    logits = tokens * shape.vocab * 4 * 4
    return Estimate(
        weights=int(shape.weight_bytes),
        lora_state=shape.lora_params * 4 * LORA_STATE_COPIES,
        activations=activations,
        logits=logits,
        safety=int((SAFETY - 1) * (activations + logits)),
        overhead=int(OVERHEAD),
    )


def estimate_bytes(shape: ModelShape, batch: int, seq: int, checkpoint: bool) -> int:
    """Peak bytes of one training step on a batch × seq micro-batch."""
    return estimate(shape, batch, seq, checkpoint).total


def budget_gb(available_bytes: float, total_bytes: float) -> float:
    """Available RAM minus the MARGIN for the OS and the bot."""
    return max(0.0, (available_bytes - max(MARGIN[0], MARGIN[1] * total_bytes)) / GB)


def default_budget_gb() -> float:
    """This machine's budget. Read before the model is loaded: the estimate counts the weights itself."""
    import psutil

    memory = psutil.virtual_memory()
    return budget_gb(memory.available, memory.total)


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


# --- python -m training memory-plan --------------------------------------------------------------

# --flag -> the config.json key it sets
DIMENSIONS = {
    "hidden": "hidden_size",
    "layers": "num_hidden_layers",
    "intermediate": "intermediate_size",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "vocab": "vocab_size",
}
PLANNED = ("batch_size", "grad_accumulation", "max_seq_length", "grad_checkpoint", "lora_layers", "lora_rank")


def main(argv: list[str]) -> int:
    from ..errors import guarded
    from ..settings import TrainingSettings

    parser = argparse.ArgumentParser(
        prog="python -m training memory-plan",
        description="the memory tuner's plan, with the estimate's parts, for a model and a machine that "
        "need not be this one",
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="the model's config.json (mlx-lm or Hugging Face)")
    for flag, key in DIMENSIONS.items():
        parser.add_argument(f"--{flag.replace('_', '-')}", type=int, metavar="N", help=f"{key} (overrides --config)")
    parser.add_argument("--params", type=float, metavar="N", help="parameter count, e.g. 7.2e9 (default: counted)")
    parser.add_argument("--bits", type=int, choices=(2, 3, 4, 5, 6, 8, 16, 32), help="bits per weight")
    parser.add_argument("--group-size", type=int, metavar="N", help="quantization group size (default 64)")
    parser.add_argument("--ram-gb", type=float, metavar="GB", help="the machine's RAM (default: this one's)")
    parser.add_argument("--available-gb", type=float, metavar="GB", help="free when training starts (default: the RAM)")
    parser.add_argument("--longest", type=int, metavar="TOKENS", help="longest example (default: max_seq_length)")
    for name in (*PLANNED, "memory_budget_gb"):
        field = TrainingSettings.model_fields[name]
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"setting_{name}",
            metavar="VALUE",
            help=f"TRAIN_{name.upper()}, default {field.default}",
        )
    args = parse(parser, argv)
    return args if isinstance(args, int) else guarded(_print_plan)(args)


def _print_plan(args: argparse.Namespace) -> int:
    from ..settings import TrainingSettings

    settings = TrainingSettings.load(**{k[8:]: v for k, v in vars(args).items() if k.startswith("setting_")})
    config = _described_model(args)
    shape = shape_from_config(config, lora_layers=settings.lora_layers, lora_rank=settings.lora_rank, bits=args.bits)
    ram, available = _machine(args)
    budget = settings.memory_budget_gb or budget_gb(available, ram)
    longest = args.longest or settings.max_seq_length
    chosen = plan(
        shape,
        batch_size=settings.batch_size,
        grad_accumulation=settings.grad_accumulation,
        max_seq_length=settings.max_seq_length,
        longest=longest,
        grad_checkpoint=settings.grad_checkpoint,
        budget_gb=budget,
    )
    parts = estimate(shape, chosen.batch_size, chosen.max_seq_length, chosen.grad_checkpoint)
    quantization = config.get("quantization") or {}
    bits = args.bits or quantization.get("bits")
    kind = f"{bits}-bit" if bits and bits < 16 else f"{shape.dtype_bytes * 8}-bit float"
    tokens = f"{chosen.batch_size} × {chosen.max_seq_length} tokens"
    print(
        f"memory plan: {kind} model, {parameter_count(config):.3g} parameters (hidden {shape.hidden}, "
        f"{shape.layers} layers, intermediate {shape.intermediate}, {shape.heads} heads, vocabulary {shape.vocab})"
    )
    if settings.memory_budget_gb:
        print(f"budget: {budget:.2f} GB (TRAIN_MEMORY_BUDGET_GB)")
    else:
        kept = max(MARGIN[0], MARGIN[1] * ram)
        print(
            f"budget: {budget:.2f} GB = {available / GB:.2f} GB available of {ram / GB:.2f} GB RAM "
            f"− {kept / GB:.2f} GB kept for the OS and the bot "
            f"(the larger of {MARGIN[0] / GB:.0f} GB and {MARGIN[1]:.0%} of the RAM)"
        )
    print(
        f"wanted: batch {settings.batch_size} × {settings.grad_accumulation} accumulation, max_seq_length "
        f"{settings.max_seq_length} (longest example {longest}), gradient checkpointing {settings.grad_checkpoint}; "
        f"LoRA rank {settings.lora_rank} on {shape.lora_layers} of {shape.layers} layers"
    )
    print(
        f"plan: batch {chosen.batch_size} × {chosen.grad_accumulation} accumulation, max_seq_length "
        f"{chosen.max_seq_length}, gradient checkpointing {'on' if chosen.grad_checkpoint else 'off'} ({chosen.reason})"
    )
    group = int(quantization.get("group_size") or args.group_size or 64)
    weights = f"{kind} weights" + (f" + a 16-bit scale and bias per {group}" if bits and bits < 16 else "")
    rows = [
        ("weights", parts.weights, weights),
        ("lora_state", parts.lora_state, f"{shape.lora_params:,} LoRA parameters × 4 bytes × {LORA_STATE_COPIES}"),
        (
            "activations",
            parts.activations,
            f"{shape.lora_layers} LoRA blocks × {tokens} × {shape.dtype_bytes} bytes"
            + (", block inputs only (checkpointing)" if chosen.grad_checkpoint else ""),
        ),
        ("logits", parts.logits, f"{tokens} × {shape.vocab:,} vocabulary × 4 bytes × 4"),
        ("safety", parts.safety, f"{SAFETY - 1:.0%} of activations and logits"),
        ("overhead", parts.overhead, "the Python process, tokenizer, allocator slack"),
    ]
    print("estimate (GB):")
    for name, size, how in rows:
        print(f"  {name:<12} {size / GB:7.2f}  {how}")
    print(f"  {'total':<12} {parts.total / GB:7.2f}  of a {budget:.2f} GB budget")
    return 0


def _described_model(args: argparse.Namespace) -> dict:
    """The config.json (if any) with the flags over it."""
    config = {}
    if args.config is not None:
        try:
            config = json.loads(args.config.read_text())
        except (OSError, ValueError) as error:
            raise UsageError(f"--config {args.config}: {error}") from None
        if not isinstance(config, dict):
            raise UsageError(f"--config {args.config}: not a JSON object")
    for flag, key in DIMENSIONS.items():
        if getattr(args, flag) is not None:
            config[key] = getattr(args, flag)
    if args.params is not None:
        config["parameters"] = args.params
    if args.group_size is not None:
        config["quantization"] = {**(config.get("quantization") or {}), "group_size": args.group_size}
    missing = [
        f"--{flag.replace('_', '-')}" for flag, key in DIMENSIONS.items() if key not in config and flag != "kv_heads"
    ]
    if missing:
        raise UsageError(f"describe the model with --config FILE or {', '.join(missing)}")
    return config


def _machine(args: argparse.Namespace) -> tuple[float, float]:
    """(RAM, available) in bytes: the flags', else this machine's."""
    import psutil

    here = psutil.virtual_memory()
    ram = args.ram_gb * GB if args.ram_gb else here.total
    available = args.available_gb * GB if args.available_gb else (ram if args.ram_gb else here.available)
    return ram, available
