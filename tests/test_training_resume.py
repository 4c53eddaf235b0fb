"""Crash and cancel, then --resume: the result equals the uninterrupted run (child processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import numpy as np
import pytest

from .helpers import adapter, clean_env, cli, command, events, metrics, write_dataset

ITERS = 16
CONFIG = (
    "--iters",
    ITERS,
    "--batch-size",
    4,
    "--eval-every",
    4,
    "--learning-rate",
    "1e-3",
    "--warmup-steps",
    2,
    "--events",
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, models_root):
    """Run A: the same configuration, never interrupted."""
    root = tmp_path_factory.mktemp("reference")
    data = write_dataset(root / "dataset")
    result = cli(
        "run",
        "--dataset",
        data,
        "--checkpoint-every",
        4,
        *CONFIG,
        env=clean_env(root / "home", models_root, tiny_model_dir),
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    done = events(result.stdout)[-1]
    assert done["event"] == "done" and done["status"] == "finished"
    run_dir = root / "home" / "runs" / done["run_id"]
    return {
        "dataset": data,
        "losses": [m["loss"] for m in metrics(run_dir, "train")],
        "evals": [m["val_loss"] for m in metrics(run_dir, "eval")],
        "final": adapter(run_dir / "adapters" / "final"),
    }


def _same_result(run_dir, reference) -> None:
    losses = [m["loss"] for m in metrics(run_dir, "train")]
    assert [m["step"] for m in metrics(run_dir, "train")] == list(range(1, ITERS + 1))  # redone steps not doubled
    np.testing.assert_allclose(losses, reference["losses"], atol=1e-5, rtol=0)
    np.testing.assert_allclose([m["val_loss"] for m in metrics(run_dir, "eval")], reference["evals"], atol=1e-5, rtol=0)
    final = adapter(run_dir / "adapters" / "final")
    assert set(final) == set(reference["final"])
    for name, value in final.items():
        np.testing.assert_allclose(np.array(value), np.array(reference["final"][name]), atol=1e-5, rtol=0)


def _start(*args):
    return subprocess.Popen(
        command("run", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )


def test_a_run_killed_with_sigkill_resumes_from_its_checkpoint_and_ends_like_the_uninterrupted_one(
    reference, tiny_env, isolated_env
):
    child = _start("--dataset", reference["dataset"], "--checkpoint-every", 4, *CONFIG)
    seen = []
    for line in child.stdout:
        seen.append(json.loads(line))
        if seen[-1]["event"] == "checkpoint" and seen[-1]["step"] >= 8:
            child.send_signal(signal.SIGKILL)
            break
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    run_id = seen[0]["run_id"]
    status = json.loads(cli("status", "--json").stdout)["runs"][0]
    assert status["run_id"] == run_id and status["state"] == "running"
    assert status["alive"] is False and status["resumable"] is True

    resumed = cli("run", "--resume", "--events")  # no id: the newest interrupted run, its own settings

    assert resumed.returncode == 0, resumed.stderr
    start, done = events(resumed.stdout)[0], events(resumed.stdout)[-1]
    assert start["run_id"] == run_id and start["resumed"] is True and start["step"] == 8
    assert done["status"] == "finished" and done["step"] == ITERS
    _same_result(isolated_env / "runs" / run_id, reference)


def test_sigterm_finishes_the_step_saves_a_checkpoint_and_marks_the_run_cancelled(reference, tiny_env, isolated_env):
    child = _start("--dataset", reference["dataset"], "--checkpoint-every", 1000, *CONFIG)
    seen = []
    for line in child.stdout:
        seen.append(json.loads(line))
        if seen[-1]["event"] == "step" and seen[-1]["step"] == 3:
            child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=60)

    assert child.returncode == 0, stderr
    done = seen[-1]
    assert done["event"] == "done" and done["status"] == "cancelled" and "SIGTERM" in done["reason"]
    step = done["step"]
    assert step >= 3 and [e for e in seen if e["event"] == "checkpoint"][-1]["step"] == step
    run_dir = isolated_env / "runs" / done["run_id"]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "cancelled" and status["pid"] == child.pid and status["step"] == step
    assert (run_dir / "checkpoints" / f"step-{step:07d}" / "index.json").is_file()
    assert not (run_dir / "adapters" / "final").exists()

    resumed = cli("run", "--resume", done["run_id"], "--events")

    assert resumed.returncode == 0, resumed.stderr
    assert events(resumed.stdout)[0]["step"] == step
    _same_result(run_dir, reference)


def test_lost_events_reader_checkpoints_and_cancels_like_sigterm(reference, tiny_env, isolated_env):
    """The parent (pipeline or bot) dies: the child must not crash on the broken pipe."""
    child = _start("--dataset", reference["dataset"], "--checkpoint-every", 1000, *CONFIG)
    for line in child.stdout:
        event = json.loads(line)
        if event["event"] == "start":
            run_id = event["run_id"]
        if event["event"] == "step" and event["step"] == 2:
            break
    child.stdout.close()  # the reader is gone
    _, stderr = child.communicate(timeout=60)

    assert child.returncode == 0, stderr
    assert "Traceback" not in stderr and "events pipe closed" in stderr
    status = json.loads((isolated_env / "runs" / run_id / "status.json").read_text())
    assert status["state"] == "cancelled" and "events reader gone" in status["reason"]
    assert list((isolated_env / "runs" / run_id / "checkpoints").glob("step-*/index.json"))
    resumed = cli("run", "--resume", run_id, "--events")
    assert resumed.returncode == 0, resumed.stderr
    _same_result(isolated_env / "runs" / run_id, reference)
