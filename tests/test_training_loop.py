"""The loop on the tiny llama: it learns, only LoRA moves, early stopping keeps the best adapter."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .helpers import adapter, metrics, train_here

SYSTEM = "You answer questions about SC Farense."


def _lora_model(tiny_model_dir):
    import mlx.core as mx
    from mlx_lm.utils import load

    from training.trainer.lora import apply_lora

    model, tokenizer = load(str(tiny_model_dir))
    mx.random.seed(0)
    apply_lora(model, 16, 8, 20.0, 0.0)
    return model, tokenizer


def test_gradients_reach_lora_only_and_the_compiled_step_matches_the_plain_one(dataset, tiny_model_dir):
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from training.settings import TrainingSettings
    from training.trainer.batching import collate, load_examples
    from training.trainer.distributed import OneRank
    from training.trainer.loop import make_loss, make_optimizer, make_step

    settings = TrainingSettings.load(learning_rate=1e-3, warmup_steps=0, iters=10)
    losses = {}
    for compiled in (False, True):
        model, tokenizer = _lora_model(tiny_model_dir)
        examples = load_examples(dataset / "train.jsonl", tokenizer, SYSTEM, 256)
        batch = collate(examples[:4], 0)
        before = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
        optimizer = make_optimizer(settings)
        forward, apply = make_step(
            model, optimizer, make_loss(model), accumulation=1, grad_clip=1.0, compiled=compiled, dist=OneRank()
        )
        losses[compiled] = []
        for _ in range(3):
            loss, _, grads = forward(
                batch.inputs, batch.positions, batch.labels, batch.weights, batch.weights.sum(), None
            )
            apply(grads)
            mx.eval(model.parameters(), optimizer.state, loss)
            losses[compiled].append(loss.item())
        after = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
        changed = {k for k in before if not np.array_equal(before[k], after[k])}
        lora_b = {k for k in before if k.endswith("lora_b")}
        assert lora_b and lora_b <= changed  # lora_b starts at zero: it moved, so gradients are real
        assert all(k.endswith(("lora_a", "lora_b")) for k in changed)  # the base stays frozen
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
    assert losses[False][2] < losses[False][0]


def test_gradient_checkpointing_gives_the_same_step_and_touches_only_that_model(dataset, tiny_model_dir):
    import mlx.core as mx

    from training.settings import TrainingSettings
    from training.trainer.batching import collate, load_examples
    from training.trainer.distributed import OneRank
    from training.trainer.loop import make_loss, make_optimizer, make_step
    from training.trainer.lora import adapter_weights, use_grad_checkpoint

    results = []
    for checkpointed in (False, True):
        model, tokenizer = _lora_model(tiny_model_dir)
        if checkpointed:
            use_grad_checkpoint(model)
        batch = collate(load_examples(dataset / "train.jsonl", tokenizer, SYSTEM, 256)[:4], 0)
        optimizer = make_optimizer(TrainingSettings.load(learning_rate=1e-3, warmup_steps=0, iters=10))
        forward, apply = make_step(
            model, optimizer, make_loss(model), accumulation=1, grad_clip=1.0, compiled=False, dist=OneRank()
        )
        losses = []
        for _ in range(2):
            loss, _, grads = forward(
                batch.inputs, batch.positions, batch.labels, batch.weights, batch.weights.sum(), None
            )
            apply(grads)
            mx.eval(model.parameters(), optimizer.state, loss)
            losses.append(loss.item())
        results.append((losses, adapter_weights(model), type(model.layers[0]).__name__))
    (plain, plain_weights, plain_class), (checked, checked_weights, checked_class) = results
    assert checked == pytest.approx(plain, abs=1e-5)
    assert set(checked_weights) == set(plain_weights)  # same parameter names: adapters stay loadable
    assert checked_class.startswith("Checkpointed") and plain_class == "TransformerBlock"
    assert type(_lora_model(tiny_model_dir)[0].layers[0]).__name__ == "TransformerBlock"


def test_micro_batches_with_accumulation_and_checkpointing_make_one_step_each(dataset, tiny_env):
    run, outcome = train_here(dataset, iters=3, batch_size=2, grad_accumulation=2, grad_checkpoint="on", eval_every=3)

    plan = run.config()["plan"]
    assert (plan["batch_size"], plan["grad_accumulation"], plan["grad_checkpoint"]) == (2, 2, True)
    records = metrics(run.dir, "train")
    assert outcome.state == "finished" and [r["step"] for r in records] == [1, 2, 3]
    assert all(r["tokens"] > 0 for r in records)


def test_the_tiny_model_learns_a_small_memorisable_set(dataset, tiny_env):
    run, outcome = train_here(
        dataset, iters=30, batch_size=4, learning_rate=1e-3, warmup_steps=4, eval_every=10, patience=5
    )

    losses = [m["loss"] for m in metrics(run.dir, "train")]
    evals = [m["val_loss"] for m in metrics(run.dir, "eval")]
    assert outcome.state == "finished" and len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 2.0
    assert outcome.best_val_loss < evals[0] - 2.0  # evals[0]: the base model before training
    status = json.loads((run.dir / "status.json").read_text())
    assert status["state"] == "finished" and status["initial_val_loss"] == evals[0]
    record = metrics(run.dir, "train")[-1]
    assert {"loss", "learning_rate", "tokens_per_s", "padding", "peak_memory_gb"} <= set(record)
    assert record["learning_rate"] < 1e-3  # cosine decay after warmup


def test_lr_zero_stops_early_and_best_is_the_first_evaluation(dataset, tiny_env):
    run, outcome = train_here(dataset, iters=40, batch_size=4, learning_rate=0.0, eval_every=2, patience=2)

    assert outcome.state == "early_stopped" and outcome.step == 6  # evals at 2 (best), 4, 6 (2 without gain)
    assert "did not improve" in outcome.reason
    status = json.loads((run.dir / "status.json").read_text())
    assert status["state"] == "early_stopped" and status["best_step"] == 2
    assert json.loads((run.best / "adapter_config.json").read_text())["step"] == 2
    for name, value in adapter(run.best).items():  # lr 0: nothing moved, and lora_b is still zero
        assert np.array_equal(np.array(value), np.array(adapter(run.final)[name]))


def test_best_adapter_holds_the_weights_of_the_lowest_evaluation(dataset, tiny_env):
    # A high learning rate makes validation loss go up and down; every evaluation step is checkpointed.
    run, outcome = train_here(
        dataset,
        iters=24,
        batch_size=4,
        learning_rate=0.05,
        warmup_steps=0,
        eval_every=3,
        checkpoint_every=3,
        keep_checkpoints=100,
        patience=100,
        min_delta=0.0,
    )

    evals = {m["step"]: m["val_loss"] for m in metrics(run.dir, "eval") if m["step"] > 0}
    best_step = min(evals, key=evals.get)
    assert outcome.best_step == best_step and outcome.best_val_loss == evals[best_step]
    best = adapter(run.best)
    if best_step < 24:
        saved = adapter(run.checkpoints / f"step-{best_step:07d}")
    else:
        saved = adapter(run.final)
    assert set(best) == set(saved)
    for name in best:
        assert np.array_equal(np.array(best[name]), np.array(saved[name]))


def test_min_delta_larger_than_any_gain_stops_after_patience(dataset, tiny_env):
    run, outcome = train_here(
        dataset, iters=40, batch_size=4, learning_rate=2e-3, eval_every=3, patience=1, min_delta=100.0
    )

    assert outcome.state == "early_stopped" and outcome.step == 6
    assert not (run.dir / "checkpoints" / "step-0000006").exists()
    assert run.final.is_dir() and run.best.is_dir()


def test_adapters_load_with_mlx_lm_and_change_the_model(dataset, tiny_env, tiny_model_dir):
    import mlx.core as mx
    from mlx_lm.utils import load

    from inference.adapters import read_adapter

    run, _ = train_here(dataset, iters=6, batch_size=4, learning_rate=2e-3, eval_every=3)
    config = json.loads((run.final / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "lora" and config["num_layers"] == 2  # clamped to the tiny model
    assert set(config["lora_parameters"]) >= {"rank", "scale", "dropout", "keys"}
    read_adapter(run.final)  # the serving side's own validation

    base, tokenizer = load(str(tiny_model_dir))
    tuned, _ = load(str(tiny_model_dir), adapter_path=str(run.final))
    prompt = mx.array([tokenizer.encode("Tell me fact 3 about Farense?")])
    assert not mx.allclose(base(prompt), tuned(prompt)).item()
