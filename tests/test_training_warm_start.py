"""A run started from an adapter (TRAIN_INIT_ADAPTER, the pipeline's warm start), on the tiny llama."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inference.layout import LAYOUT_KEY, LAYOUTS

from .helpers import adapter, mark, train_here


def test_a_warm_start_begins_from_the_adapters_weights(dataset, tiny_env):
    first, trained = train_here(dataset, iters=6, batch_size=4, learning_rate=2e-3, eval_every=3)

    # learning rate 0: nothing moves, so the run ends with the weights it started from
    warm, outcome = train_here(
        dataset, iters=2, batch_size=4, learning_rate=0.0, eval_every=2, init_adapter=first.final
    )

    start, end = adapter(first.final), adapter(warm.final)
    assert set(start) == set(end)
    for name in start:
        assert np.array_equal(np.array(start[name]), np.array(end[name])), name
    assert any(name.endswith("lora_b") and np.abs(np.array(value)).max() > 0 for name, value in end.items())
    # its step-0 validation is the first run's last one: the same weights on the same batches
    assert outcome.initial_val_loss == pytest.approx(trained.final_val_loss, rel=1e-5)
    assert warm.config()["settings"]["init_adapter"] == str(first.final)


def test_an_adapter_laid_out_otherwise_cannot_start_a_run(dataset, tiny_env):
    from training.trainer.lora import StartAdapterError

    first, _ = train_here(dataset, iters=2, batch_size=4, lora_rank=4)

    with pytest.raises(StartAdapterError, match="rank: 4, the run's 8"):
        train_here(dataset, iters=2, batch_size=4, init_adapter=first.final)

    config = first.final / "adapter_config.json"  # the same shapes, trained for the other Q/K order
    saved = json.loads(config.read_text())
    other = next(layout for layout in LAYOUTS if layout != saved[LAYOUT_KEY])
    config.write_text(json.dumps(saved | {LAYOUT_KEY: other}))
    with pytest.raises(StartAdapterError, match=f"qk_layout: '{other}'"):
        train_here(dataset, iters=2, batch_size=4, lora_rank=4, init_adapter=first.final)


def test_a_resumed_warm_run_keeps_its_start_and_refuses_other_start_weights(dataset, tiny_env, tmp_path):
    import shutil

    from training.trainer.checkpoint import FingerprintMismatch

    first, _ = train_here(dataset, iters=2, batch_size=4, learning_rate=2e-3)
    start = shutil.copytree(first.final, tmp_path / "start")
    warm, _ = train_here(dataset, iters=4, batch_size=4, checkpoint_every=2, init_adapter=start)
    mark(warm.dir, "cancelled")

    resumed, outcome = train_here(dataset, resume=True, run_id=warm.id)  # no TRAIN_INIT_ADAPTER given
    assert resumed.id == warm.id and outcome.state == "finished" and outcome.step == 4

    mark(warm.dir, "cancelled")
    other, _ = train_here(dataset, iters=2, batch_size=4, learning_rate=5e-3, seed=3)
    shutil.copyfile(other.final / "adapters.safetensors", start / "adapters.safetensors")
    with pytest.raises(FingerprintMismatch, match="TRAIN_INIT_ADAPTER weights"):
        train_here(dataset, resume=True, run_id=warm.id)
