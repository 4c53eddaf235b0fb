"""Checkpoints: verified before use, corrupt ones skipped, and a resume refuses changed inputs."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from training.trainer import checkpoint
from training.trainer.checkpoint import CheckpointError

from .helpers import adapter, cli, mark, train_here

CONFIG = {"iters": 9, "batch_size": 4, "eval_every": 3, "checkpoint_every": 3, "learning_rate": 1e-3, "warmup_steps": 2}


def _fingerprint(run):
    return run.config()["fingerprint"]


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one_and_resumes_to_the_same_end(
    dataset, tiny_env, caplog
):
    run, _ = train_here(dataset, **CONFIG)
    final = adapter(run.final)
    steps = [p.name for p in checkpoint.checkpoints(run.checkpoints)]
    assert steps == ["step-0000003", "step-0000006"]
    weights = run.checkpoints / "step-0000006" / "adapters.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated, as by a full disk

    with caplog.at_level(logging.WARNING):
        loaded = checkpoint.load_latest(run.checkpoints, _fingerprint(run))
    assert loaded.progress.step == 3
    assert "step-0000006 is corrupt" in caplog.text

    mark(run.dir, "cancelled")
    resumed, outcome = train_here(dataset, resume=True, **CONFIG)
    assert resumed.id == run.id and outcome.state == "finished"
    for name, value in adapter(run.final).items():  # steps 4-9 redone from step 3: same weights
        np.testing.assert_allclose(np.array(value), np.array(final[name]), atol=1e-5, rtol=0)


def test_same_size_corruption_is_caught_by_the_checksum_and_all_corrupt_is_a_clear_error(dataset, tiny_env):
    run, _ = train_here(dataset, **CONFIG)
    for folder in checkpoint.checkpoints(run.checkpoints):
        data = bytearray((folder / "optimizer.safetensors").read_bytes())
        data[-1] ^= 0xFF
        (folder / "optimizer.safetensors").write_bytes(bytes(data))
        assert checkpoint.verify(folder) == "optimizer.safetensors checksum mismatch"

    with pytest.raises(CheckpointError, match="all 2 checkpoint.* corrupt"):
        checkpoint.load_latest(run.checkpoints, _fingerprint(run))

    mark(run.dir, "failed")
    result = cli("run", "--resume")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("training: error: all 2 checkpoint(s)")
    assert "Traceback" not in result.stderr


def test_resume_refuses_changed_settings_or_data_and_leaves_the_run_resumable(dataset, tiny_env, monkeypatch):
    run, _ = train_here(dataset, **CONFIG)
    mark(run.dir, "cancelled")

    changed_flag = cli("run", "--resume", "--learning-rate", "0.01")
    monkeypatch.setenv("TRAIN_LORA_RANK", "4")
    changed_env = cli("run", "--resume")
    monkeypatch.delenv("TRAIN_LORA_RANK")
    with open(dataset / "train.jsonl", "a") as handle:
        handle.write(
            json.dumps({"messages": [{"role": "user", "content": "New?"}, {"role": "assistant", "content": "Yes."}]})
            + "\n"
        )
    changed_data = cli("run", "--resume")

    for result, named in (
        (changed_flag, "TRAIN_LEARNING_RATE: 0.001 → 0.01"),
        (changed_env, "TRAIN_LORA_RANK: 8 → 4"),
        (changed_data, "dataset content_hash"),
    ):
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr
        assert lines[-1].startswith("training: error: cannot resume") and named in lines[-1]
        assert "Traceback" not in result.stderr
    assert json.loads((run.dir / "status.json").read_text())["state"] == "cancelled"
