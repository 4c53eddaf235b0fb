"""The training loop, read top to bottom: LoRA'd model in, adapters/best and adapters/final out.

One *step* is one optimizer update over `grad_accumulation` micro-batches. Everything that decides
what the next step does (weights, AdamW moments and step count, batch-order RNG, position in the epoch's
batch order, early-stopping counters) lives in the model, the optimizer or `Progress`, and all of it
goes into each checkpoint, so a resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map

from ..runs import CANCELLED, EARLY_STOPPED, FINISHED, RUNNING, Run
from ..settings import TrainingSettings
from . import checkpoint
from .batching import Batch, TokenizedExample, batch_groups, padding_fraction
from .checkpoint import Loaded, Progress
from .lora import save_adapter
from .memory import MemoryPlan, peak_gb
from .prefix import can_share, shared_forward
from .reporting import Reporter

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    state: str  # finished | early_stopped | cancelled
    reason: str
    step: int
    best_val_loss: float | None
    best_step: int | None
    final_val_loss: float | None
    initial_val_loss: float | None  # the base model's, before any step


class StopFlag:
    """Set from a signal handler; the loop finishes its step, checkpoints and returns."""

    def __init__(self):
        self.signal: str | None = None


def make_loss(model):
    """Mean cross-entropy over the batch's assistant targets, and how many there were.

    With `total`, the sum is divided by it instead: a rank holding part of a global batch passes the
    global batch's target count, so the ranks' losses (and gradients) add up to the global mean.

    When the model is a backbone plus an output head (most mlx-lm models), logits are computed only
    at the target positions: the 49k-vocabulary head and its softmax cost ~40% of a CPU step on
    SmolLM2, and prompt tokens (system prompt + question) are most of each sequence.

    `shared` leading columns, equal in every row (the batch's `Batch.shared`), run once for the whole
    batch (prefix.py) when the architecture allows it.
    """

    split = split_head(model)
    share = split is not None and can_share(model, split[0])

    def loss(model, inputs, positions, labels, weights, total=None, shared=0):
        if split is None:
            logits = model(inputs)
            logits = logits.reshape(-1, logits.shape[-1])[positions]
        else:
            if shared and share:
                width = inputs.shape[1]
                hidden = shared_forward(split[0], inputs, shared)  # rows × (width − shared)
                positions = mx.maximum(positions // width * (width - shared) + positions % width - shared, 0)
            else:
                hidden = split[0](inputs)
            logits = split[1](hidden.reshape(-1, hidden.shape[-1])[positions])
        ce = nn.losses.cross_entropy(logits.astype(mx.float32), labels) * weights
        count = weights.sum()
        return ce.sum() / (count if total is None else total), count

    return loss


def split_head(model):
    """(backbone, head) if `model(x) == head(backbone(x))`, checked on a probe; else None."""
    backbone = getattr(model, "model", None)
    head = getattr(model, "lm_head", None)
    if head is None and backbone is not None and hasattr(getattr(backbone, "embed_tokens", None), "as_linear"):
        head = backbone.embed_tokens.as_linear
    if backbone is None or head is None:
        return None
    was_training = model.training
    model.eval()
    try:
        probe = mx.array([[1, 2, 3, 4, 5, 6, 7, 8]])
        same = mx.allclose(model(probe), head(backbone(probe)), rtol=1e-3, atol=1e-3).item()
    except Exception:  # an architecture whose backbone takes other arguments
        same = False
    finally:
        model.train(was_training)
    return (backbone, head) if same else None


def validation_loss(model, batches: list[Batch]) -> float:
    """Token-weighted mean loss over `batches`: deterministic for the same model and batches."""
    total, count = validation_sums(model, batches)
    return (total / count).item()


def validation_sums(model, batches: list[Batch]):
    """(Σ loss × targets, Σ targets) over `batches`, as MLX scalars (ranks add theirs up)."""
    loss = make_loss(model)
    was_training = model.training
    model.eval()
    total, count = mx.array(0.0), mx.array(0.0)
    for batch in batches:
        value, tokens = loss(model, batch.inputs, batch.positions, batch.labels, batch.weights, None, batch.shared)
        total, count = total + value * tokens, count + tokens
        mx.eval(total, count)
    model.train(was_training)
    return total, count


def make_step(model, optimizer, loss, *, accumulation: int, grad_clip: float, compiled: bool, dist):
    """(forward, apply), the same on one rank or N.

    forward adds the gradients of this rank's rows of a micro-batch to `previous` (the loss summed over
    them, divided by `total`, the whole micro-batch's target count); apply sums them over the ranks
    (`dist.sum_tree`, the identity on one), averages over the micro-batches, clips and updates.

    Compiled (with model, optimizer and RNG state as its state) on Metal, where fusing kernels pays.
    On CPU it does not: every new batch shape costs a ~8 s trace for no measurable gain per step.
    """
    loss_and_grad = nn.value_and_grad(model, loss)

    def forward(inputs, positions, labels, weights, total, previous, shared=0):
        (value, tokens), grads = loss_and_grad(model, inputs, positions, labels, weights, total, shared)
        if previous is not None:
            grads = tree_map(lambda a, b: a + b, grads, previous)
        return value, tokens, grads

    def update(grads):
        grads = dist.sum_tree(grads)
        if accumulation > 1:
            grads = tree_map(lambda g: g / accumulation, grads)
        if grad_clip > 0:
            grads, _ = optim.clip_grad_norm(grads, grad_clip)
        optimizer.update(model, grads)
        return optimizer.step

    if compiled:
        state = [model.state, optimizer.state, mx.random.state]
        forward = partial(mx.compile, inputs=state, outputs=state)(forward)
        update = partial(mx.compile, inputs=state, outputs=state)(update)

    def apply(grads):
        if grads is None:  # none of this step's rows were on this rank: it adds zeros
            grads = tree_map(mx.zeros_like, model.trainable_parameters())
        update(grads)

    return forward, apply


def make_optimizer(settings: TrainingSettings):
    """AdamW with linear warmup then cosine decay to lr × min_lr_ratio at the last step."""
    lr, warmup = settings.learning_rate, min(settings.warmup_steps, settings.iters - 1)
    cosine = optim.cosine_decay(lr, max(1, settings.iters - warmup), lr * settings.min_lr_ratio)
    schedule = (
        cosine
        if warmup < 1
        else optim.join_schedules([optim.linear_schedule(lr / warmup, lr, warmup), cosine], [warmup])
    )
    return optim.AdamW(learning_rate=schedule, weight_decay=settings.weight_decay)


def train(
    model,
    examples: list[TokenizedExample],
    valid: list[Batch],
    *,
    settings: TrainingSettings,
    plan: MemoryPlan,
    pad_id: int,
    run: Run,
    reporter: Reporter,
    fingerprint: dict,
    adapter_config: dict,
    resume: Loaded | None,
    stop: StopFlag,
    compiled: bool = False,
    dist,
) -> Outcome:
    """Every rank (`dist`: distributed.py's OneRank or Distributed) runs this loop in lockstep on its
    share of each global micro-batch; only the lead (rank 0) writes files."""
    lead = dist.lead
    # Data: length-sorted micro-batches of alike-starting examples, built once; only their order changes
    # per epoch. Every rank cuts the same global micro-batches and collates only its rows of each.
    batches = dist.shard(examples, batch_groups(examples, plan.batch_size), pad_id)
    log.info(
        "%d train batches of ≤%d (padding %.1f%%), %d frozen valid batches (padding %.1f%%)",
        len(batches),
        plan.batch_size,
        100 * padding_fraction(batches),
        len(valid),
        100 * padding_fraction(valid),
    )

    optimizer = make_optimizer(settings)
    optimizer.init(model.trainable_parameters())
    rng = np.random.default_rng(settings.seed)
    progress = dist.restore(resume, model, optimizer)  # rank 0's checkpoint, the same state on every rank
    resumed = progress is not None
    if not resumed:
        progress = Progress()
    else:
        rng.bit_generator.state = progress.numpy_rng
        if lead:
            run.rewrite_metrics(progress.metrics)

    def next_batch():
        if progress.position >= len(progress.order):  # new epoch: new seeded batch order
            progress.epoch += 1
            progress.order = rng.permutation(len(batches)).tolist()
            progress.position = 0
            progress.numpy_rng = rng.bit_generator.state
        progress.position += 1
        return batches[progress.order[progress.position - 1]]

    forward, apply = make_step(
        model,
        optimizer,
        make_loss(model),
        accumulation=plan.grad_accumulation,
        grad_clip=settings.grad_clip,
        compiled=compiled,
        dist=dist,
    )
    accumulation = plan.grad_accumulation

    def measure() -> float:
        return dist.validation_loss(model, valid)

    def record(record: dict) -> None:
        progress.metrics.append(record)
        if lead:
            run.append_metric(record)

    def evaluate(step: int) -> float:
        tic = time.perf_counter()
        val = measure()
        mx.clear_cache()  # free eval buffers before training allocates again
        improved = progress.best_val_loss is None or val < progress.best_val_loss - settings.min_delta
        if improved:
            progress.best_val_loss, progress.best_step, progress.bad_evals = val, step, 0
            if lead:
                save_adapter(model, run.best, adapter_config | {"step": step, "val_loss": val})
        else:
            progress.bad_evals += 1
        progress.last_val_loss = val
        record(
            {
                "kind": "eval",
                "step": step,
                "val_loss": val,
                "best_val_loss": progress.best_val_loss,
                "eval_s": round(time.perf_counter() - tic, 3),
            }
        )
        reporter.emit(
            "eval",
            step=step,
            total=settings.iters,
            val_loss=val,
            best_val_loss=progress.best_val_loss,
            best_step=progress.best_step,
            improved=improved,
        )
        log.info("step %d: val loss %.4f (best %.4f at step %s)", step, val, progress.best_val_loss, progress.best_step)
        if lead:
            run.set_status(
                RUNNING,
                step=step,
                best_val_loss=progress.best_val_loss,
                best_step=progress.best_step,
                last_val_loss=val,
            )
        return val

    model.train()
    if not resumed:  # the baseline: what the untouched base model scores (not a "best")
        baseline = measure()
        progress.last_val_loss = baseline
        record({"kind": "eval", "step": 0, "val_loss": baseline, "best_val_loss": None, "eval_s": 0.0})
        reporter.emit(
            "eval", step=0, total=settings.iters, val_loss=baseline, best_val_loss=None, best_step=None, improved=False
        )
        log.info("step 0: val loss %.4f (base model)", baseline)

    started, first_step = time.perf_counter(), progress.step
    outcome_state, reason = FINISHED, f"completed {settings.iters} steps"
    mx.reset_peak_memory()
    while progress.step < settings.iters:
        tic = time.perf_counter()
        # dropout noise: a function of the step (and of the rank: each sees other rows)
        mx.random.seed(settings.seed * 1_000_003 + progress.step + dist.rank * 1_000_000_007)
        grads, loss_sum, tokens, cells, targets = None, 0.0, 0, 0, 0
        for _ in range(accumulation):  # this rank's rows of each micro-batch, then one sum over the ranks
            shard = next_batch()
            if shard.batch is not None:
                b = shard.batch
                loss, _, grads = forward(
                    b.inputs, b.positions, b.labels, b.weights, mx.array(shard.total, mx.float32), grads, b.shared
                )
                mx.eval(loss, grads)
                loss_sum += loss.item() * shard.total
            targets += shard.total
            tokens, cells = tokens + shard.tokens, cells + shard.cells
        apply(grads)
        mx.eval(model.parameters(), optimizer.state, mx.random.state)
        loss_sum = dist.step_end(loss_sum, stop)  # every rank: the same loss
        progress.step += 1
        progress.trained_tokens += targets
        step, seconds = progress.step, time.perf_counter() - tic
        train_loss = loss_sum / targets
        done = step - first_step
        eta = (time.perf_counter() - started) / done * (settings.iters - step)
        record(
            {
                "kind": "train",
                "step": step,
                "epoch": progress.epoch,
                "loss": train_loss,
                "learning_rate": optimizer.learning_rate.item(),
                "tokens_per_s": round(tokens / seconds, 1),
                "tokens": tokens,
                "targets": targets,
                "padding": round(1 - tokens / cells, 4),
                "peak_memory_gb": round(peak_gb(), 3),
                "step_s": round(seconds, 4),
            }
        )
        reporter.emit(
            "step",
            step=step,
            total=settings.iters,
            loss=train_loss,
            epoch=progress.epoch,
            learning_rate=optimizer.learning_rate.item(),
            tokens_per_s=round(tokens / seconds, 1),
            val_loss=progress.last_val_loss,
            eta_s=round(eta, 1),
        )

        if step % settings.eval_every == 0 or step == settings.iters:
            evaluate(step)
            if progress.bad_evals >= settings.patience and step < settings.iters:
                outcome_state = EARLY_STOPPED
                reason = (
                    f"val loss did not improve by more than {settings.min_delta} for "
                    f"{settings.patience} evaluation(s); best {progress.best_val_loss:.4f} "
                    f"at step {progress.best_step}"
                )
                break
        halt = dist.stopping(stop)  # ranks act on the stop agreed at the step's end, never a late one
        if step < settings.iters and (step % settings.checkpoint_every == 0 or halt) and lead:
            path = checkpoint.save(
                run.checkpoints, model, optimizer, progress, fingerprint, adapter_config, settings.keep_checkpoints
            )
            reporter.emit("checkpoint", step=step, total=settings.iters, path=str(path))
        if halt and step < settings.iters:
            outcome_state, reason = CANCELLED, f"{halt} received; checkpoint saved at step {step}"
            break

    if outcome_state != CANCELLED and lead:
        save_adapter(model, run.final, adapter_config | {"step": progress.step, "val_loss": progress.last_val_loss})
    log.info("%s: %s", outcome_state, reason)
    initial = progress.metrics[0]["val_loss"] if progress.metrics else None
    final = None if outcome_state == CANCELLED else progress.last_val_loss
    return Outcome(outcome_state, reason, progress.step, progress.best_val_loss, progress.best_step, final, initial)
