"""The Mac's path, run here: with CPU_DTYPE=quantized a 4-bit model stays quantized on the CPU as it
does on Metal, and LoRA trains on the quantized base. The whole loop runs on mlx-lm's own 4-bit
quantization of the tiny llama: training killed at a checkpoint, resumed by the next pipeline to the
uninterrupted run's numbers, the gate, promotion, the hot swap in a serving Engine and an answer.
"""

from __future__ import annotations

import json
import logging
import os
import signal

import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.tuner.lora import LoRALinear

from inference.adapters import read_production
from inference.engine import Engine
from inference.loading import load_base
from inference.settings import InferenceSettings
from training.lifecycle.pipeline import pipeline_state, run_pipeline
from training.trainer.lora import apply_lora

from .helpers import adapter, cli, events, lifecycle_env, metrics, write_seed
from .models import make_quantized_model

QUESTION = [{"role": "user", "content": "When was Farense founded?"}]
# A short run: checkpoints every 4 steps, the first one is where the training child is killed.
ARGS = [
    "--iters",
    "12",
    "--batch-size",
    "4",
    "--learning-rate",
    "2e-3",
    "--warmup-steps",
    "2",
    "--eval-every",
    "4",
    "--val-batches",
    "4",
    "--checkpoint-every",
    "4",
]


@pytest.fixture(scope="module")
def quantized_model_dir(tmp_path_factory, tiny_model_dir):
    return make_quantized_model(tiny_model_dir, tmp_path_factory.mktemp("quantized") / "tiny-llama-4bit")


def _block_linears(model) -> list:
    return [
        module for _, module in model.layers[-1].named_modules() if isinstance(module, (nn.Linear, nn.QuantizedLinear))
    ]


def test_cpu_dtype_quantized_keeps_the_4_bit_weights_and_lora_wraps_them(quantized_model_dir, models_root):
    model, _, info = load_base(str(quantized_model_dir), models_root, "cpu", "quantized")
    assert info.dtype == "quantized"
    linears = _block_linears(model)
    assert len(linears) == 7 and all(isinstance(m, nn.QuantizedLinear) and m.bits == 4 for m in linears)

    apply_lora(model, 2, 4, 20.0, 0.0)

    wrapped = [m for _, m in model.layers[-1].named_modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 7 and all(isinstance(m.linear, nn.QuantizedLinear) for m in wrapped)

    # the Linux default, float32, dequantizes the same folder: the path this test is not about
    model, _, info = load_base(str(quantized_model_dir), models_root, "cpu", "float32")
    assert info.dtype == "float32" and not any(isinstance(m, nn.QuantizedLinear) for m in _block_linears(model))


def test_the_loop_on_quantized_weights_train_kill_resume_gate_promote_hot_swap_answer(
    quantized_model_dir, isolated_env, monkeypatch, tmp_path, caplog
):
    lifecycle_env(monkeypatch, quantized_model_dir, write_seed(tmp_path / "seed"))
    monkeypatch.setenv("CPU_DTYPE", "quantized")
    caplog.set_level(logging.DEBUG, logger="training.lifecycle.pipeline")  # the children's stderr lines
    engine = Engine(InferenceSettings.load(temperature=0.0, max_tokens=8))  # follows the production pointer
    try:
        assert engine.info.dtype == "quantized" and engine.adapter_version is None
        assert all(isinstance(m, nn.QuantizedLinear) for m in _block_linears(engine.model))
        assert engine.generate(QUESTION).adapter is None  # the base model answers

        # 1. train: the child is killed at its first checkpoint
        killed: dict = {}

        def kill_at_first_checkpoint(event: dict) -> None:
            if event["event"] == "checkpoint" and not killed:
                killed["step"] = event["step"]
                os.kill(pipeline_state(isolated_env)["child_pid"], signal.SIGKILL)

        failed = run_pipeline(
            trigger="nightly", requested_by="scheduler", on_progress=kill_at_first_checkpoint, train_args=ARGS
        )
        assert failed.outcome == "failed" and "killed by SIGKILL" in failed.message, failed.message
        config = json.loads((failed.run_dir / "config.json").read_text())
        assert config["base_model"]["dtype"] == "quantized" and config["base_model"]["device"] == "cpu"
        assert config["fingerprint"]["base_model"] == "tiny-llama-4bit (quantized)"
        assert killed["step"] == 4 and (failed.run_dir / "checkpoints" / "step-0000004").is_dir()

        # 2. resume, gate, promote: the next pipeline continues the killed run
        caplog.clear()
        seen, promoted = [], []
        resumed = run_pipeline(
            trigger="nightly",
            requested_by="scheduler",
            on_progress=seen.append,
            on_promoted=promoted.append,
            train_args=ARGS,
        )
        start = next(e for e in seen if e["event"] == "start")
        assert start["resumed"] and start["step"] == 4 and start["run_id"] == failed.run_dir.name
        assert [e["stage"] for e in seen if e["event"] == "stage"] == ["train", "register", "gate", "promote"]
        assert resumed.outcome == "promoted" and resumed.version == "v0001", resumed.message
        assert promoted == ["v0001"] and read_production(isolated_env)[0] == "v0001"
        assert resumed.report["accepted"] and resumed.report["criteria"]
        loaded = [
            r.getMessage() for r in caplog.records if "inference.loading: model tiny-llama-4bit" in r.getMessage()
        ]
        assert len(loaded) >= 2 and all("weights quantized" in line for line in loaded), loaded  # train and gate

        # 3. hot swap: what the bot's on_promoted does; the next answer comes from v0001 on the 4-bit base
        engine.refresh_production()
        answer = engine.generate(QUESTION)
        assert answer.adapter == "v0001" and answer.text
        wrapped = [m for _, m in engine.model.layers[-1].named_modules() if isinstance(m, LoRALinear)]
        assert wrapped and all(isinstance(m.linear, nn.QuantizedLinear) for m in wrapped)
    finally:
        engine.close()

    # 4. the resumed run ended where one uninterrupted run with the same settings ends
    settings = [arg for name, value in config["training"].items() for arg in (f"--{name.replace('_', '-')}", value)]
    reference = cli(
        "run",
        "--events",
        "--dataset",
        config["dataset"]["path"],
        *settings,
        env=dict(os.environ, FARENSE_HOME=str(tmp_path / "reference-home")),
    )
    assert reference.returncode == 0, reference.stderr
    reference_dir = tmp_path / "reference-home" / "runs" / events(reference.stdout)[-1]["run_id"]
    assert [m["step"] for m in metrics(failed.run_dir, "train")] == list(range(1, 13))
    np.testing.assert_allclose(
        [m["loss"] for m in metrics(failed.run_dir, "train")],
        [m["loss"] for m in metrics(reference_dir, "train")],
        atol=1e-5,
        rtol=0,
    )
    resumed_adapter, reference_adapter = (
        adapter(failed.run_dir / "adapters" / "final"),
        adapter(reference_dir / "adapters" / "final"),
    )
    assert set(resumed_adapter) == set(reference_adapter)
    for name, value in resumed_adapter.items():
        np.testing.assert_allclose(np.array(value), np.array(reference_adapter[name]), atol=1e-5, rtol=0)
